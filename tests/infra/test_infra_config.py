"""infra/config.py under the Pulumi runtime: every validation rule fails with a message naming the key."""

from __future__ import annotations

import re
from typing import Any

import pytest
from _infra_support import ACCOUNT, StackWriter, base_config

from dualcache import ConfigError
from infra.plan import run_plan

_ADOPT = "jobmatch-ai:namespaces"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            {"jobmatch-ai:gateway": {"cacheTtl": 59}},
            r"jobmatch-ai:gateway\.cacheTtl = 59: must be 0 \(cache off\) or 60\.\.2592000",
            id="gateway-cache-ttl-below-60",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"cacheTtl": 2_592_001}},
            r"jobmatch-ai:gateway\.cacheTtl = 2592001",
            id="gateway-cache-ttl-above-a-month",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"rateLimiting": {"technique": "token"}}},
            r"jobmatch-ai:gateway\.rateLimiting\.technique = 'token'.*'fixed' or 'sliding'",
            id="rate-limit-technique",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"rateLimiting": {"interval": -1}}},
            r"jobmatch-ai:gateway\.rateLimiting\.interval = -1: .*greater than or equal to 0",
            id="rate-limit-interval-negative",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"rateLimiting": {"limit": -5}}},
            r"jobmatch-ai:gateway\.rateLimiting\.limit = -5",
            id="rate-limit-limit-negative",
        ),
        pytest.param(
            {"jobmatch-ai:policies": {"embeddings": {"kv_ttl": 59}}},
            r"jobmatch-ai:policies\.embeddings: kv_ttl=59: .*>= 60",
            id="kv-ttl-below-60",
        ),
        pytest.param(
            {"jobmatch-ai:worker": {"name": "Jobs_API"}},
            r"jobmatch-ai:worker\.name = 'Jobs_API': must be 1\.\.63 characters of lowercase",
            id="worker-name-uppercase",
        ),
        pytest.param(
            {"jobmatch-ai:worker": {"name": "jobs-"}},
            r"jobmatch-ai:worker\.name = 'jobs-'",
            id="worker-name-trailing-dash",
        ),
        pytest.param(
            {"jobmatch-ai:worker": {"name": "a" * 64}},
            r"jobmatch-ai:worker\.name = 'a{60}'… \(64 characters\)",
            id="worker-name-too-long",
        ),
        pytest.param(
            {_ADOPT: {"adopt": {"JOB_ANALYSIS_CACHE": "FEDCBA9876543210FEDCBA9876543210"}}},
            r"jobmatch-ai:namespaces\.adopt\.JOB_ANALYSIS_CACHE = 'FEDCBA98.*': must be 32 lowercase hex",
            id="adopt-id-not-lowercase-hex",
        ),
        pytest.param(
            {_ADOPT: {"adopt": {"JOB_ANALYSIS_CACHE": "fedcba98"}}},
            r"jobmatch-ai:namespaces\.adopt\.JOB_ANALYSIS_CACHE = 'fedcba98'",
            id="adopt-id-too-short",
        ),
        pytest.param(
            {_ADOPT: {"adopt": {"JOBS": "fedcba9876543210fedcba9876543210"}}},
            r"jobmatch-ai:namespaces\.adopt\.JOBS",
            id="adopt-unknown-binding",
        ),
        pytest.param(
            {"jobmatch-ai:gatway": {"cacheTtl": 60}},
            r"unknown config key 'jobmatch-ai:gatway' in .*Pulumi\.test\.yaml; did you mean 'jobmatch-ai:gateway'\? "
            r"Valid jobmatch-ai: keys: accountId, dataPlane, ",
            id="unknown-top-level-key",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"cacheTTL": 60}},
            r"jobmatch-ai:gateway\.cacheTTL = 60: unknown key; did you mean 'jobmatch-ai:gateway\.cacheTtl'\? "
            r"Valid keys of jobmatch-ai:gateway: allowDefaultId, api, authentication, cacheInvalidateOnUpdate, ",
            id="unknown-nested-key",
        ),
        pytest.param(
            {"jobmatch-ia:gateway": {"cacheTtl": 60}},
            r"unknown config namespace 'jobmatch-ia' in .*Pulumi\.test\.yaml \(key 'jobmatch-ia:gateway'\); "
            r"did you mean 'jobmatch-ai:'\? Valid namespaces: jobmatch-ai, cloudflare, pulumi$",
            id="unknown-namespace",
        ),
        pytest.param(
            {"cloudflare:apiTokn": "t" * 40},
            r"unknown config key 'cloudflare:apiTokn' in .*; did you mean 'cloudflare:apiToken'\? "
            r"Valid cloudflare: keys: apiKey, apiToken, apiUserServiceKey, baseUrl, email, userAgentOperatorSuffix$",
            id="unknown-provider-key",
        ),
        pytest.param(
            {"jobmatch-ai:policies": {"job_analysis": {"kv_ttl": True}}},
            r"jobmatch-ai:policies\.job_analysis\.kv_ttl = true: a boolean where a number of seconds is expected",
            id="kv-ttl-boolean",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"cacheTtl": True}},
            r"jobmatch-ai:gateway\.cacheTtl = true: a boolean where a whole number is expected",
            id="cache-ttl-boolean",
        ),
        pytest.param(
            {"jobmatch-ai:worker": {"compatibilityDate": "2025-13-11"}},
            r"jobmatch-ai:worker\.compatibilityDate = '2025-13-11': is not a calendar date "
            r"\(month must be in 1\.\.12\)",
            id="compatibility-date-month-13",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"rateLimiting": {"limit": 100, "interval": 0}}},
            r"jobmatch-ai:gateway\.rateLimiting\.interval = 0: a limit of 100 requests per 0 seconds is no rate",
            id="rate-limit-per-zero-seconds",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": {"id": "default"}},
            r"jobmatch-ai:gateway\.id = 'default': that is the gateway Cloudflare creates on its own.*"
            r"gateway\.allowDefaultId: true",
            id="default-gateway-id",
        ),
        pytest.param(
            {"jobmatch-ai:gateway": "fast"},
            r"jobmatch-ai:gateway = 'fast': expected a mapping",
            id="gateway-not-a-mapping",
        ),
        pytest.param(
            {"jobmatch-ai:accountId": "not-an-account"},
            r"jobmatch-ai:accountId = 'not-an-account'",
            id="account-id-not-hex",
        ),
        pytest.param(
            {"jobmatch-ai:openaiApiKey": "sk-plain"},
            r"jobmatch-ai:openaiApiKey is in plain text; set it with "
            r"`pulumi config set --secret jobmatch-ai:openaiApiKey",
            id="secret-in-plain-text",
        ),
        pytest.param(
            {"jobmatch-ai:accountId": {"secure": "v1:QUFBQQ=="}},
            r"jobmatch-ai:accountId is set as a secret, but its value goes into plain-text Worker bindings",
            id="plain-key-set-as-secret",
        ),
        pytest.param(
            {"cloudflare:apiToken": "t" * 40},
            r"cloudflare:apiToken is in plain text; set it with `pulumi config set --secret cloudflare:apiToken",
            id="provider-token-in-plain-text",
        ),
        pytest.param(
            {"jobmatch-ai:policies": {"spam_detection": {"gateway_ttl": 30}}},
            r"jobmatch-ai:policies\.spam_detection: gateway_ttl=30: .*60\.\.2592000",
            id="policy-gateway-ttl-below-60",
        ),
        pytest.param(
            {"jobmatch-ai:worker": {"bundle": "dist/missing.js"}},
            r"jobmatch-ai:worker\.bundle = 'dist/missing\.js': no such file",
            id="bundle-missing",
        ),
    ],
)
def test_config_rejects_invalid_values_naming_the_key(
    write_stack: StackWriter, change: dict[str, Any], message: str
) -> None:
    project = write_stack(base_config() | change)
    with pytest.raises(ConfigError, match=message) as info:
        run_plan("test", project)
    assert "stack 'test'" in str(info.value)  # raised by infra/config.py inside the program
    assert "QUFBQQ" not in str(info.value) and "t" * 40 not in str(info.value)  # never a (secret) value


