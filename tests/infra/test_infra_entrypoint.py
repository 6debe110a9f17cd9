"""infra/__main__.py run the way the Pulumi CLI's Python host runs it (config from PULUMI_CONFIG, runpy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _infra_support import ACCOUNT, REPO

# A real deployment refuses the committed placeholder (ACCOUNT), so the host runs get another id.
USER_ACCOUNT = "abcdef0123456789abcdef0123456789"

# What pulumi-language-python-exec does: config from the environment, then run_in_stack(runpy.run_path(dir)),
# here with the mock monitor instead of the engine. Runs in a subprocess from another directory, so that
# neither the cwd nor this test's sys.path can make the imports work by accident.
_HOST = """
import asyncio, hashlib, json, runpy, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import pulumi, pulumi.runtime
from pulumi.runtime import mocks

class Mocks(mocks.Mocks):
    def new_resource(self, args):
        # A 32-hex id, the format Cloudflare gives namespaces (the stack output refuses any other).
        return hashlib.md5(args.name.encode()).hexdigest(), dict(args.inputs)
    def call(self, args):
        return {}, None

program = sys.argv[1]
sys.path[0] = program
pulumi.runtime.set_all_config(pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env())
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
monitor = mocks.MockMonitor(Mocks())
mocks.set_mocks(monitor.mocks, project="jobmatch-ai", stack="dev", preview=False, monitor=monitor)
try:
    loop.run_until_complete(pulumi.runtime.stack.run_pulumi_func(lambda: runpy.run_path(program, run_name="__main__")))
except pulumi.RunError as exc:
    print("RUNERROR", exc)
    sys.exit(3)
out = pulumi.runtime.get_root_resource().outputs["dualcache"]
print(json.dumps({
    "types": sorted(r.urn.split("::")[2] for r in monitor.resources.values()),
    "dualcache": loop.run_until_complete(out.future()),
}))
"""


# What a real run needs of the data plane: the token (a secret, decrypted by the host) and a known URL.
TOKEN_KEY = "jobmatch-ai:dataPlaneToken"
TOKEN = "3f9c1b7e5a2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c"
DATA_PLANE = {TOKEN_KEY: TOKEN, "jobmatch-ai:workersDevSubdomain": "acme"}


def _run_host(
    tmp_path: Path, config: dict[str, str], secret_keys: tuple[str, ...] = (TOKEN_KEY,)
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    env |= {"PULUMI_CONFIG": json.dumps(config), "PULUMI_CONFIG_SECRET_KEYS": json.dumps(list(secret_keys))}
    env["PYTHONPATH"] = ""
    return subprocess.run(
        [sys.executable, "-c", _HOST, str(REPO / "infra")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_entrypoint_runs_the_program_from_the_language_host(tmp_path: Path) -> None:
    config = {"jobmatch-ai:accountId": USER_ACCOUNT, "jobmatch-ai:gateway": json.dumps({"cacheTtl": 600})}
    proc = _run_host(tmp_path, config | DATA_PLANE)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["dualcache"]["gateway_id"] == "jobmatch-ai-dev"
    assert result["dualcache"]["account_id"] == USER_ACCOUNT
    assert result["dualcache"]["data_plane_url"] == "https://jobmatch-ai-dualcache-dev.acme.workers.dev"
    assert result["dualcache"]["data_plane_worker_name"] == "jobmatch-ai-dualcache-dev"
    assert TOKEN not in proc.stdout + proc.stderr
    assert "dualcache:infra:DataPlaneWorker$cloudflare:index/workersScript:WorkersScript" in result["types"]
    assert (
        result["types"].count("dualcache:infra:KvNamespaces$cloudflare:index/workersKvNamespace:WorkersKvNamespace")
        == 6
    )


def test_entrypoint_reports_bad_config_as_a_run_error(tmp_path: Path) -> None:
    config = {"jobmatch-ai:accountId": USER_ACCOUNT, "jobmatch-ai:gateway": json.dumps({"cacheTtl": 5})}
    proc = _run_host(tmp_path, config | DATA_PLANE)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "RUNERROR stack 'dev': jobmatch-ai:gateway.cacheTtl = 5" in proc.stdout


def test_entrypoint_refuses_the_placeholder_account_id(tmp_path: Path) -> None:
    proc = _run_host(tmp_path, {"jobmatch-ai:accountId": ACCOUNT})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"RUNERROR stack 'dev': jobmatch-ai:accountId is still the placeholder '{ACCOUNT}'" in proc.stdout
    assert "pulumi config set accountId <32-hex id> -s dev" in proc.stdout


def test_entrypoint_refuses_the_placeholder_namespace_to_adopt(tmp_path: Path) -> None:
    adopt = {"adopt": {"JOB_ANALYSIS_CACHE": "fedcba9876543210fedcba9876543210"}}
    config = {"jobmatch-ai:accountId": USER_ACCOUNT, "jobmatch-ai:namespaces": json.dumps(adopt)}
    proc = _run_host(tmp_path, config | DATA_PLANE)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "jobmatch-ai:namespaces.adopt.JOB_ANALYSIS_CACHE is still the placeholder" in proc.stdout


def test_entrypoint_refuses_to_deploy_without_the_data_plane_token(tmp_path: Path) -> None:
    config = {"jobmatch-ai:accountId": USER_ACCOUNT, "jobmatch-ai:workersDevSubdomain": "acme"}
    proc = _run_host(tmp_path, config, secret_keys=())
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "RUNERROR stack 'dev': jobmatch-ai:dataPlaneToken is not set" in proc.stdout
    assert 'pulumi config set --secret jobmatch-ai:dataPlaneToken "$(openssl rand -hex 32)" -s dev' in proc.stdout


def test_entrypoint_refuses_a_data_plane_token_in_plain_text(tmp_path: Path) -> None:
    proc = _run_host(tmp_path, {"jobmatch-ai:accountId": USER_ACCOUNT, **DATA_PLANE}, secret_keys=())
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "RUNERROR stack 'dev': jobmatch-ai:dataPlaneToken is in plain text" in proc.stdout
    assert "pulumi config set --secret jobmatch-ai:dataPlaneToken" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr


def test_entrypoint_refuses_a_short_data_plane_token_without_showing_it(tmp_path: Path) -> None:
    short = "hunter2hunter2"
    proc = _run_host(tmp_path, {"jobmatch-ai:accountId": USER_ACCOUNT, **DATA_PLANE, TOKEN_KEY: short})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "jobmatch-ai:dataPlaneToken is shorter than 32 characters" in proc.stdout
    assert short not in proc.stdout + proc.stderr


def test_entrypoint_refuses_a_data_plane_on_workers_dev_without_the_subdomain(tmp_path: Path) -> None:
    proc = _run_host(tmp_path, {"jobmatch-ai:accountId": USER_ACCOUNT, TOKEN_KEY: TOKEN})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "workersDevSubdomain is not set, so its URL (the data_plane_url output) is unknown" in proc.stdout
    # A custom domain gives the URL without the subdomain.
    domain = json.dumps({"customDomain": {"hostname": "kv.example.com"}})
    config = {"jobmatch-ai:accountId": USER_ACCOUNT, TOKEN_KEY: TOKEN, "jobmatch-ai:dataPlane": domain}
    proc = _run_host(tmp_path, config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["dualcache"]["data_plane_url"] == "https://kv.example.com"
