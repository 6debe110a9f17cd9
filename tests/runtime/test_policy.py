from __future__ import annotations

import pytest

from dualcache import ConfigError, GatewayMode, InvalidInputError, Namespace, Operation, Policies


def test_policies_defaults_match_spec_table() -> None:
    p = Policies()
    assert (p.application_generation.kv, p.application_generation.gateway) == (False, GatewayMode.SKIP)
    assert (p.job_analysis.kv_ttl, p.job_analysis.kv_namespace) == (604_800, Namespace.JOB_ANALYSIS_CACHE)
    assert p.job_analysis.gateway is GatewayMode.SKIP
    assert (p.resume_parsing.kv, p.resume_parsing.gateway, p.resume_parsing.collect_log) == (
        False,
        GatewayMode.SKIP,
        True,
    )
    assert (p.embeddings.kv_ttl, p.embeddings.gateway_ttl) == (2_592_000, 3_600)
    assert p.embeddings.kv_namespace is Namespace.EMBEDDINGS_CACHE
    assert (p.spam_detection.kv_ttl, p.spam_detection.gateway_ttl) == (604_800, 86_400)
    assert p.spam_detection.kv_namespace is Namespace.API_CACHE


def test_policies_for_operation_accepts_names_and_rejects_unknown() -> None:
    assert Policies().for_operation("embeddings") is Policies().embeddings
    assert Policies().for_operation(Operation.JOB_ANALYSIS).kv
    with pytest.raises(InvalidInputError, match="unknown operation 'embedding'.*embeddings"):
        Policies().for_operation("embedding")


def test_policies_with_overrides_changes_only_named_fields() -> None:
    p = Policies.with_overrides({"embeddings": {"kv_ttl": 86_400}})
    assert p.embeddings.kv_ttl == 86_400
    assert p.embeddings.gateway_ttl == 3_600
    assert p.job_analysis == Policies().job_analysis


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"embeddings": {"kv_ttl": 59}}, r"policies\.embeddings: kv_ttl=59", id="kv-ttl-below-60"),
        pytest.param({"embeddings": {"gateway_ttl": 59}}, r"gateway_ttl=59.*60\.\.2592000", id="gw-ttl-low"),
        pytest.param({"spam_detection": {"gateway_ttl": 2_592_001}}, r"gateway_ttl=2592001", id="gw-ttl-high"),
        pytest.param({"job_analysis": {"gateway_ttl": 600}}, r"gateway is 'skip'", id="ttl-with-skip"),
        pytest.param(
            {"job_analysis": {"kv": False, "kv_ttl": 600}}, r"kv_ttl=600 is set but kv is off", id="kv-off-ttl"
        ),
        pytest.param(
            {"embeddings": {"gateway": "skip", "gateway_ttl": 600}}, r"gateway_ttl=600 is set", id="skip-with-ttl"
        ),
        pytest.param({"embeddings": {"kv_ttl": "week"}}, r"policies\.embeddings: kv_ttl='week': ", id="kv-ttl-type"),
        pytest.param(
            {"embedding": {"kv": False}},
            r"policies\.embedding: 'embedding' is not a built-in operation.*embeddings.*must set kv and gateway "
            r"\(missing: policies\.embedding\.gateway\)",
            id="unknown-op-is-an-incomplete-custom-one",
        ),
        pytest.param({"embeddings": {"kv_ttl": True}}, r"kv_ttl=True: True is a boolean", id="kv-ttl-bool"),
        pytest.param({"embeddings": {"gateway_ttl": False}}, r"gateway_ttl=False: False is a boolean", id="gw-bool"),
        pytest.param({"embeddings": {"ttl": 1}}, r"unknown field\(s\) ttl", id="unknown-field"),
        pytest.param({"embeddings": {"kv_namespace": "NOPE"}}, r"kv_namespace", id="bad-namespace"),
    ],
)
def test_policies_with_overrides_rejects_out_of_bounds(overrides: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Policies.with_overrides(overrides)


@pytest.mark.parametrize("off", [pytest.param(False, id="bool"), pytest.param("false", id="string-from-config-path")])
def test_policies_with_overrides_turning_a_layer_off_drops_its_default_ttl(off: object) -> None:
    p = Policies.with_overrides({"job_analysis": {"kv": off}, "embeddings": {"gateway": "skip"}})
    assert (p.job_analysis.kv, p.job_analysis.kv_ttl) == (False, None)
    assert (p.embeddings.gateway, p.embeddings.gateway_ttl) == (GatewayMode.SKIP, None)
    assert (p.embeddings.kv, p.embeddings.kv_ttl) == (True, 2_592_000)  # the other layer keeps its default


def test_policies_with_overrides_turning_a_layer_on_needs_a_ttl() -> None:
    with pytest.raises(ConfigError, match=r"policies\.job_analysis: gateway_ttl=None: with gateway 'cache' it must be"):
        Policies.with_overrides({"job_analysis": {"gateway": "cache"}})
    p = Policies.with_overrides({"job_analysis": {"gateway": "cache", "gateway_ttl": 600}})
    assert (p.job_analysis.gateway, p.job_analysis.gateway_ttl) == (GatewayMode.CACHE, 600)