def test_config_lists_every_unknown_key_at_once_naming_the_stack(write_stack: StackWriter) -> None:
    config = base_config() | {
        "jobmatch-ia:gateway": {},
        "cloudflare:apiTokn": {"secure": "v1:QUFBQQ=="},
        "pulumi:autonameing": {},
    }
    with pytest.raises(ConfigError) as info:
        run_plan("test", write_stack(config))
    lines = str(info.value).splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "stack 'test': unknown config key 'cloudflare:apiTokn'",
        "stack 'test': unknown config namespace 'jobmatch-ia'",
        "stack 'test': unknown config key 'pulumi:autonameing'",
    ]
    assert "did you mean 'pulumi:autonaming'?" in lines[2]
    assert "QUFBQQ" not in str(info.value)


def test_config_lists_every_unknown_nested_key_at_once(write_stack: StackWriter) -> None:
    config = base_config() | {
        "jobmatch-ai:gateway": {"cacheTTL": 60, "rateLimiting": {"intervall": 60}},
        "jobmatch-ai:worker": {"workersdev": True},
    }
    with pytest.raises(ConfigError) as info:
        run_plan("test", write_stack(config))
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("stack 'test': jobmatch-ai:") for line in lines)
    assert "did you mean 'jobmatch-ai:gateway.rateLimiting.interval'?" in lines[0]
    assert "did you mean 'jobmatch-ai:gateway.cacheTtl'?" in lines[1]
    assert "did you mean 'jobmatch-ai:worker.workersDev'?" in lines[2]


