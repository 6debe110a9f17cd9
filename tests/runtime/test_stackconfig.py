"""StackConfig: the validated model of Pulumi.<stack>.yaml, read without Pulumi."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dualcache import ConfigError, Namespace, StackConfig, StackOutputs, load_stack_config

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "0123456789abcdef0123456789abcdef"


def _validate(**values: Any) -> StackConfig:
    return StackConfig.from_values({"accountId": ACCOUNT, **values}, project="jobmatch-ai", stack="dev")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"gateway": {"cacheTtl": 59}}, r"jobmatch-ai:gateway\.cacheTtl = 59: must be 0", id="cache-ttl-low"
        ),
        pytest.param(
            {"gateway": {"cacheTtl": 2_592_001}}, r"jobmatch-ai:gateway\.cacheTtl = 2592001", id="cache-ttl-high"
        ),
        pytest.param(
            {"gateway": {"rateLimiting": {"technique": "leaky"}}},
            r"jobmatch-ai:gateway\.rateLimiting\.technique = 'leaky'",
            id="technique",
        ),
        pytest.param(
            {"gateway": {"rateLimiting": {"interval": -1}}},
            r"jobmatch-ai:gateway\.rateLimiting\.interval = -1",
            id="interval",
        ),
        pytest.param(
            {"gateway": {"rateLimiting": {"limit": -1}}}, r"jobmatch-ai:gateway\.rateLimiting\.limit = -1", id="limit"
        ),
        pytest.param({"gateway": {"logManagement": 5}}, r"jobmatch-ai:gateway\.logManagement = 5", id="log-management"),
        pytest.param({"gateway": {"id": "a b"}}, r"jobmatch-ai:gateway\.id = 'a b'", id="gateway-id"),
        pytest.param(
            {"policies": {"job_analysis": {"kv_ttl": 30}}},
            r"jobmatch-ai:policies\.job_analysis: kv_ttl=30",
            id="kv-ttl",
        ),
        pytest.param({"worker": {"name": "-api"}}, r"jobmatch-ai:worker\.name = '-api'", id="worker-name-leading-dash"),
        pytest.param({"worker": {"name": "API"}}, r"jobmatch-ai:worker\.name = 'API'", id="worker-name-uppercase"),
        pytest.param(
            {"worker": {"compatibilityDate": "March 2025"}}, r"jobmatch-ai:worker\.compatibilityDate", id="compat-date"
        ),
        pytest.param(
            {"namespaces": {"adopt": {"SESSIONS": "xyz"}}},
            r"jobmatch-ai:namespaces\.adopt\.SESSIONS = 'xyz': must be 32 lowercase hex characters",
            id="adopt-id",
        ),
        pytest.param(
            {"worker": {"route": {"pattern": "a/*", "zoneId": "zone"}}},
            r"jobmatch-ai:worker\.route\.zoneId = 'zone'",
            id="route-zone-id",
        ),
        pytest.param(
            {"worker": {"mainModule": "worker.py"}}, r"jobmatch-ai:worker\.mainModule = 'worker\.py'", id="main-module"
        ),
        pytest.param(
            {"worker": {"workersDev": "maybe"}}, r"jobmatch-ai:worker\.workersDev = 'maybe'", id="workers-dev"
        ),
        pytest.param(
            {"gateways": {}},
            r"'jobmatch-ai:gateways': unknown key; did you mean 'jobmatch-ai:gateway'\? Valid keys of jobmatch-ai: "
            r"accountId, dataPlane, ",
            id="unknown-key",
        ),
        pytest.param(
            {"policies": ["embeddings"]}, r"jobmatch-ai:policies = \['embeddings'\]", id="policies-not-mapping"
        ),
    ],
)
def test_stackconfig_rejects_each_invalid_value_naming_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _validate(**values)


def test_stackconfig_requires_account_id() -> None:
    with pytest.raises(ConfigError, match=r"jobmatch-ai:accountId is required"):
        StackConfig.from_values({}, project="jobmatch-ai", stack="dev")


def test_stackconfig_derives_names_from_project_and_stack() -> None:
    cfg = _validate()
    assert (cfg.gateway_id, cfg.worker_name) == ("jobmatch-ai-dev", "jobmatch-ai-api-dev")
    assert cfg.namespace_title(Namespace.API_CACHE) == "jobmatch-ai-dev-API_CACHE"
    named = _validate(gateway={"id": "shared-gw"}, worker={"name": "api"})
    assert (named.gateway_id, named.worker_name) == ("shared-gw", "api")


def test_stackconfig_rejects_an_invalid_default_worker_name() -> None:
    with pytest.raises(ConfigError, match=r"default jobmatch-ai:worker\.name 'jobmatch-ai-api-Prod'"):
        StackConfig.from_values({"accountId": ACCOUNT}, project="jobmatch-ai", stack="Prod")
    named = {"worker": {"name": "api-prod"}, "gateway": {"id": "gw-prod"}, "dataPlane": {"name": "dp-prod"}}
    ok = StackConfig.from_values({"accountId": ACCOUNT, **named}, project="jobmatch-ai", stack="Prod")
    assert (ok.worker_name, ok.gateway_id, ok.data_plane_name) == ("api-prod", "gw-prod", "dp-prod")


def test_stackconfig_offline_namespace_ids_are_stable_distinct_and_keep_adopted_ids() -> None:
    adopted = "fedcba9876543210fedcba9876543210"
    cfg = _validate(namespaces={"adopt": {"JOB_ANALYSIS_CACHE": adopted}})
    ids = {b: cfg.offline_namespace_id(b) for b in Namespace}
    assert ids[Namespace.JOB_ANALYSIS_CACHE] == adopted
    assert len(set(ids.values())) == 6
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids.values())
    assert ids == {
        b: _validate(namespaces={"adopt": {"JOB_ANALYSIS_CACHE": adopted}}).offline_namespace_id(b) for b in Namespace
    }
    other_stack = StackConfig.from_values({"accountId": ACCOUNT}, project="jobmatch-ai", stack="staging")
    assert other_stack.offline_namespace_id(Namespace.SESSIONS) != ids[Namespace.SESSIONS]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_load_stack_config_reads_the_committed_stack_files(stack: str) -> None:
    cfg = load_stack_config(REPO, stack)
    assert (cfg.project, cfg.stack, cfg.account_id) == ("jobmatch-ai", stack, ACCOUNT)
    assert cfg.namespaces.protect is (stack == "prod")
    assert cfg.gateway.authentication is (stack != "dev")


def _project(tmp_path: Path, config: dict[str, Any], stack: str = "qa") -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: jobmatch-ai\nruntime: python\n")
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}))
    return tmp_path


def test_load_stack_config_knows_set_secrets_without_decrypting_them(tmp_path: Path) -> None:
    config = {
        "jobmatch-ai:accountId": ACCOUNT,
        "jobmatch-ai:openaiApiKey": {"secure": "v1:AAAA"},
        "cloudflare:apiToken": {"secure": "v1:BBBB"},
    }
    cfg = load_stack_config(_project(tmp_path, config), "qa")
    assert cfg.secrets_set == frozenset({"openaiApiKey"})
    assert "v1:AAAA" not in cfg.model_dump_json()


def test_load_stack_config_rejects_a_secret_in_plain_text(tmp_path: Path) -> None:
    config = {"jobmatch-ai:accountId": ACCOUNT, "jobmatch-ai:gatewayToken": "plain"}
    with pytest.raises(ConfigError, match=r"jobmatch-ai:gatewayToken is in plain text; set it with `pulumi config set"):
        load_stack_config(_project(tmp_path, config), "qa")


def test_load_stack_config_names_the_stacks_that_exist(tmp_path: Path) -> None:
    project = _project(tmp_path, {"jobmatch-ai:accountId": ACCOUNT})
    with pytest.raises(ConfigError, match=r"no stack file .*Pulumi\.prod\.yaml.*stacks here: qa"):
        load_stack_config(project, "prod")


def test_load_stack_config_reports_invalid_yaml_with_the_file(tmp_path: Path) -> None:
    project = _project(tmp_path, {})
    (project / "Pulumi.qa.yaml").write_text("config: [unclosed\n")
    with pytest.raises(ConfigError, match=r"Pulumi\.qa\.yaml is not valid YAML"):
        load_stack_config(project, "qa")


def test_load_stack_config_reads_an_unquoted_date_as_pulumi_does(tmp_path: Path) -> None:
    # Pulumi (Go yaml) hands `2025-06-01` to the program as a string; PyYAML alone would make it a date.
    project = _project(tmp_path, {})
    (project / "Pulumi.qa.yaml").write_text(
        f'config:\n  jobmatch-ai:accountId: "{ACCOUNT}"\n  jobmatch-ai:worker:\n    compatibilityDate: 2025-06-01\n'
    )
    assert load_stack_config(project, "qa").worker.compatibility_date == "2025-06-01"


def test_load_stack_config_rejects_a_key_without_namespace(tmp_path: Path) -> None:
    project = _project(tmp_path, {"accountId": ACCOUNT})
    with pytest.raises(ConfigError, match=r"config key 'accountId' has no namespace; .*`jobmatch-ai:accountId`"):
        load_stack_config(project, "qa")


@pytest.mark.parametrize("key", ["accountId", "gateway", "worker"])
def test_load_stack_config_rejects_a_plain_key_set_as_a_secret(tmp_path: Path, key: str) -> None:
    config = {"jobmatch-ai:accountId": ACCOUNT, f"jobmatch-ai:{key}": {"secure": "v1:QUFBQQ=="}}
    with pytest.raises(ConfigError, match=rf"jobmatch-ai:{key} is set as a secret, but .*plain-text") as info:
        load_stack_config(_project(tmp_path, config), "qa")
    assert "QUFBQQ" not in str(info.value)


@pytest.mark.parametrize("key", ["cloudflare:apiToken", "cloudflare:apiKey", "cloudflare:apiUserServiceKey"])
def test_load_stack_config_rejects_provider_credentials_in_plain_text(tmp_path: Path, key: str) -> None:
    token = "tok" + "x" * 40
    config = {"jobmatch-ai:accountId": ACCOUNT, key: token}
    with pytest.raises(
        ConfigError, match=rf"{key} is in plain text; set it with `pulumi config set --secret {key}"
    ) as info:
        load_stack_config(_project(tmp_path, config), "qa")
    assert token not in str(info.value)


# -- gateway ids: Cloudflare's schema pattern ------------------------------------------------------------------


@pytest.mark.parametrize(
    "gateway_id",
    [
        pytest.param("JobMatch-AI--Dev-", id="upper-double-and-trailing-dash"),
        pytest.param("jobmatch--dev", id="double-dash"),
        pytest.param("-dev", id="leading-dash"),
        pytest.param("dev-", id="trailing-dash"),
        pytest.param("Dev", id="uppercase"),
        pytest.param("job.match", id="dot"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("", id="empty"),
    ],
)
def test_stackconfig_rejects_gateway_ids_cloudflare_rejects(gateway_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        _validate(gateway={"id": gateway_id})
    message = str(info.value)
    assert f"jobmatch-ai:gateway.id = {gateway_id[:60]!r}" in message  # a long value is shown cut at 60
    assert "^[a-z0-9_]+(?:-[a-z0-9_]+)*$" in message and "1..64" in message


@pytest.mark.parametrize("gateway_id", ["jobmatch-ai-dev", "a", "gw_2-eu", "a" * 64, "x-y-z_1"])
def test_stackconfig_accepts_gateway_ids_of_the_schema_pattern(gateway_id: str) -> None:
    assert _validate(gateway={"id": gateway_id}).gateway_id == gateway_id


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_stackconfig_committed_stacks_default_gateway_ids_pass(stack: str) -> None:
    assert load_stack_config(REPO, stack).gateway_id == f"jobmatch-ai-{stack}"


def test_stackconfig_rejects_a_default_gateway_id_cloudflare_rejects() -> None:
    with pytest.raises(ConfigError, match=r"default jobmatch-ai:gateway\.id 'jobmatch-ai-EU' .*\^\[a-z0-9_\]\+"):
        StackConfig.from_values({"accountId": ACCOUNT, "worker": {"name": "api"}}, project="jobmatch-ai", stack="EU")


# -- the data plane --------------------------------------------------------------------------------------------


def test_stackconfig_data_plane_defaults_to_workers_dev_named_after_the_stack() -> None:
    cfg = _validate()
    assert cfg.data_plane_name == "jobmatch-ai-dualcache-dev"
    assert cfg.data_plane.on_workers_dev is True
    assert cfg.data_plane_url is None  # the account's workers.dev subdomain is not known
    with_subdomain = _validate(workersDevSubdomain="acme")
    assert with_subdomain.data_plane_url == "https://jobmatch-ai-dualcache-dev.acme.workers.dev"


@pytest.mark.parametrize(
    ("data_plane", "url", "on_workers_dev"),
    [
        pytest.param({"customDomain": {"hostname": "kv.example.com"}}, "https://kv.example.com", False, id="domain"),
        pytest.param(
            {"route": {"pattern": "edge.example.com/*", "zoneId": ACCOUNT}},
            "https://edge.example.com",
            False,
            id="route",
        ),
        pytest.param(
            {
                "route": {"pattern": "edge.example.com/*", "zoneId": ACCOUNT},
                "customDomain": {"hostname": "kv.example.com"},
                "workersDev": True,
            },
            "https://kv.example.com",
            True,
            id="domain-wins-over-route-and-workers-dev",
        ),
        pytest.param({"name": "edge-kv"}, "https://edge-kv.acme.workers.dev", True, id="named-on-workers-dev"),
    ],
)
def test_stackconfig_data_plane_url_follows_domain_route_and_workers_dev(
    data_plane: dict[str, Any], url: str, on_workers_dev: bool
) -> None:
    cfg = _validate(dataPlane=data_plane, workersDevSubdomain="acme")
    assert (cfg.data_plane_url, cfg.data_plane.on_workers_dev) == (url, on_workers_dev)


def test_load_stack_config_rejects_a_plain_text_data_plane_token(tmp_path: Path) -> None:
    token = "f" * 64
    config = {"jobmatch-ai:accountId": ACCOUNT, "jobmatch-ai:dataPlaneToken": token}
    with pytest.raises(
        ConfigError,
        match=r"jobmatch-ai:dataPlaneToken is in plain text; set it with "
        r"`pulumi config set --secret jobmatch-ai:dataPlaneToken \.\.\. -s qa`",
    ) as info:
        load_stack_config(_project(tmp_path, config), "qa")
    assert token not in str(info.value)
    config["jobmatch-ai:dataPlaneToken"] = {"secure": "v1:dG9rZW4="}
    assert "dataPlaneToken" in load_stack_config(_project(tmp_path, config), "qa").secrets_set


@pytest.mark.parametrize(
    "hostname",
    [
        pytest.param("evil.example/x?", id="path-and-query"),
        pytest.param("user@evil.example", id="userinfo"),
        pytest.param("Kv.Example.com", id="uppercase"),
        pytest.param("localhost", id="one-label"),
        pytest.param("kv.example.com:8443", id="port"),
    ],
)
def test_stackconfig_custom_domain_must_be_a_host_name(hostname: str) -> None:
    # It becomes the data plane's https:// base URL, where the data-plane token is sent.
    with pytest.raises(ConfigError, match=r"jobmatch-ai:dataPlane\.customDomain\.hostname = .*String should match"):
        _validate(dataPlane={"customDomain": {"hostname": hostname}})


@pytest.mark.parametrize("bundle", ["/proc/self/environ", "../../etc/passwd", "dist/../../x.js", "C:/x.js", ""])
def test_stackconfig_bundle_must_stay_inside_the_project(bundle: str) -> None:
    # The bundle's text goes into the plan manifest and its diff, which a preview job posts on a pull request.
    with pytest.raises(ConfigError, match=r"jobmatch-ai:worker\.bundle = .*inside the project directory"):
        _validate(worker={"bundle": bundle})
    assert _validate(worker={"bundle": "dist/app.js"}).worker.bundle == "dist/app.js"


@pytest.mark.parametrize("stack", ["../../etc/x", "a/b", "", "x" * 101, "."])
def test_load_stack_config_refuses_a_stack_name_pulumi_refuses(tmp_path: Path, stack: str) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: jobmatch-ai\n")
    with pytest.raises(ConfigError, match=r"^stack name .* is not valid; Pulumi stack names are 1\.\.100"):
        load_stack_config(tmp_path, stack)


def test_load_stack_config_refuses_a_long_project_name_quoting_a_prefix(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text(f"name: {'p' * 5000}\n")
    with pytest.raises(ConfigError) as info:
        load_stack_config(tmp_path, "dev")
    message = str(info.value)
    assert "is not a valid project name" in message and "(5,000 characters)" in message
    assert len(message) < 300


def test_stackconfig_accepts_custom_operations_set_with_config_paths() -> None:
    # `pulumi config set --path 'policies.summarize_job.kv' true` stores strings: they read as the values.
    overrides = {"summarize_job": {"kv": "true", "kv_ttl": "86400", "kv_namespace": "API_CACHE", "gateway": "skip"}}
    policy = _validate(policies=overrides).policies.for_operation("summarize_job")
    assert (policy.kv, policy.kv_ttl, policy.kv_namespace) == (True, 86400, Namespace.API_CACHE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"Summarize": {}}, r"jobmatch-ai:policies\.Summarize: operation name 'Summarize'", id="name"),
        pytest.param(
            {"resume": {"kv": False, "gateway": "skip"}}, r"jobmatch-ai:policies\.resume: .*reserved", id="rsv"
        ),
        pytest.param(
            {"summarize_job": {"kv": False}},
            r"jobmatch-ai:policies\.summarize_job: .*must set kv and gateway",
            id="miss",
        ),
        pytest.param(
            {"summarize_job": {"kv": False, "gateway": "skip", "scope": "team"}},
            r"jobmatch-ai:policies\.summarize_job: scope='team'",
            id="scope",
        ),
    ],
)
def test_stackconfig_rejects_bad_custom_operations_naming_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _validate(policies=overrides)


# -- typos: unknown namespaces and keys, at any depth ------------------------------------------------------------

_VALID_NAMESPACES = "Valid namespaces: jobmatch-ai, cloudflare, pulumi"


def test_load_stack_config_rejects_a_misspelt_project_namespace_with_a_suggestion(tmp_path: Path) -> None:
    # Read as another program's namespace, the whole gateway block would be dropped (the gateway cache off).
    config = {"jobmatch-ai:accountId": ACCOUNT, "jobmatch-ia:gateway": {"cacheTtl": 3600}}
    project = _project(tmp_path, config, stack="dev")
    with pytest.raises(ConfigError) as info:
        load_stack_config(project, "dev")
    assert str(info.value) == (
        f"unknown config namespace 'jobmatch-ia' in {project / 'Pulumi.dev.yaml'} (key 'jobmatch-ia:gateway'); "
        f"did you mean 'jobmatch-ai:'? {_VALID_NAMESPACES}"
    )


def test_load_stack_config_suggests_the_namespace_of_a_known_key(tmp_path: Path) -> None:
    config = {"jobmatch-ai:accountId": ACCOUNT, "myapp:worker": {"workersDev": True}}
    with pytest.raises(
        ConfigError, match=rf"'myapp:worker'\); did you mean 'jobmatch-ai:worker'\? {_VALID_NAMESPACES}"
    ):
        load_stack_config(_project(tmp_path, config), "qa")


def test_load_stack_config_rejects_an_unknown_provider_key_without_showing_its_value(tmp_path: Path) -> None:
    token = "tok" + "x" * 40
    config = {"jobmatch-ai:accountId": ACCOUNT, "cloudflare:apiTokn": token}
    with pytest.raises(ConfigError) as info:
        load_stack_config(_project(tmp_path, config), "qa")
    message = str(info.value)
    assert message == (
        f"unknown config key 'cloudflare:apiTokn' in {tmp_path / 'Pulumi.qa.yaml'}; did you mean "
        "'cloudflare:apiToken'? Valid cloudflare: keys: apiKey, apiToken, apiUserServiceKey, baseUrl, email, "
        "userAgentOperatorSuffix"
    )
    assert token not in message


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        pytest.param("cloudflare:accountId", "jobmatch-ai:accountId", id="project-key-in-provider-namespace"),
        pytest.param("pulumi:disable-default-provider", "pulumi:disable-default-providers", id="engine-key"),
        pytest.param("jobmatch-ai:gatway", "jobmatch-ai:gateway", id="project-key"),
        pytest.param("jobmatch-ai:dataplane", "jobmatch-ai:dataPlane", id="case"),
    ],
)
def test_load_stack_config_suggests_the_closest_key_of_a_known_namespace(
    tmp_path: Path, key: str, suggestion: str
) -> None:
    config = {"jobmatch-ai:accountId": ACCOUNT, key: "x"}
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}' in .*; did you mean '{suggestion}'\?"):
        load_stack_config(_project(tmp_path, config), "qa")


def test_load_stack_config_accepts_every_documented_provider_and_engine_key(tmp_path: Path) -> None:
    config = {
        "jobmatch-ai:accountId": ACCOUNT,
        "cloudflare:apiToken": {"secure": "v1:AAAA"},
        "cloudflare:email": "ops@example.com",
        "cloudflare:baseUrl": "https://api.cloudflare.com/client/v4",
        "cloudflare:userAgentOperatorSuffix": "ci",
        "pulumi:disable-default-providers": ["kubernetes"],
        "pulumi:autonaming": {"pattern": "${name}"},
    }
    assert load_stack_config(_project(tmp_path, config), "qa").account_id == ACCOUNT


def test_load_stack_config_lists_every_unknown_key_at_once(tmp_path: Path) -> None:
    config = {
        "jobmatch-ai:accountId": ACCOUNT,
        "jobmatch-ia:gateway": {},
        "cloudflare:apiTokn": {"secure": "v1:AAAA"},
        "jobmatch-ai:wroker": {},
    }
    with pytest.raises(ConfigError) as info:
        load_stack_config(_project(tmp_path, config), "qa")
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert [line.split(" in ")[0] for line in lines] == [
        "unknown config key 'cloudflare:apiTokn'",
        "unknown config key 'jobmatch-ai:wroker'",
        "unknown config namespace 'jobmatch-ia'",
    ]
    assert all(str(tmp_path / "Pulumi.qa.yaml") in line for line in lines)


def test_load_stack_config_caps_the_list_of_problems(tmp_path: Path) -> None:
    config = {"jobmatch-ai:accountId": ACCOUNT} | {f"ns{i}:key": 1 for i in range(30)}
    with pytest.raises(ConfigError) as info:
        load_stack_config(_project(tmp_path, config), "qa")
    lines = str(info.value).splitlines()
    assert len(lines) == 21 and lines[-1] == "and 10 more"


@pytest.mark.parametrize(
    ("values", "key", "suggestion", "valid"),
    [
        pytest.param(
            {"gateway": {"cacheTTL": 60}},
            "jobmatch-ai:gateway.cacheTTL = 60",
            "jobmatch-ai:gateway.cacheTtl",
            "allowDefaultId, api, authentication, cacheInvalidateOnUpdate, cacheTtl, collectLogs, id, logManagement, "
            "logManagementStrategy, rateLimiting, retry",
            id="gateway",
        ),
        pytest.param(
            {"gateway": {"rateLimiting": {"limit": 5, "interval": 60, "tecnique": "fixed"}}},
            "jobmatch-ai:gateway.rateLimiting.tecnique = 'fixed'",
            "jobmatch-ai:gateway.rateLimiting.technique",
            "interval, limit, technique",
            id="rate-limiting",
        ),
        pytest.param(
            {"worker": {"route": {"pattern": "a.example.com/*", "zoneId": ACCOUNT, "zone": "x"}}},
            "jobmatch-ai:worker.route.zone = 'x'",
            "jobmatch-ai:worker.route.zoneId",
            "pattern, zoneId",
            id="worker-route",
        ),
        pytest.param(
            {"dataPlane": {"customDomain": {"hostname": "kv.example.com", "hostnmae": "x"}}},
            "jobmatch-ai:dataPlane.customDomain.hostnmae = 'x'",
            "jobmatch-ai:dataPlane.customDomain.hostname",
            "hostname, zoneId",
            id="data-plane-domain",
        ),
        pytest.param(
            {"namespaces": {"protcet": True}},
            "jobmatch-ai:namespaces.protcet = true",
            "jobmatch-ai:namespaces.protect",
            "adopt, protect",
            id="namespaces",
        ),
        pytest.param(
            {"policies": {"embeddings": {"kvttl": 600}}},
            "jobmatch-ai:policies.embeddings.kvttl = 600",
            "jobmatch-ai:policies.embeddings.kv_ttl",
            "collect_log, direct_fallback, gateway, gateway_ttl, kv, kv_namespace, kv_ttl, scope, version",
            id="policy-field",
        ),
    ],
)
def test_stackconfig_names_an_unknown_nested_key_with_the_valid_keys_of_its_level(
    values: dict[str, Any], key: str, suggestion: str, valid: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _validate(**values)
    level = suggestion.rpartition(".")[0]
    assert str(info.value) == (
        f"stack config: {key}: unknown key; did you mean {suggestion!r}? Valid keys of {level}: {valid}"
    )


def test_stackconfig_lists_every_bad_nested_key_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        _validate(
            gateway={"cacheTTL": 60, "colectLogs": True, "rateLimiting": {"limt": 5}},
            worker={"compatibiltyDate": "2025-03-11"},
            policies={"embeddings": {"gatewayTtl": 60}},
        )
    lines = str(info.value).splitlines()
    assert [line.split(" = ")[0] for line in lines] == [
        "stack config: jobmatch-ai:gateway.rateLimiting.limt",
        "stack config: jobmatch-ai:gateway.cacheTTL",
        "stack config: jobmatch-ai:gateway.colectLogs",
        "stack config: jobmatch-ai:worker.compatibiltyDate",
        "stack config: jobmatch-ai:policies.embeddings.gatewayTtl",
    ]
    assert all("unknown key; did you mean" in line for line in lines)


def test_load_stack_config_names_the_file_in_a_nested_key_error(tmp_path: Path) -> None:
    config = {"jobmatch-ai:accountId": ACCOUNT, "jobmatch-ai:gateway": {"cacheTTL": 60}}
    with pytest.raises(ConfigError, match=r"^.*Pulumi\.qa\.yaml: jobmatch-ai:gateway\.cacheTTL = 60: unknown key"):
        load_stack_config(_project(tmp_path, config), "qa")


# -- types: booleans are not numbers, dates are dates, a rate needs a window -------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"gateway": {"cacheTtl": True}}, r"jobmatch-ai:gateway\.cacheTtl = true: a boolean", id="ttl"),
        pytest.param(
            {"gateway": {"rateLimiting": {"limit": True, "interval": 60}}},
            r"jobmatch-ai:gateway\.rateLimiting\.limit = true: a boolean where a whole number is expected",
            id="limit",
        ),
        pytest.param(
            {"gateway": {"rateLimiting": {"limit": 5, "interval": False}}},
            r"jobmatch-ai:gateway\.rateLimiting\.interval = false: a boolean",
            id="interval",
        ),
        pytest.param(
            {"gateway": {"logManagement": True}}, r"jobmatch-ai:gateway\.logManagement = true: a boolean", id="logs"
        ),
        pytest.param(
            {"policies": {"job_analysis": {"kv_ttl": True}}},
            r"jobmatch-ai:policies\.job_analysis\.kv_ttl = true: a boolean where a number of seconds is expected; "
            r".*kv: false",
            id="kv-ttl",
        ),
        pytest.param(
            {"policies": {"embeddings": {"gateway_ttl": False}}},
            r"jobmatch-ai:policies\.embeddings\.gateway_ttl = false: a boolean .*gateway: skip",
            id="gateway-ttl",
        ),
    ],
)
def test_stackconfig_never_reads_a_boolean_as_a_number(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _validate(**values)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        pytest.param({"gateway": {"collectLogs": 0}}, "gateway.collectLogs = 0", id="collect-logs"),
        pytest.param({"gateway": {"authentication": 1}}, "gateway.authentication = 1", id="authentication"),
        pytest.param({"namespaces": {"protect": 1}}, "namespaces.protect = 1", id="protect"),
        pytest.param({"worker": {"workersDev": 0}}, "worker.workersDev = 0", id="workers-dev"),
        pytest.param({"gateway": {"id": "default", "allowDefaultId": 1}}, "gateway.allowDefaultId = 1", id="opt-in"),
    ],
)
def test_stackconfig_never_reads_a_number_as_a_boolean(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _validate(**values)
    assert str(info.value) == (
        f"stack config: jobmatch-ai:{key}: a number where a boolean is expected; write true or false"
    )


def test_stackconfig_still_reads_booleans_and_their_strings() -> None:
    cfg = _validate(gateway={"collectLogs": "false", "authentication": True}, namespaces={"protect": "true"})
    assert (cfg.gateway.collect_logs, cfg.gateway.authentication, cfg.namespaces.protect) == (False, True, True)


def test_stackconfig_still_reads_numbers_and_digit_strings() -> None:
    cfg = _validate(gateway={"cacheTtl": "3600", "rateLimiting": {"limit": 10, "interval": 60.0}})
    rate = cfg.gateway.rate_limiting
    assert (cfg.gateway.cache_ttl, rate.limit, rate.interval) == (3600, 10, 60)


@pytest.mark.parametrize(
    ("date", "why"),
    [
        pytest.param("2025-13-11", "month must be in 1..12", id="month-13"),
        pytest.param("2025-02-30", "day is out of range for month", id="feb-30"),
        pytest.param("2025-04-31", "day is out of range for month", id="apr-31"),
        pytest.param("2023-02-29", "day is out of range for month", id="not-a-leap-year"),
    ],
)
@pytest.mark.parametrize("where", ["worker", "dataPlane"])
def test_stackconfig_refuses_a_compatibility_date_not_in_the_calendar(date: str, why: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        _validate(**{where: {"compatibilityDate": date}})
    assert str(info.value) == (
        f"stack config: jobmatch-ai:{where}.compatibilityDate = {date!r}: is not a calendar date ({why}); use "
        "YYYY-MM-DD, for example 2025-03-11"
    )


@pytest.mark.parametrize("date", ["2025-3-11", "20250311", "2025-03-11T00:00"])
def test_stackconfig_refuses_a_compatibility_date_of_another_shape(date: str) -> None:
    with pytest.raises(ConfigError, match=r"jobmatch-ai:worker\.compatibilityDate = .*String should match pattern"):
        _validate(worker={"compatibilityDate": date})


def test_stackconfig_accepts_a_leap_day() -> None:
    assert _validate(worker={"compatibilityDate": "2024-02-29"}).worker.compatibility_date == "2024-02-29"


def test_stackconfig_refuses_a_rate_limit_per_zero_seconds() -> None:
    with pytest.raises(ConfigError) as info:
        _validate(gateway={"rateLimiting": {"limit": 100, "interval": 0}})
    assert str(info.value).startswith(
        "stack config: jobmatch-ai:gateway.rateLimiting.interval = 0: a limit of 100 requests per 0 seconds is no "
        "rate; set interval"
    )
    with pytest.raises(ConfigError, match=r"rateLimiting\.interval = -60: Input should be greater than or equal to 0"):
        _validate(gateway={"rateLimiting": {"limit": 100, "interval": -60}})


@pytest.mark.parametrize(("limit", "interval", "enabled"), [(0, 0, False), (100, 60, True), (0, 60, False)])
def test_stackconfig_accepts_rate_limits_that_are_off_or_have_a_window(
    limit: int, interval: int, enabled: bool
) -> None:
    rate = _validate(gateway={"rateLimiting": {"limit": limit, "interval": interval}}).gateway.rate_limiting
    assert (rate.limit, rate.interval, rate.enabled) == (limit, interval, enabled)


# -- the gateway Cloudflare creates on its own -------------------------------------------------------------------


def test_stackconfig_refuses_the_default_gateway_id_unless_opted_in() -> None:
    with pytest.raises(ConfigError) as info:
        _validate(gateway={"id": "default"})
    message = str(info.value)
    assert message.startswith("stack config: jobmatch-ai:gateway.id = 'default': that is the gateway Cloudflare")
    assert "set gateway.allowDefaultId: true" in message and "jobmatch-ai-dev" in message
    with pytest.raises(ConfigError, match=r"gateway\.id = 'default'"):
        _validate(gateway={"id": "default", "allowDefaultId": False})


def test_stackconfig_accepts_the_default_gateway_id_when_opted_in_and_its_outputs_load() -> None:
    cfg = _validate(gateway={"id": "default", "allowDefaultId": True})
    assert (cfg.gateway_id, cfg.gateway.allow_default_id) == ("default", True)
    # The outputs such a stack exports name `default`; services load them as any others.
    outputs = StackOutputs.from_data(
        {
            "stack": "dev",
            "account_id": ACCOUNT,
            "gateway_id": cfg.gateway_id,
            "namespaces": {b.value: cfg.offline_namespace_id(b) for b in Namespace},
            "worker_name": cfg.worker_name,
        }
    )
    assert outputs.gateway_id == "default"


def test_stackconfig_opt_in_alone_changes_nothing() -> None:
    cfg = _validate(gateway={"allowDefaultId": True})
    assert cfg.gateway_id == "jobmatch-ai-dev"
