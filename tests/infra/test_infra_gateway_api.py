"""The program exports the stack's gateway URL shape and declares the gateway's retry defaults."""

from __future__ import annotations

import pytest
from _infra_support import STACKS, StackWriter, base_config

from dualcache import ConfigError, StackOutputs
from infra.plan import PlanResult, run_plan

GATEWAY = "cloudflare:index/aiGateway:AiGateway"


@pytest.mark.parametrize("stack", STACKS)
def test_infra_gateway_api_committed_stacks_export_legacy(plans: dict[str, PlanResult], stack: str) -> None:
    assert plans[stack].outputs["dualcache"]["gateway_api"] == "legacy"
    (gateway,) = plans[stack].find(GATEWAY)
    # One attempt by default: callers that send no retry headers are not retried on top of their own retries.
    assert (gateway.inputs["retryMaxAttempts"], gateway.inputs["retryDelay"], gateway.inputs["retryBackoff"]) == (
        1,
        500,
        "constant",
    )


def test_infra_gateway_api_rest_and_retry_settings_flow_from_the_stack_file(write_stack: StackWriter) -> None:
    config = base_config()
    config["jobmatch-ai:gateway"] |= {"api": "rest", "retry": {"maxAttempts": 4, "delay": 1000, "backoff": "linear"}}
    plan = run_plan("test", write_stack(config))
    outputs = StackOutputs.from_data(plan.outputs["dualcache"])
    assert outputs.gateway_api == "rest"
    (gateway,) = plan.find(GATEWAY)
    assert (gateway.inputs["retryMaxAttempts"], gateway.inputs["retryDelay"], gateway.inputs["retryBackoff"]) == (
        4,
        1000,
        "linear",
    )


@pytest.mark.parametrize(
    ("gateway", "fragment"),
    [
        pytest.param({"api": "v2"}, "gateway.api", id="unknown-shape"),
        pytest.param({"retry": {"maxAttempts": 0}}, "gateway.retry.maxAttempts", id="no-attempt"),
        pytest.param({"retry": {"maxAttempts": 6}}, "gateway.retry.maxAttempts", id="over-5"),
        pytest.param({"retry": {"delay": 5001}}, "gateway.retry.delay", id="delay-over-5s"),
        pytest.param({"retry": {"backoff": "random"}}, "gateway.retry.backoff", id="unknown-backoff"),
    ],
)
def test_infra_gateway_api_bad_values_fail_naming_the_key(
    write_stack: StackWriter, gateway: dict[str, object], fragment: str
) -> None:
    config = base_config()
    config["jobmatch-ai:gateway"] |= gateway
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        run_plan("test", write_stack(config))


def test_infra_gateway_api_outputs_refuse_an_unknown_shape(plans: dict[str, PlanResult]) -> None:
    data = {**plans["dev"].outputs["dualcache"], "gateway_api": "v2"}
    with pytest.raises(ConfigError, match="gateway_api"):
        StackOutputs.from_data(data)
    legacy = {k: v for k, v in plans["dev"].outputs["dualcache"].items() if k != "gateway_api"}
    assert StackOutputs.from_data(legacy).gateway_api == "legacy"  # outputs written before the field
