"""``dualcache plan | outputs | wrangler`` (the project's ``infra.cli``) and the snapshots they keep current."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from _infra_support import ACCOUNT, REPO, STACKS, StackWriter, base_config

from dualcache import ConfigError, Namespace, StackOutputs, load_stack_config
from infra.cli import WRANGLER_SPLIT_MARKER, plan_manifest, plan_warnings, register, render_plan_text
from infra.plan import PlanResult, manifest_json


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dualcache")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def _copy_project(tmp_path: Path) -> Path:
    for name in ("Pulumi.yaml", *(f"Pulumi.{s}.yaml" for s in STACKS)):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "infra" / "snapshots", tmp_path / "infra" / "snapshots")
    return tmp_path


def _outputs(stack: str = "dev") -> StackOutputs:
    ids = {b: f"{i:032x}" for i, b in enumerate(Namespace, start=1)}
    return StackOutputs(
        stack=stack,
        account_id=ACCOUNT,
        gateway_id=f"jobmatch-ai-{stack}",
        namespaces=ids,
        worker_name=f"jobmatch-ai-api-{stack}",
    )


# -- plan -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_plan_check_snapshot_is_current(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["plan", "--stack", stack, "--check", "--project-dir", str(REPO)]) == 0, capsys.readouterr().out


def test_plan_check_fails_with_a_unified_diff_when_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _copy_project(tmp_path)
    snapshot = project / "infra" / "snapshots" / "staging.json"
    snapshot.write_text(snapshot.read_text().replace('"cacheTtl": 3600', '"cacheTtl": 7200'))
    assert _run(["plan", "--stack", "staging", "--check", "--project-dir", str(project)]) == 1
    captured = capsys.readouterr()
    assert '-        "cacheTtl": 7200,' in captured.out
    assert '+        "cacheTtl": 3600,' in captured.out
    assert "is stale" in captured.err and "--write" in captured.err
    assert _run(["plan", "--stack", "staging", "--write", "--project-dir", str(project)]) == 0
    assert snapshot.read_text() == (REPO / "infra" / "snapshots" / "staging.json").read_text()
    assert _run(["plan", "--stack", "staging", "--check", "--project-dir", str(project)]) == 0


def test_plan_json_prints_the_manifest(plans: dict[str, PlanResult], capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["plan", "--stack", "prod", "--json", "--project-dir", str(REPO)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest == plans["prod"].manifest()
    assert set(manifest) == {"stack", "resources", "outputs"}
    for resource in manifest["resources"]:
        assert set(resource) == {"type", "name", "inputs", "protect", "import"}
    assert [(r["type"], r["name"]) for r in manifest["resources"]] == sorted(
        (r["type"], r["name"]) for r in manifest["resources"]
    )


def test_plan_manifest_matches_the_committed_snapshot_byte_for_byte() -> None:
    manifest = plan_manifest("dev", REPO)
    assert manifest_json(manifest) == (REPO / "infra" / "snapshots" / "dev.json").read_text(encoding="utf-8")


def test_plan_text_shows_resources_protection_import_and_outputs(plans: dict[str, PlanResult]) -> None:
    text = render_plan_text(plans["prod"].manifest())
    assert "+ ai-gateway  (cloudflare:index/aiGateway:AiGateway)" in text
    assert f"[protect, import {ACCOUNT}/fedcba9876543210fedcba9876543210]" in text
    assert text.count("[protect") == 6
    assert "AI_GATEWAY_SLUG        plain_text    jobmatch-ai-prod" in text
    assert "embeddings             kv 2592000s in EMBEDDINGS_CACHE; gateway cache 3600s" in text
    assert "export default" not in text  # the Worker source is summarised, not printed


def test_plan_text_shows_secrets_masked(write_stack: StackWriter, capsys: pytest.CaptureFixture[str]) -> None:
    project = write_stack(base_config() | {"jobmatch-ai:gatewayToken": {"secure": "v1:c2VjcmV0"}})
    assert _run(["plan", "--stack", "test", "--project-dir", str(project)]) == 0
    out = capsys.readouterr().out
    assert "CF_AIG_TOKEN           secret_text   [secret]" in out
    assert "v1:c2VjcmV0" not in out and "placeholder" not in out


def test_plan_warns_about_a_missing_token_and_workers_dev_subdomain(
    write_stack: StackWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_stack(base_config())
    assert _run(["plan", "--stack", "test", "--project-dir", str(project)]) == 0
    out = capsys.readouterr().out
    # Runs without the token, binds a stand-in shown as [secret], and says what a real preview/up needs.
    assert "DUALCACHE_TOKEN        secret_text   [secret]" in out
    assert "! jobmatch-ai:dataPlaneToken is not set" in out
    assert "pulumi config set --secret jobmatch-ai:dataPlaneToken" in out
    assert "! data_plane_url is null" in out and "      data_plane_url: null" in out
    assert "stand-in-for" not in out

    complete = base_config() | {
        "jobmatch-ai:dataPlaneToken": {"secure": "v1:dG9rZW4="},
        "jobmatch-ai:workersDevSubdomain": "acme",
    }
    assert plan_warnings(load_stack_config(write_stack(complete), "test")) == []
    assert _run(["plan", "--stack", "test", "--project-dir", str(project)]) == 0
    out = capsys.readouterr().out
    assert "Warnings:" not in out
    assert "      data_plane_url: https://jobmatch-ai-dualcache-test.acme.workers.dev" in out
    assert "      data_plane_worker_name: jobmatch-ai-dualcache-test" in out


_OFFLINE = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network use in the offline plan")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
from infra.cli import main
sys.exit(main(["plan", "--stack", sys.argv[1], "--json"]))
"""


