"""The bundled health Worker (infra/worker/health.js), run with Node against fake bindings."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _infra_support import REPO

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed; the health Worker is JavaScript")

_HARNESS = """
import worker from "./worker.mjs";

function kv(broken) {
  const data = new Map();
  return {
    async get(key) { if (broken) throw new Error("KV GET failed: 503"); return data.has(key) ? data.get(key) : null; },
    async put(key, value, options) { if (options.expirationTtl < 60) throw new Error("ttl"); data.set(key, value); },
    async delete(key) { data.delete(key); },
  };
}

const scenario = JSON.parse(process.argv[2]);
const calls = [];
const env = {
  AI_GATEWAY_SLUG: "jobmatch-ai-dev",
  CLOUDFLARE_ACCOUNT_ID: "0123456789abcdef0123456789abcdef",
  AI: {
    aiGatewayLogId: "01JADMCQQQBWH3NXZ5GCRN98DP",
    async run(model, inputs, options) {
      calls.push({ model, inputs, options });
      if (scenario.aiFails) throw new Error("AiError: gateway rejected the request");
      return { shape: [1, 768], data: [new Array(768).fill(0.1)] };
    },
  },
};
for (const name of ["SESSIONS", "RATE_LIMITS", "OAUTH_STATES", "JOB_ANALYSIS_CACHE", "EMBEDDINGS_CACHE", "API_CACHE"]) {
  if (!(scenario.missing || []).includes(name)) env[name] = kv(scenario.kvBroken);
}
Object.assign(env, scenario.extraEnv || {});
const response = await worker.fetch(new Request(scenario.url, { method: scenario.method || "GET" }), env);
console.log(JSON.stringify({ status: response.status, body: await response.json(), calls }));
"""


def _run(tmp_path: Path, **scenario: Any) -> dict[str, Any]:
    shutil.copy(REPO / "infra" / "worker" / "health.js", tmp_path / "worker.mjs")
    (tmp_path / "harness.mjs").write_text(_HARNESS)
    scenario.setdefault("url", "https://api.example.com/health")
    assert NODE is not None
    proc = subprocess.run(
        [NODE, str(tmp_path / "harness.mjs"), json.dumps(scenario)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_health_worker_reports_ok_when_bindings_kv_and_gateway_work(tmp_path: Path) -> None:
    result = _run(tmp_path, extraEnv={"OPENAI_API_KEY": "sk-test"})
    body = result["body"]
    assert result["status"] == 200 and body["ok"] is True
    assert all(body["bindings"].values()) and len(body["bindings"]) == 9
    assert body["secrets"] == {"OPENAI_API_KEY": True, "CF_AIG_TOKEN": False}
    assert "sk-test" not in json.dumps(body)
    assert body["checks"]["kv"]["ok"] is True
    assert body["checks"]["gateway"]["dimensions"] == 768
    (call,) = result["calls"]
    assert call["model"] == "@cf/baai/bge-base-en-v1.5"
    assert call["options"]["gateway"]["id"] == "jobmatch-ai-dev"
    assert call["options"]["gateway"]["skipCache"] is True


def test_health_worker_reports_missing_bindings_and_failed_checks(tmp_path: Path) -> None:
    result = _run(tmp_path, missing=["SESSIONS", "API_CACHE"], aiFails=True)
    body = result["body"]
    assert result["status"] == 503 and body["ok"] is False
    assert (body["bindings"]["SESSIONS"], body["bindings"]["API_CACHE"], body["bindings"]["RATE_LIMITS"]) == (
        False,
        False,
        True,
    )
    assert body["checks"]["kv"] == {"ok": False, "ms": body["checks"]["kv"]["ms"], "error": "API_CACHE is not bound"}
    assert "gateway rejected" in body["checks"]["gateway"]["error"]


def test_health_worker_reports_a_failing_kv_read(tmp_path: Path) -> None:
    body = _run(tmp_path, kvBroken=True)["body"]
    assert body["checks"]["kv"]["ok"] is False and "KV GET failed" in body["checks"]["kv"]["error"]
    assert body["checks"]["gateway"]["ok"] is True


def test_health_worker_skips_probes_when_asked(tmp_path: Path) -> None:
    result = _run(tmp_path, url="https://api.example.com/health?probes=0")
    assert result["status"] == 200 and result["body"]["checks"] == {}
    assert result["calls"] == []


@pytest.mark.parametrize(
    ("url", "method", "status"),
    [
        pytest.param("https://api.example.com/", "GET", 404, id="other-path"),
        pytest.param("https://api.example.com/health", "POST", 405, id="post"),
    ],
)
def test_health_worker_answers_only_get_health(tmp_path: Path, url: str, method: str, status: int) -> None:
    assert _run(tmp_path, url=url, method=method)["status"] == status
