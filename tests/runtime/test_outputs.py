"""StackOutputs: the outputs contract loaded from a file, the environment, or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dualcache import ConfigError, Namespace, Policies, StackOutputs

ACCOUNT = "0123456789abcdef0123456789abcdef"


def _data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "stack": "dev",
        "account_id": ACCOUNT,
        "gateway_id": "jobmatch-ai-dev",
        "namespaces": {b.value: f"{i:032x}" for i, b in enumerate(Namespace, start=1)},
        "worker_name": "jobmatch-ai-api-dev",
    }
    data.update(changes)
    return data


def test_outputs_defaults_base_urls_and_policies() -> None:
    outputs = StackOutputs.from_data(_data())
    assert outputs.api_base_url == "https://api.cloudflare.com/client/v4"
    assert outputs.gateway_base_url == "https://gateway.ai.cloudflare.com/v1"
    assert outputs.policies == Policies()
    assert outputs.namespace_id("API_CACHE") == f"{6:032x}"


def test_outputs_round_trip_through_a_file(tmp_path: Path) -> None:
    outputs = StackOutputs.from_data(_data(gateway_base_url="http://127.0.0.1:8787/v1/"))
    path = tmp_path / "outputs.dev.json"
    outputs.dump(path)
    assert StackOutputs.load(path) == outputs
    assert json.loads(path.read_text())["gateway_base_url"] == "http://127.0.0.1:8787/v1"


def test_outputs_dump_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "outputs.dev.json"
    path.write_text("{half a file", encoding="utf-8")
    outputs = StackOutputs.from_data(_data())
    outputs.dump(path)
    assert StackOutputs.load(path) == outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs.dev.json"]


def test_outputs_from_env_reads_a_path_or_the_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "o.json"
    path.write_text(json.dumps(_data(stack="staging")))
    monkeypatch.setenv("DUALCACHE_OUTPUTS", str(path))
    assert StackOutputs.from_env().stack == "staging"
    monkeypatch.setenv("DUALCACHE_OUTPUTS", json.dumps(_data(stack="prod")))
    assert StackOutputs.from_env().stack == "prod"


def test_outputs_from_env_unset_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUALCACHE_OUTPUTS", raising=False)
    with pytest.raises(ConfigError, match=r"DUALCACHE_OUTPUTS is not set; .*dualcache outputs"):
        StackOutputs.from_env()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"account_id": "ABC"}, r"account_id: account_id 'ABC' is not 32 lowercase hex", id="account-id"),
        pytest.param(
            {"namespaces": {"SESSIONS": "a" * 32}}, r"namespaces: namespaces is missing RATE_LIMITS", id="missing-ns"
        ),
        pytest.param(
            {"api_base_url": "ftp://x"}, r"api_base_url: api_base_url 'ftp://x' is not an http\(s\) URL", id="url"
        ),
        pytest.param({"secret": "x"}, r"secret: Extra inputs are not permitted", id="extra-field"),
        pytest.param({"gateway_id": ""}, r"gateway_id", id="empty-gateway-id"),
        pytest.param(
            {"gateway_id": "JobMatch-AI--Dev-"},
            r"gateway_id: String should match pattern '\^\[a-z0-9_\]\+\(\?:-\[a-z0-9_\]\+\)\*\$'",
            id="gateway-id-against-the-schema-pattern",
        ),
        pytest.param({"gateway_id": "g" * 65}, r"gateway_id: String should have at most 64", id="gateway-id-too-long"),
    ],
)
def test_outputs_rejects_invalid_data_naming_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StackOutputs.from_data(_data(**changes))


def test_outputs_load_reports_missing_files_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"outputs file .*nope\.json.* does not exist"):
        StackOutputs.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('"[secret]"')
    with pytest.raises(ConfigError, match=r"bad\.json is not a valid dualcache StackOutputs"):
        StackOutputs.load(bad)


def test_outputs_namespace_id_rejects_unknown_bindings() -> None:
    with pytest.raises(ConfigError, match=r"unknown namespace binding 'CACHE'; valid bindings: SESSIONS"):
        StackOutputs.from_data(_data()).namespace_id("CACHE")