def test_plan_needs_no_pulumi_cli_home_credentials_or_network(tmp_path: Path) -> None:
    stack = "prod"
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": str(tmp_path / "empty-bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "runtime"), str(REPO)])  # this checkout, not an installed copy
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE, stack], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (REPO / "infra" / "snapshots" / f"{stack}.json").read_text(encoding="utf-8")
    assert list(home.iterdir()) == []  # no ~/.pulumi, no credentials looked up or written


def test_plan_rejects_a_project_dir_without_pulumi_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no Pulumi.yaml"):
        _run(["plan", "--stack", "dev", "--project-dir", str(tmp_path)])


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["--json", "--check"], id="json-check"),
        pytest.param(["--diff", "base.json", "--write"], id="diff-write"),
        pytest.param(["--diff", "base.json", "--against", "main"], id="diff-against"),
    ],
)
def test_plan_modes_are_mutually_exclusive(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _run(["plan", "--stack", "dev", *extra])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- outputs ------------------------------------------------------------------------------------------------


def _fake_pulumi(bin_dir: Path, stdout: str, status: int = 0) -> Path:
    """A `pulumi` executable that records its arguments and prints ``stdout``."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "stdout.txt").write_text(stdout)
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{bin_dir}/args.txt"\n'
        f'cat "{bin_dir}/stdout.txt"\n'
        f'[ {status} -eq 0 ] || echo "error: no stack named dev found" >&2\n'
        f"exit {status}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_outputs_without_the_pulumi_cli_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"Pulumi CLI \(`pulumi`\) is not on PATH; install.*get\.pulumi\.com"):
        _run(["outputs", "--stack", "dev", "--project-dir", str(REPO)])


def test_outputs_writes_the_validated_stack_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _outputs("dev")
    bin_dir = _fake_pulumi(tmp_path / "bin", expected.to_json())
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out.json"
    assert _run(["outputs", "--stack", "dev", "--out", str(out), "--project-dir", str(REPO)]) == 0
    assert (bin_dir / "args.txt").read_text().split() == ["stack", "output", "dualcache", "--json", "--stack", "dev"]
    assert StackOutputs.load(out) == expected
    assert str(out) in capsys.readouterr().out


def test_outputs_reports_a_failing_pulumi_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _fake_pulumi(tmp_path / "bin", "", status=255)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ConfigError, match=r"exit status 255: error: no stack named dev found.*pulumi up -s dev"):
        _run(["outputs", "--stack", "dev", "--project-dir", str(REPO)])


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        pytest.param('"[secret]"', r"not a valid dualcache StackOutputs", id="secret-output"),
        pytest.param("{not json", r"is not JSON", id="not-json"),
        pytest.param(_outputs("prod").to_json(), r"says stack 'prod', but --stack is 'dev'", id="other-stack"),
    ],
)
def test_outputs_rejects_what_is_not_this_stacks_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout: str, message: str
) -> None:
    monkeypatch.setenv("PATH", f"{_fake_pulumi(tmp_path / 'bin', stdout)}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ConfigError, match=message):
        _run(["outputs", "--stack", "dev", "--out", str(tmp_path / "o.json"), "--project-dir", str(REPO)])
    assert not (tmp_path / "o.json").exists()


# -- wrangler -----------------------------------------------------------------------------------------------


def test_wrangler_uses_ids_from_an_outputs_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = _outputs("prod")
    path = tmp_path / "outputs.prod.json"
    outputs.dump(path)
    argv = ["wrangler", "--stack", "prod", "--outputs", str(path), "--project-dir", str(REPO), "--worker", "api"]
    assert _run(argv) == 0
    doc = tomllib.loads(capsys.readouterr().out)
    assert set(doc) == {"env"}
    env = doc["env"]["prod"]
    assert (env["name"], env["account_id"], env["compatibility_date"]) == (
        "jobmatch-ai-api-prod",
        ACCOUNT,
        "2025-03-11",
    )
    assert env["workers_dev"] is False
    assert env["kv_namespaces"] == [{"binding": b.value, "id": outputs.namespace_id(b)} for b in Namespace]
    assert env["ai"] == {"binding": "AI"}
    assert env["vars"] == {"AI_GATEWAY_SLUG": "jobmatch-ai-prod", "CLOUDFLARE_ACCOUNT_ID": ACCOUNT}
    assert "OPENAI_API_KEY" not in env["vars"] and "CF_AIG_TOKEN" not in env["vars"]


def test_wrangler_uses_ids_from_the_plan_without_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["wrangler", "--stack", "staging", "--project-dir", str(REPO)]) == 0
    text = capsys.readouterr().out
    api, data_plane = _split_wrangler(text)
    env = tomllib.loads(api)["env"]["staging"]
    assert {ns["binding"]: ns["id"] for ns in tomllib.loads(data_plane)["kv_namespaces"]} == {
        b.value: cfg_id for b, cfg_id in _plan_ids("staging").items()
    }
    cfg = load_stack_config(REPO, "staging")
    assert {ns["binding"]: ns["id"] for ns in env["kv_namespaces"]} == {
        b.value: cfg.offline_namespace_id(b) for b in Namespace
    }
    assert "from the offline plan" in text
    assert "wrangler secret put OPENAI_API_KEY --env staging" in text


def test_wrangler_writes_route_and_custom_domain(write_stack: StackWriter, capsys: pytest.CaptureFixture[str]) -> None:
    zone = "22222222222222222222222222222222"
    worker = {"route": {"pattern": "api.example.com/*", "zoneId": zone}, "customDomain": {"hostname": "x.example.com"}}
    project = write_stack(base_config() | {"jobmatch-ai:worker": worker}, stack="dev")
    outputs = tmp = project / "o.json"
    _outputs("dev").dump(tmp)
    assert _run(["wrangler", "--stack", "dev", "--outputs", str(outputs), "--project-dir", str(project)]) == 0
    env = tomllib.loads(_split_wrangler(capsys.readouterr().out)[0])["env"]["dev"]
    assert env["routes"] == [
        {"pattern": "api.example.com/*", "zone_id": zone},
        {"pattern": "x.example.com", "custom_domain": True},
    ]


def _split_wrangler(text: str) -> tuple[str, str]:
    """The two TOML documents `dualcache wrangler` prints by default: the API section, the data plane's file."""
    api, marker, rest = text.partition(WRANGLER_SPLIT_MARKER)
    assert marker, text
    return api, rest.split("\n", 1)[1]


def _plan_ids(stack: str) -> dict[Namespace, str]:
    cfg = load_stack_config(REPO, stack)
    return {b: cfg.offline_namespace_id(b) for b in Namespace}


def test_wrangler_prints_the_data_plane_config_with_six_namespaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = _outputs("prod")
    path = tmp_path / "outputs.prod.json"
    outputs.dump(path)
    argv = ["wrangler", "--stack", "prod", "--outputs", str(path), "--project-dir", str(REPO)]
    assert _run([*argv, "--worker", "data-plane"]) == 0
    text = capsys.readouterr().out
    doc = tomllib.loads(text)
    assert (doc["name"], doc["main"], doc["account_id"], doc["compatibility_date"]) == (
        "jobmatch-ai-dualcache-prod",
        "infra/worker/dataplane.js",
        ACCOUNT,
        "2025-03-11",
    )
    assert (REPO / doc["main"]).is_file()
    assert doc["workers_dev"] is True and "routes" not in doc
    assert doc["kv_namespaces"] == [{"binding": b.value, "id": outputs.namespace_id(b)} for b in Namespace]
    assert doc["ai"] == {"binding": "AI"}
    assert doc["vars"] == {"AI_GATEWAY_SLUG": "jobmatch-ai-prod", "CLOUDFLARE_ACCOUNT_ID": ACCOUNT}
    assert "DUALCACHE_TOKEN" not in doc["vars"]
    assert "#   wrangler secret put DUALCACHE_TOKEN -c wrangler.dataplane.toml" in text
    # Both at once: the same data-plane document follows the API section.
    assert _run(argv) == 0
    api, data_plane = _split_wrangler(capsys.readouterr().out)
    assert tomllib.loads(data_plane) == doc
    assert tomllib.loads(api)["env"]["prod"]["name"] == "jobmatch-ai-api-prod"


def test_wrangler_data_plane_follows_its_route_domain_and_workers_dev(
    write_stack: StackWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    zone = "33333333333333333333333333333333"
    data_plane = {
        "name": "kv-plane",
        "route": {"pattern": "kv.example.com/*", "zoneId": zone},
        "customDomain": {"hostname": "cache.example.com"},
    }
    project = write_stack(base_config() | {"jobmatch-ai:dataPlane": data_plane}, stack="dev")
    outputs = project / "o.json"
    _outputs("dev").dump(outputs)
    argv = ["wrangler", "--stack", "dev", "--outputs", str(outputs), "--project-dir", str(project)]
    assert _run([*argv, "--worker", "data-plane"]) == 0
    text = capsys.readouterr().out
    doc = tomllib.loads(text)
    assert doc["name"] == "kv-plane"  # the outputs file predates the data plane: the name comes from config
    assert doc["workers_dev"] is False
    assert doc["routes"] == [
        {"pattern": "kv.example.com/*", "zone_id": zone},
        {"pattern": "cache.example.com", "custom_domain": True},
    ]
    assert "# URL (data_plane_url): https://cache.example.com" in text


def test_wrangler_rejects_outputs_of_another_stack(tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    _outputs("dev").dump(path)
    with pytest.raises(ConfigError, match=r"outputs of stack 'dev', not 'prod'"):
        _run(["wrangler", "--stack", "prod", "--outputs", str(path), "--project-dir", str(REPO)])


# -- import cost ----------------------------------------------------------------------------------------------


def test_import_dualcache_does_not_import_pulumi() -> None:
    code = (
        "import sys, dualcache, dualcache._cli\n"
        "dualcache._cli._build_parser()\n"  # every command module of the runtime's CLI
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'pulumi', 'pulumi_cloudflare', 'infra'})\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