def test_config_accepts_the_default_gateway_when_opted_in(write_stack: StackWriter) -> None:
    gateway = {"id": "default", "allowDefaultId": True, "cacheTtl": 3600}
    plan = run_plan("test", write_stack(base_config() | {"jobmatch-ai:gateway": gateway}))
    (resource,) = plan.find(":AiGateway")
    assert (resource.inputs["aiGatewayId"], resource.inputs["cacheTtl"]) == ("default", 3600)
    assert plan.outputs["dualcache"]["gateway_id"] == "default"


def test_config_accepts_the_provider_and_engine_keys_pulumi_documents(write_stack: StackWriter) -> None:
    config = base_config() | {
        "cloudflare:apiToken": {"secure": "v1:QUFBQQ=="},
        "cloudflare:userAgentOperatorSuffix": "ci",
        "pulumi:disable-default-providers": ["kubernetes"],
    }
    assert run_plan("test", write_stack(config)).outputs["dualcache"]["account_id"] == ACCOUNT


def test_config_requires_the_account_id(write_stack: StackWriter) -> None:
    config = base_config()
    del config["jobmatch-ai:accountId"]
    with pytest.raises(ConfigError, match=r"jobmatch-ai:accountId is required"):
        run_plan("test", write_stack(config))


def test_config_rejects_a_default_worker_name_the_stack_name_makes_invalid(write_stack: StackWriter) -> None:
    project = write_stack(base_config(), stack="Prod_EU")
    with pytest.raises(ConfigError, match=r"default jobmatch-ai:worker\.name 'jobmatch-ai-api-Prod_EU'.*set jobmatch"):
        run_plan("Prod_EU", project)


@pytest.mark.parametrize(
    "ttl", [pytest.param(0, id="off"), pytest.param(60, id="min"), pytest.param(2_592_000, id="max")]
)
def test_config_accepts_gateway_cache_ttl_bounds(write_stack: StackWriter, ttl: int) -> None:
    plan = run_plan("test", write_stack(base_config() | {"jobmatch-ai:gateway": {"cacheTtl": ttl}}))
    (gateway,) = plan.find(":AiGateway")
    assert gateway.inputs["cacheTtl"] == ttl


def test_config_ignores_other_namespaces_and_applies_policy_overrides(write_stack: StackWriter) -> None:
    config = base_config() | {
        "cloudflare:baseUrl": "https://api.cloudflare.com/client/v4",
        "jobmatch-ai:policies": {"spam_detection": {"gateway_ttl": 7200}},
    }
    plan = run_plan("test", write_stack(config))
    exported = plan.outputs["dualcache"]
    assert exported["account_id"] == ACCOUNT
    assert exported["policies"]["spam_detection"]["gateway_ttl"] == 7200
    assert exported["policies"]["embeddings"]["gateway_ttl"] == 3600  # default untouched


