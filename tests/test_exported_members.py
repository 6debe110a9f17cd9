from __future__ import annotations

import subprocess
import sys

import pytest

import dualcache


def test_exported_members_all_public_names_are_listed() -> None:
    exported = set(dualcache.__all__)
    # Lazy names (dualcache._LAZY) are in vars() only once used; dir() lists them all along.
    public = {name for name in set(vars(dualcache)) | set(dir(dualcache)) if not name.startswith("_")}
    public |= {"__version__"}
    # Submodule objects (dualcache.local, ...) appear in vars() once imported; they are not API names.
    public = {name for name in public if not isinstance(getattr(dualcache, name), type(dualcache))}
    public -= {"annotations", "importlib", "TYPE_CHECKING"}
    assert exported == public


def test_exported_members_resolve() -> None:
    for name in dualcache.__all__:
        assert getattr(dualcache, name) is not None, name


def test_exported_members_lazy_names_come_from_their_modules() -> None:
    import importlib

    for name, module in dualcache._LAZY.items():
        assert name in dualcache.__all__, name
        assert getattr(dualcache, name) is getattr(importlib.import_module(module), name), name


def test_exported_members_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'dualcache' has no attribute 'NoSuchName'"):
        dualcache.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


def test_exported_members_import_loads_no_dependency() -> None:
    # A fresh interpreter: `import dualcache` alone imports none of its dependencies; the first use of a
    # lazy name imports its module (and what that needs).
    code = (
        "import sys, dualcache\n"
        "heavy = ('httpx', 'pydantic', 'yaml', 'asyncio', 'ssl', 'sqlite3', 'dualcache._cache')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "dualcache.DualCache\n"
        "print(sorted(m for m in ('httpx', 'pydantic', 'dualcache._cache') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "['dualcache._cache', 'httpx', 'pydantic']"


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
    # Model output is validated against these: a custom operation registers its own schema.
    for name in ("AnswerSchemas", "JobAnalysisAnswer", "SpamVerdictAnswer"):
        assert name in dualcache.__all__, name


def test_exported_members_include_the_operations_surface() -> None:
    for name in ("Operation", "OperationPolicy", "Policies", "PriceTable", "Scope", "Stats"):
        assert name in dualcache.__all__, name
    for method in ("run", "forget", "forget_user", "record_key", "user_prefix"):
        assert callable(getattr(dualcache.DualCache, method)), method
    assert callable(dualcache.Policies.override) and callable(dualcache.Policies.with_overrides)


def test_exported_members_include_the_observability_surface() -> None:
    # Prometheus metrics (the prometheus extra), latency per layer, and what `dualcache report` reads.
    for name in ("LatencyHistogram", "PrometheusCollector", "register_metrics"):
        assert name in dualcache.__all__, name
    for method in ("observe", "latency", "save", "snapshot"):
        assert callable(getattr(dualcache.Stats, method)), method


def test_exported_members_include_the_user_limits_surface() -> None:
    for name in ("UserLimits", "UserLimiter", "UserLimitExceededError"):
        assert name in dualcache.__all__, name
    assert issubclass(dualcache.UserLimitExceededError, dualcache.DualCacheError)


def test_exported_members_include_the_pricing_surface() -> None:
    for name in ("Prices", "TokenPrices", "Usage"):
        assert name in dualcache.__all__, name
    assert dualcache.TokenPrices.per_million(1.0).input == 1e-6
