"""The Pulumi program under the mock engine: what each stack declares, and what it exports."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _infra_support import ACCOUNT, REPO, STACKS, StackWriter, base_config

from dualcache import Namespace, StackOutputs, load_stack_config
from infra.plan import SECRET, PlanResult, manifest_json, run_plan

GATEWAY = ":AiGateway"
NAMESPACE = ":WorkersKvNamespace"
SCRIPT = ":WorkersScript"


def _bindings(plan: PlanResult, script: str = "api-script") -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in plan.named(script).inputs["bindings"]}


@pytest.mark.parametrize("stack", STACKS)
def test_program_declares_one_gateway_with_the_stacks_settings(plans: dict[str, PlanResult], stack: str) -> None:
    cfg = load_stack_config(REPO, stack)
    (gateway,) = plans[stack].find(GATEWAY)
    assert gateway.type == "cloudflare:index/aiGateway:AiGateway"
    s = cfg.gateway
    expected = {
        "accountId": cfg.account_id,
        "aiGatewayId": f"jobmatch-ai-{stack}",
        "cacheTtl": s.cache_ttl,
        "cacheInvalidateOnUpdate": s.cache_invalidate_on_update,
        "collectLogs": s.collect_logs,
        "authentication": s.authentication,
        "rateLimitingLimit": s.rate_limiting.limit,
        "rateLimitingInterval": s.rate_limiting.interval,
        "rateLimitingTechnique": s.rate_limiting.technique,
        "retryMaxAttempts": s.retry.max_attempts,
        "retryDelay": s.retry.delay,
        "retryBackoff": s.retry.backoff,
    }
    if s.log_management is not None:
        expected |= {"logManagement": s.log_management, "logManagementStrategy": s.log_management_strategy}
    assert gateway.inputs == expected, gateway.name


def test_program_stacks_differ_where_environments_should(plans: dict[str, PlanResult]) -> None:
    dev, prod = plans["dev"].find(GATEWAY)[0].inputs, plans["prod"].find(GATEWAY)[0].inputs
    assert (dev["authentication"], prod["authentication"]) == (False, True)
    assert dev["rateLimitingLimit"] == 0 and prod["rateLimitingLimit"] > 0
    assert "logManagement" not in dev and prod["logManagementStrategy"] == "DELETE_OLDEST"


@pytest.mark.parametrize("stack", STACKS)
def test_program_declares_six_namespaces_with_stack_titles(plans: dict[str, PlanResult], stack: str) -> None:
    namespaces = plans[stack].find(NAMESPACE)
    assert {ns.type for ns in namespaces} == {"cloudflare:index/workersKvNamespace:WorkersKvNamespace"}
    assert sorted(ns.inputs["title"] for ns in namespaces) == sorted(
        f"jobmatch-ai-{stack}-{b.value}" for b in Namespace
    )
    assert all(ns.inputs["accountId"] == ACCOUNT for ns in namespaces)


def test_program_protects_and_retains_prod_namespaces_only(plans: dict[str, PlanResult]) -> None:
    for ns in plans["prod"].find(NAMESPACE):
        assert (ns.protect, ns.retain_on_delete) == (True, True), ns.name
    for stack in ("dev", "staging"):
        for ns in plans[stack].find(NAMESPACE):
            assert (ns.protect, ns.retain_on_delete) == (False, False), f"{stack}/{ns.name}"


def test_program_prod_adopts_the_existing_job_analysis_namespace(plans: dict[str, PlanResult]) -> None:
    adopted = {ns.inputs["title"]: ns for ns in plans["prod"].find(NAMESPACE) if ns.import_id}
    assert list(adopted) == ["jobmatch-ai-prod-JOB_ANALYSIS_CACHE"]
    ns = adopted["jobmatch-ai-prod-JOB_ANALYSIS_CACHE"]
    assert ns.import_id == f"{ACCOUNT}/fedcba9876543210fedcba9876543210"
    assert ns.ignore_changes == ("title",)
    assert plans["prod"].outputs["dualcache"]["namespaces"]["JOB_ANALYSIS_CACHE"] == "fedcba9876543210fedcba9876543210"


def test_program_adopts_any_namespace_named_in_a_stack_file(write_stack: StackWriter) -> None:
    sessions_id = "abcdefabcdefabcdefabcdefabcdef01"
    config = base_config() | {"jobmatch-ai:namespaces": {"adopt": {"SESSIONS": sessions_id}}}
    plan = run_plan("test", write_stack(config))
    imports = {ns.name: ns.import_id for ns in plan.find(NAMESPACE)}
    assert imports.pop("kv-sessions") == f"{ACCOUNT}/{sessions_id}"
    assert set(imports.values()) == {None}
    assert _bindings(plan)["SESSIONS"]["namespaceId"] == sessions_id
    assert StackOutputs.from_data(plan.outputs["dualcache"]).namespace_id("SESSIONS") == sessions_id


@pytest.mark.parametrize("stack", STACKS)
def test_program_binds_namespaces_ai_and_plain_vars(plans: dict[str, PlanResult], stack: str) -> None:
    plan = plans[stack]
    bindings = _bindings(plan)
    ids = plan.outputs["dualcache"]["namespaces"]
    for binding in Namespace:
        assert bindings[binding.value] == {
            "name": binding.value,
            "type": "kv_namespace",
            "namespaceId": ids[binding.value],
        }
    assert bindings["AI"] == {"name": "AI", "type": "ai"}
    assert bindings["AI_GATEWAY_SLUG"] == {
        "name": "AI_GATEWAY_SLUG",
        "type": "plain_text",
        "text": f"jobmatch-ai-{stack}",
    }
    assert bindings["CLOUDFLARE_ACCOUNT_ID"]["text"] == ACCOUNT
    # The committed stack files set no secrets, so no secret_text binding is declared.
    assert len(bindings) == 9 and all(b["type"] != "secret_text" for b in bindings.values())


@pytest.mark.parametrize("stack", STACKS)
def test_program_worker_is_an_es_module_with_the_health_worker(plans: dict[str, PlanResult], stack: str) -> None:
    script = plans[stack].named("api-script")
    assert script.type == "cloudflare:index/workersScript:WorkersScript"
    assert script.inputs["scriptName"] == f"jobmatch-ai-api-{stack}"
    assert script.inputs["mainModule"] == "worker.js"
    assert script.inputs["compatibilityDate"] == "2025-03-11"
    assert script.inputs["content"] == (REPO / "infra" / "worker" / "health.js").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("secrets", "expected"),
    [
        pytest.param({"openaiApiKey"}, {"OPENAI_API_KEY"}, id="openai-only"),
        pytest.param({"gatewayToken"}, {"CF_AIG_TOKEN"}, id="gateway-token-only"),
        pytest.param({"openaiApiKey", "gatewayToken"}, {"OPENAI_API_KEY", "CF_AIG_TOKEN"}, id="both"),
    ],
)
def test_program_binds_secret_text_only_when_the_secret_is_set(
    write_stack: StackWriter, secrets: set[str], expected: set[str]
) -> None:
    config = base_config() | {f"jobmatch-ai:{key}": {"secure": "v1:bm90LWRlY3J5cHRlZA=="} for key in secrets}
    plan = run_plan("test", write_stack(config))
    bindings = _bindings(plan)
    secret_bindings = {name for name, b in bindings.items() if b["type"] == "secret_text"}
    assert secret_bindings == expected
    for name in secret_bindings:
        assert bindings[name]["text"] == SECRET, name
    text = json.dumps(plan.manifest())
    assert "offline-plan-placeholder" not in text
    assert "v1:bm90" not in text
    assert all(b["text"] != SECRET for b in bindings.values() if b["type"] == "plain_text")
    assert plan.outputs["dualcache"] != SECRET


def test_program_uses_the_configured_bundle_route_and_domain(write_stack: StackWriter) -> None:
    zone = "11111111111111111111111111111111"
    config = base_config() | {
        "jobmatch-ai:worker": {
            "name": "jobs-api",
            "bundle": "dist/app.js",
            "mainModule": "app.js",
            "compatibilityDate": "2025-06-01",
            "route": {"pattern": "api.example.com/*", "zoneId": zone},
            "customDomain": {"hostname": "jobs.example.com", "zoneId": zone},
        }
    }
    project = write_stack(config)
    (project / "dist").mkdir()
    (project / "dist" / "app.js").write_text("export default { fetch() { return new Response('app'); } };\n")
    plan = run_plan("test", project)
    script = plan.named("api-script")
    assert (script.inputs["scriptName"], script.inputs["mainModule"]) == ("jobs-api", "app.js")
    assert script.inputs["content"].startswith("export default { fetch()")
    assert script.inputs["compatibilityDate"] == "2025-06-01"
    route = plan.named("api-route")
    assert route.inputs == {"pattern": "api.example.com/*", "script": "jobs-api", "zoneId": zone}
    domain = plan.named("api-domain")
    assert domain.inputs == {
        "accountId": ACCOUNT,
        "hostname": "jobs.example.com",
        "service": "jobs-api",
        "zoneId": zone,
    }
    assert plan.outputs["dualcache"]["worker_name"] == "jobs-api"


@pytest.mark.parametrize("stack", STACKS)
def test_program_exports_the_contract_as_stack_outputs(plans: dict[str, PlanResult], stack: str) -> None:
    cfg = load_stack_config(REPO, stack)
    exported = plans[stack].outputs
    assert list(exported) == ["dualcache"]
    outputs = StackOutputs.from_data(exported["dualcache"])
    assert outputs.stack == stack
    assert (outputs.account_id, outputs.gateway_id, outputs.worker_name) == (
        ACCOUNT,
        f"jobmatch-ai-{stack}",
        f"jobmatch-ai-api-{stack}",
    )
    assert outputs.namespaces == {b: cfg.offline_namespace_id(b) for b in Namespace}
    assert outputs.policies == cfg.policies
    assert set(exported["dualcache"]) == set(StackOutputs.model_fields)


def test_program_plans_of_one_stack_are_identical_when_repeated(plans: dict[str, PlanResult]) -> None:
    again = run_plan("staging", REPO)
    assert again.manifest() == plans["staging"].manifest()


@pytest.mark.parametrize(("stack", "enabled"), [("dev", True), ("staging", True), ("prod", False)])
def test_program_sets_the_workers_dev_subdomain_per_stack(
    plans: dict[str, PlanResult], stack: str, enabled: bool
) -> None:
    subdomain = plans[stack].named("api-subdomain")
    assert subdomain.type == "cloudflare:index/workersScriptSubdomain:WorkersScriptSubdomain"
    assert subdomain.inputs == {"accountId": ACCOUNT, "enabled": enabled, "scriptName": f"jobmatch-ai-api-{stack}"}


def test_program_leaves_workers_dev_alone_when_not_configured(write_stack: StackWriter) -> None:
    subdomains = run_plan("test", write_stack(base_config())).find(":WorkersScriptSubdomain")
    assert [s.name for s in subdomains] == ["dataplane-subdomain"]


def test_program_manifest_with_real_secrets_is_deterministic_and_shows_no_secret(write_stack: StackWriter) -> None:
    # A stack file as `pulumi config set --secret` leaves it with the passphrase provider: a salt and ciphertexts.
    project = write_stack(base_config())
    ciphertexts = {
        "cloudflare:apiToken": "v1:OWQ0ZTVmNmE=:Y2xvdWRmbGFyZS10b2tlbi1jaXBoZXJ0ZXh0LTAx",
        "jobmatch-ai:openaiApiKey": "v1:MWIyYzNkNGU=:b3BlbmFpLWtleS1jaXBoZXJ0ZXh0LTAy",
        "jobmatch-ai:gatewayToken": "v1:ZmVkY2JhOTg=:Z2F0ZXdheS10b2tlbi1jaXBoZXJ0ZXh0LTAz",
    }
    secure = "".join(f"  {key}:\n    secure: {value}\n" for key, value in ciphertexts.items())
    stack_file = project / "Pulumi.test.yaml"
    stack_file.write_text(
        "encryptionsalt: v1:c2FsdHNhbHQ=:v1:QUJDREVGR0g=:SUpLTE1OT1BRUlNUVVZXWFla\n"
        + stack_file.read_text().replace("config:\n", "config:\n" + secure, 1)
    )
    first, second = run_plan("test", project), run_plan("test", project)
    text = manifest_json(first.manifest())
    assert text == manifest_json(second.manifest())
    for value in ciphertexts.values():
        for part in value.split(":")[1:]:
            assert part not in text
    assert "placeholder" not in text and "salt" not in text
    bindings = _bindings(first)
    assert {name for name, b in bindings.items() if b["type"] == "secret_text"} == {"OPENAI_API_KEY", "CF_AIG_TOKEN"}
    assert _bindings(first, "dataplane-script")["DUALCACHE_TOKEN"]["text"] == SECRET
    assert all(bindings[name]["text"] == SECRET for name in ("OPENAI_API_KEY", "CF_AIG_TOKEN"))
    exported = StackOutputs.from_data(first.outputs["dualcache"])  # a plain object, not "[secret]"
    assert SECRET not in json.dumps(exported.model_dump(mode="json"))


# -- the data-plane Worker ------------------------------------------------------------------------------------

DATA_PLANE_JS = REPO / "infra" / "worker" / "dataplane.js"
TOKEN_KEY = "jobmatch-ai:dataPlaneToken"
ZONE = "44444444444444444444444444444444"


@pytest.mark.parametrize("stack", STACKS)
def test_program_declares_the_data_plane_worker_in_its_own_component(plans: dict[str, PlanResult], stack: str) -> None:
    plan = plans[stack]
    script = plan.named("dataplane-script")
    assert script.type == "cloudflare:index/workersScript:WorkersScript"
    assert script.custom and script.parent is not None
    assert script.parent.endswith("$dualcache:infra:DataPlaneWorker::dataplane"), script.parent
    assert script.inputs["scriptName"] == f"jobmatch-ai-dualcache-{stack}"
    assert script.inputs["mainModule"] == "dataplane.js"
    # One ES module: health.js then dataplane.js, exactly what infra/worker/dev.mjs runs in workerd.
    health = (REPO / "infra" / "worker" / "health.js").read_text(encoding="utf-8")
    assert script.inputs["content"] == health + "\n" + DATA_PLANE_JS.read_text(encoding="utf-8")
    assert script.inputs["accountId"] == ACCOUNT
    # The API Worker stays the user's app: another script, with none of the data plane's bindings.
    api = plan.named("api-script")
    assert api.inputs["scriptName"] == f"jobmatch-ai-api-{stack}"
    assert "DUALCACHE_TOKEN" not in _bindings(plan)
    assert [s.name for s in plan.find(SCRIPT)] == ["api-script", "dataplane-script"]


@pytest.mark.parametrize("stack", STACKS)
def test_program_binds_the_data_plane_to_the_namespaces_token_and_health_needs(
    plans: dict[str, PlanResult], stack: str
) -> None:
    plan = plans[stack]
    bindings = _bindings(plan, "dataplane-script")
    ids = plan.outputs["dualcache"]["namespaces"]
    assert list(bindings) == [
        *(b.value for b in Namespace),
        "DUALCACHE_TOKEN",
        "AI",
        "AI_GATEWAY_SLUG",
        "CLOUDFLARE_ACCOUNT_ID",
    ]
    for binding in Namespace:
        assert bindings[binding.value] == {
            "name": binding.value,
            "type": "kv_namespace",
            "namespaceId": ids[binding.value],
        }
    assert bindings["DUALCACHE_TOKEN"] == {"name": "DUALCACHE_TOKEN", "type": "secret_text", "text": SECRET}
    assert bindings["AI"] == {"name": "AI", "type": "ai"}
    assert bindings["AI_GATEWAY_SLUG"]["text"] == f"jobmatch-ai-{stack}"
    assert bindings["CLOUDFLARE_ACCOUNT_ID"] == {"name": "CLOUDFLARE_ACCOUNT_ID", "type": "plain_text", "text": ACCOUNT}


@pytest.mark.parametrize("stack", STACKS)
def test_program_exports_the_data_plane_name_and_no_url_without_a_subdomain(
    plans: dict[str, PlanResult], stack: str
) -> None:
    exported = plans[stack].outputs["dualcache"]
    assert exported != SECRET
    assert exported["data_plane_worker_name"] == f"jobmatch-ai-dualcache-{stack}"
    # The committed stacks set no workersDevSubdomain: the URL is unknown offline (a real up refuses this).
    assert exported["data_plane_url"] is None
    subdomain = plans[stack].named("dataplane-subdomain")
    assert subdomain.inputs == {"accountId": ACCOUNT, "enabled": True, "scriptName": f"jobmatch-ai-dualcache-{stack}"}


def test_program_token_is_nowhere_in_the_manifest_or_outputs(write_stack: StackWriter) -> None:
    from infra.config import OFFLINE_DATA_PLANE_TOKEN
    from infra.plan import SECRET_PLACEHOLDER

    ciphertext = "v1:ZGF0YS1wbGFuZQ==:dG9rZW4tY2lwaGVydGV4dC0wNA=="
    with_token = run_plan("test", write_stack(base_config() | {TOKEN_KEY: {"secure": ciphertext}}))
    without = run_plan("test", write_stack(base_config(), stack="bare"))
    for plan in (with_token, without):
        text = manifest_json(plan.manifest())
        outputs = json.dumps(plan.outputs)
        for leaked in (SECRET_PLACEHOLDER.format(key=TOKEN_KEY), OFFLINE_DATA_PLANE_TOKEN, *ciphertext.split(":")[1:]):
            assert leaked not in text and leaked not in outputs, plan.stack
        assert _bindings(plan, "dataplane-script")["DUALCACHE_TOKEN"]["text"] == SECRET
        assert "token" not in {k.lower() for k in plan.outputs["dualcache"]}
    assert set(with_token.outputs["dualcache"]) == set(StackOutputs.model_fields)


@pytest.mark.parametrize(
    ("data_plane", "subdomain", "url", "workers_dev"),
    [
        pytest.param({}, "acme", "https://jobmatch-ai-dualcache-test.acme.workers.dev", True, id="workers-dev"),
        pytest.param({"name": "kv-edge"}, "acme", "https://kv-edge.acme.workers.dev", True, id="workers-dev-named"),
        pytest.param(
            {"route": {"pattern": "kv.example.com/*", "zoneId": ZONE}},
            None,
            "https://kv.example.com",
            False,
            id="route",
        ),
        pytest.param(
            {"customDomain": {"hostname": "cache.example.com", "zoneId": ZONE}},
            "acme",
            "https://cache.example.com",
            False,
            id="custom-domain",
        ),
        pytest.param(
            {"customDomain": {"hostname": "cache.example.com"}, "workersDev": True},
            "acme",
            "https://cache.example.com",
            True,
            id="custom-domain-and-workers-dev",
        ),
    ],
)
def test_program_data_plane_is_reachable_where_config_says(
    write_stack: StackWriter, data_plane: dict[str, Any], subdomain: str | None, url: str, workers_dev: bool
) -> None:
    config = base_config() | {"jobmatch-ai:dataPlane": data_plane}
    if subdomain is not None:
        config["jobmatch-ai:workersDevSubdomain"] = subdomain
    plan = run_plan("test", write_stack(config))
    name = data_plane.get("name", "jobmatch-ai-dualcache-test")
    assert plan.named("dataplane-script").inputs["scriptName"] == name
    subdomain = plan.named("dataplane-subdomain").inputs
    assert subdomain == {"accountId": ACCOUNT, "enabled": workers_dev, "scriptName": name}
    routes = {r.name: r.inputs for r in plan.find(":WorkersRoute")}
    domains = {r.name: r.inputs for r in plan.find(":WorkersCustomDomain")}
    if "route" in data_plane:
        assert routes == {"dataplane-route": {"pattern": "kv.example.com/*", "script": name, "zoneId": ZONE}}
    else:
        assert routes == {}
    if "customDomain" in data_plane:
        expected = {"accountId": ACCOUNT, "hostname": "cache.example.com", "service": name}
        if "zoneId" in data_plane["customDomain"]:
            expected["zoneId"] = ZONE
        assert domains == {"dataplane-domain": expected}
    else:
        assert domains == {}
    outputs = StackOutputs.from_data(plan.outputs["dualcache"])
    assert (outputs.data_plane_url, outputs.data_plane_worker_name) == (url, name)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            {TOKEN_KEY: "a" * 64},
            r"jobmatch-ai:dataPlaneToken is in plain text; set it with `pulumi config set --secret "
            r"jobmatch-ai:dataPlaneToken",
            id="plain-text-token",
        ),
        pytest.param(
            {"jobmatch-ai:dataPlane": {"workersDev": False}},
            r"jobmatch-ai:dataPlane\.workersDev is false and no dataPlane\.route or dataPlane\.customDomain",
            id="reachable-nowhere",
        ),
        pytest.param(
            {"jobmatch-ai:dataPlane": {"route": {"pattern": "example.com/dualcache/*", "zoneId": ZONE}}},
            r"jobmatch-ai:dataPlane\.route = .*must cover one whole hostname, `<hostname>/\*`",
            id="route-with-a-path",
        ),
        pytest.param(
            {"jobmatch-ai:dataPlane": {"name": "jobmatch-ai-api-test"}},
            r"dataPlane\.name and the API Worker's name are both 'jobmatch-ai-api-test'",
            id="same-name-as-the-api-worker",
        ),
        pytest.param(
            {"jobmatch-ai:workersDevSubdomain": "Acme.dev"},
            r"jobmatch-ai:workersDevSubdomain = 'Acme\.dev'",
            id="subdomain-not-a-dns-label",
        ),
    ],
)
def test_program_rejects_bad_data_plane_config(write_stack: StackWriter, config: dict[str, Any], message: str) -> None:
    from dualcache import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        run_plan("test", write_stack(base_config() | config))
    assert "a" * 64 not in str(info.value)


def test_program_binds_the_rate_limiters_the_stack_declares(write_stack: StackWriter) -> None:
    limiters = {
        "USER_LIMITS": {"namespaceId": 1001, "limit": 100, "period": 60},
        "BURST": {"namespaceId": "1002", "limit": 5, "period": 10},
    }
    plan = run_plan("test", write_stack(base_config() | {"jobmatch-ai:dataPlane": {"rateLimits": limiters}}))
    bindings = _bindings(plan, "dataplane-script")
    assert sorted(list(bindings)[-2:]) == ["BURST", "USER_LIMITS"]  # after the others, in the stack file's order
    assert bindings["USER_LIMITS"] == {
        "name": "USER_LIMITS",
        "type": "ratelimit",
        "namespaceId": "1001",
        "simple": {"limit": 100, "period": 60},
    }
    assert bindings["BURST"]["simple"] == {"limit": 5, "period": 10} and bindings["BURST"]["namespaceId"] == "1002"
    # Without the key, no rate limiter is declared (the committed stacks).
    bare = run_plan("bare", write_stack(base_config(), stack="bare"))
    assert all(b["type"] != "ratelimit" for b in _bindings(bare, "dataplane-script").values())


@pytest.mark.parametrize(
    ("limiters", "message"),
    [
        pytest.param({"X": {"namespaceId": 1, "limit": 1, "period": 30}}, "period", id="period"),
        pytest.param({"X": {"namespaceId": 0, "limit": 1, "period": 60}}, "positive integer", id="namespace-id"),
        pytest.param({"X": {"namespaceId": 1, "limit": 0, "period": 60}}, "limit", id="limit"),
        pytest.param({"SESSIONS": {"namespaceId": 1, "limit": 1, "period": 60}}, "already a binding", id="clash"),
        pytest.param({"lower": {"namespaceId": 1, "limit": 1, "period": 60}}, "A-Z 0-9 _", id="name"),
    ],
)
def test_program_refuses_bad_rate_limiters_naming_the_key(
    write_stack: StackWriter, limiters: dict[str, Any], message: str
) -> None:
    from dualcache import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_stack_config(write_stack(base_config() | {"jobmatch-ai:dataPlane": {"rateLimits": limiters}}), "test")
