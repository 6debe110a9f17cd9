from __future__ import annotations

import dualcache


def test_exported_members_all_public_names_are_listed() -> None:
    exported = set(dualcache.__all__)
    public = {name for name in vars(dualcache) if not name.startswith("_") or name == "__version__"}
    # Submodule objects (dualcache.local, ...) appear in vars() once imported; they are not API names.
    public = {name for name in public if not isinstance(getattr(dualcache, name), type(dualcache))}
    public -= {"annotations"}
    assert exported == public


def test_exported_members_resolve() -> None:
    for name in dualcache.__all__:
        assert getattr(dualcache, name) is not None, name


def test_exported_members_include_the_kv_client_surface() -> None:
    for name in (
        "CloudflareKVBackend",
        "DataPlaneKVBackend",
        "KVBatchRead",
        "KVStore",
        "RequestBudget",
        "SkippedError",
    ):
        assert name in dualcache.__all__, name


def test_exported_members_include_the_answer_schemas() -> None:
    # Model output is validated against these (issue 14): a custom operation registers its own schema.
    for name in ("AnswerSchemas", "JobAnalysisAnswer", "SpamVerdictAnswer"):
        assert name in dualcache.__all__, name


def test_exported_members_include_the_operations_surface() -> None:
    for name in ("Operation", "OperationPolicy", "Policies", "PriceTable", "Scope", "Stats"):
        assert name in dualcache.__all__, name
    for method in ("run", "forget", "forget_user", "record_key", "user_prefix"):
        assert callable(getattr(dualcache.DualCache, method)), method
    assert callable(dualcache.Policies.override) and callable(dualcache.Policies.with_overrides)
