"""The offline demo: a small workload end to end, with its totals checked against the emulator's counters."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import PROJECT_DIR

from dualcache import PriceTable
from dualcache._cli import main
from dualcache._demo import DAILY_VOLUME, build_workload, kv_requests, minimal_pdf, planned_requests, run_demo
from dualcache._exceptions import ConfigError
from dualcache._pdf import extract_pdf_text

LLAMA_8B = "@cf/meta/llama-3.1-8b-instruct"


def _counts(snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A snapshot without its latency figures: the counts a replay reproduces (timings never repeat)."""
    return {op: {k: v for k, v in row.items() if k != "latency"} for op, row in snapshot.items()}


def test_demo_workload_is_deterministic_and_shaped_like_the_daily_volume() -> None:
    assert build_workload(5, 2) == build_workload(5, 2)
    assert build_workload(5, 1) != build_workload(6, 1)
    planned = planned_requests(build_workload(5, 1))
    assert planned == {
        "embeddings": DAILY_VOLUME["embed_job"] + DAILY_VOLUME["embed_resume"],
        "job_analysis": 200,
        "application_generation": 100,
        "resume_parsing": 30,
        "spam_detection": 50,
    }
    assert planned_requests(build_workload(5, 3))["job_analysis"] == 600


def test_demo_minimal_pdf_is_readable_by_pypdf() -> None:
    assert extract_pdf_text(minimal_pdf(["Ada user-001 - resume v1", "Skills: Python (and Go)"])) == (
        "Ada user-001 - resume v1\nSkills: Python (and Go)"
    )


def test_demo_small_run_totals_are_consistent() -> None:
    result = run_demo(seed=3, days=2, project_dir=PROJECT_DIR, scale=0.1)
    snap, emu, prices = result.snapshot, result.emulator, PriceTable()
    assert {op: c["requests"] for op, c in snap.items()} == result.planned
    for op, c in snap.items():
        served = c["kv_hits"] + c["gateway_hits"] + c["provider_calls"] + c["coalesced"]
        assert (served, c["failures"], c["errors"]) == (c["requests"], 0, 0), op
        price = getattr(prices, op)
        assert c["cost"] == pytest.approx(c["provider_calls"] * price), op
        assert c["saved"] == pytest.approx((c["requests"] - c["provider_calls"]) * price), op
    up = emu["upstream"]
    assert up[LLAMA_8B] == snap["job_analysis"]["provider_calls"] + snap["spam_detection"]["provider_calls"]
    assert up["gpt-4o-mini"] == snap["application_generation"]["provider_calls"]
    assert up["gpt-4o"] + up["@cf/meta/llama-3.3-70b-instruct-fp8-fast"] == snap["resume_parsing"]["provider_calls"]
    assert up["@cf/baai/bge-base-en-v1.5"] == snap["embeddings"]["upstream_requests"]
    assert emu["gateway"]["hits"] == sum(c["gateway_hits"] for c in snap.values())
    assert emu["direct"] == {}
    # Reuse shows up: KV hits for embeddings and analyses, bursts coalesced.
    assert snap["embeddings"]["kv_hits"] > 0 and snap["job_analysis"]["kv_hits"] > 0
    assert snap["embeddings"]["coalesced"] > 0
    # KV went through the data plane only: no Cloudflare API request at all (AI calls go to the gateway).
    assert result.kv == "dataplane"
    kv = kv_requests(emu)
    assert kv["rest"] == 0 and emu["surfaces"]["api"] == 0
    assert kv["dataplane"] > 0 and kv["dataplane"] == emu["surfaces"]["data_plane"]
    assert emu["data_plane"]["unauthorized"] == 0
    again = run_demo(seed=3, days=2, project_dir=PROJECT_DIR, scale=0.1)
    assert _counts(again.snapshot) == _counts(snap)


def test_demo_over_rest_sends_every_kv_request_to_the_cloudflare_api() -> None:
    plane = run_demo(seed=4, days=1, project_dir=PROJECT_DIR, scale=0.05)
    rest = run_demo(seed=4, days=1, project_dir=PROJECT_DIR, scale=0.05, kv="rest")
    assert rest.kv == "rest"
    kv = kv_requests(rest.emulator)
    assert kv["dataplane"] == 0 and rest.emulator["surfaces"]["data_plane"] == 0
    assert kv["rest"] > 0 and kv["rest"] == rest.emulator["surfaces"]["api"]
    # Same workload, same outcomes, whichever path KV takes; the data plane took the REST API's place.
    assert _counts(rest.snapshot) == _counts(plane.snapshot)
    assert kv["rest"] == kv_requests(plane.emulator)["dataplane"]


def test_demo_rejects_an_unknown_kv_path() -> None:
    with pytest.raises(ConfigError, match="kv='grpc': must be one of dataplane, rest"):
        run_demo(seed=1, days=1, project_dir=PROJECT_DIR, kv="grpc")


def test_demo_command_prints_plan_and_tables(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--seed", "1", "--scale", "0.05", "--project-dir", str(PROJECT_DIR)])
    out = capsys.readouterr().out
    assert status == 0
    assert "Plan of stack 'dev'" in out
    assert "Traffic, 1 day(s)" in out and "Cost (US$)" in out
    assert "job_analysis" in out and "65-75%" in out
    assert "KV goes through the data-plane Worker API" in out
    assert "Cloudflare API requests: 0 (0 of them KV); data-plane requests: " in out


def test_demo_command_over_rest_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--seed", "1", "--scale", "0.05", "--kv", "rest", "--project-dir", str(PROJECT_DIR)])
    out = capsys.readouterr().out
    assert status == 0
    assert "KV goes through the Cloudflare REST API (--kv rest" in out
    assert "data-plane requests: 0 (0 KV)" in out


def test_demo_command_rejects_bad_days(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--days", "0", "--project-dir", str(PROJECT_DIR)]) == 1
    assert "--days 0: must be >= 1" in capsys.readouterr().err


def test_demo_expected_figures_follow_days_and_scale() -> None:
    from rich.console import Console

    from dualcache._demo import DemoResult, render_tables
    from dualcache._stats import Stats

    def expected_column(days: int, scale: float) -> str:
        result = DemoResult(snapshot=Stats().snapshot(), emulator={}, planned={}, days=days, scale=scale)
        console = Console(width=200, record=True)
        console.print(render_tables(result)[1])
        return console.export_text()

    assert "6.00 -> 1.50-2.10" in expected_column(1, 1.0)  # job analysis, the expected per-day figures
    assert "12.00 -> 3.00-4.20" in expected_column(2, 1.0)
    assert "0.60 -> 0.15-0.21" in expected_column(1, 0.1)  # a tenth of the volume, a tenth of the estimate