def test_config_reports_a_missing_stack_file_with_the_stacks_that_exist(write_stack: StackWriter) -> None:
    project = write_stack(base_config(), stack="dev")
    with pytest.raises(ConfigError, match=re.escape("no stack file") + r".*stacks here: dev"):
        run_plan("qa", project)


def test_config_rejects_a_key_without_namespace_as_pulumi_does(write_stack: StackWriter) -> None:
    config = base_config()
    config["accountId"] = config.pop("jobmatch-ai:accountId")
    with pytest.raises(ConfigError, match=r"config key 'accountId' has no namespace; .*`jobmatch-ai:accountId`"):
        run_plan("test", write_stack(config))


def test_config_reads_an_unquoted_compatibility_date(write_stack: StackWriter) -> None:
    project = write_stack(base_config())
    stack_file = project / "Pulumi.test.yaml"
    stack_file.write_text(
        stack_file.read_text().replace("compatibilityDate: '2025-03-11'", "compatibilityDate: 2025-06-01")
    )
    assert "compatibilityDate: 2025-06-01" in stack_file.read_text()
    script = run_plan("test", project).named("api-script")
    assert script.inputs["compatibilityDate"] == "2025-06-01"


def test_config_policy_override_can_turn_the_kv_layer_off(write_stack: StackWriter) -> None:
    config = base_config() | {"jobmatch-ai:policies": {"job_analysis": {"kv": False}}}
    exported = run_plan("test", write_stack(config)).outputs["dualcache"]
    assert (exported["policies"]["job_analysis"]["kv"], exported["policies"]["job_analysis"]["kv_ttl"]) == (False, None)


def test_plan_unwraps_a_config_error_the_runtime_wrapped() -> None:
    from infra.plan import _find_config_error

    original = ConfigError("stack 'dev': jobmatch-ai:gateway.cacheTtl = 5: must be 0 (cache off) or 60..2592000")
    try:
        try:
            try:
                raise original
            except ConfigError as exc:
                raise ValueError("While processing input: 'bindings'") from exc
        except ValueError as exc:
            raise ValueError("While processing resource: 'api-script'") from exc
    except ValueError as wrapped:
        assert _find_config_error(wrapped) is original
    assert _find_config_error(ValueError("unrelated")) is None


def test_config_accepts_a_custom_operation_and_exports_it_in_the_policies(write_stack: StackWriter) -> None:
    summarize = {"kv": True, "kv_ttl": 86400, "kv_namespace": "API_CACHE", "gateway": "skip", "version": 2}
    config = base_config() | {"jobmatch-ai:policies": {"summarize_job": summarize, "job_analysis": {"version": "3"}}}
    exported = run_plan("test", write_stack(config)).outputs["dualcache"]["policies"]
    assert list(exported)[-1] == "summarize_job"
    assert exported["summarize_job"] == {
        "kv": True,
        "kv_ttl": 86400,
        "kv_namespace": "API_CACHE",
        "gateway": "skip",
        "gateway_ttl": None,
        "direct_fallback": True,
        "collect_log": None,
        "scope": "user",
        "version": "2",
    }
    assert exported["job_analysis"]["version"] == "3"
    # What the runtime reads back from these outputs is the same policy.
    from dualcache import Policies

    assert Policies.model_validate(exported).for_operation("summarize_job").kv_ttl == 86400


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        pytest.param(
            {"kv": True},
            r"jobmatch-ai:policies\.summarize_job: .*missing: policies\.summarize_job\.gateway",
            id="incomplete",
        ),
        pytest.param(
            {"kv": True, "kv_ttl": 10, "kv_namespace": "API_CACHE", "gateway": "skip"},
            r"jobmatch-ai:policies\.summarize_job: kv_ttl=10",
            id="kv-ttl",
        ),
        pytest.param(
            {"kv": False, "gateway": "skip", "version": "no spaces"},
            r"jobmatch-ai:policies\.summarize_job: version='no spaces'",
            id="version",
        ),
    ],
)
def test_config_rejects_a_bad_custom_operation_naming_the_key(
    write_stack: StackWriter, policy: dict[str, Any], message: str
) -> None:
    config = base_config() | {"jobmatch-ai:policies": {"summarize_job": policy}}
    with pytest.raises(ConfigError, match=message):
        run_plan("test", write_stack(config))
