"""Latency per layer in the stats, and `dualcache report`: the per-layer report and TTL advice from gateway logs."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dualcache import DualCache, InvalidInputError, LatencyHistogram, Policies, RequestBudget, Stats
from dualcache._cli import main as cli_main
from dualcache._report import (
    advise_ttls,
    fetch_gateway_logs,
    load_snapshot,
    render_layers,
    repeat_intervals,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "report-token"
R1 = "Jane Doe. Python engineer, 8 years. Django, FastAPI, PostgreSQL."
R2 = "John Roe. Go developer, 5 years. Kubernetes, gRPC."


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Any]:
    # A fresh emulator per test: its gateway logs hold this test's requests only.
    from dualcache.local import Emulator

    with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path / "emulator", token=TOKEN) as emulator:
        yield emulator


def _cache(emu: Any) -> DualCache:
    return DualCache.from_outputs(emu.outputs, api_token=TOKEN, openai_api_key="sk-local")


# -- latency histograms -------------------------------------------------------------------------------


def test_latency_histogram_quantiles_fall_within_one_bucket() -> None:
    h = LatencyHistogram()
    samples = [0.001 * (i + 1) for i in range(100)]  # 1 ms .. 100 ms
    for s in samples:
        h.add(s)
    assert h.count == 100 and h.total == pytest.approx(sum(samples))
    p50, p99 = h.quantile(0.5), h.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert 0.050 / 1.19 <= p50 <= 0.050 * 1.19  # a bucket is 2 ** 0.25 wide (19 %)
    assert 0.099 / 1.19 <= p99 <= 0.100
    assert h.quantile(1.0) == pytest.approx(0.1)  # capped by the largest sample
    assert h.summary()["count"] == 100 and h.summary()["max_ms"] == 100.0


@pytest.mark.parametrize(
    ("sample", "counted_as"),
    [
        pytest.param(-1.0, 0.0, id="negative"),
        pytest.param(math.nan, 0.0, id="nan"),
        pytest.param(1e-9, 1e-9, id="sub-microsecond"),
        pytest.param(1e6, 1e6, id="over-the-last-bucket"),
    ],
)
def test_latency_histogram_takes_any_float(sample: float, counted_as: float) -> None:
    h = LatencyHistogram()
    h.add(sample)
    assert h.count == 1 and h.total == counted_as
    assert h.quantile(0.5) == counted_as  # the bucket's middle, capped by the largest sample (the last: that one)


def test_latency_histogram_cumulative_counts_per_bound() -> None:
    h = LatencyHistogram()
    for s in (0.5e-6, 3e-6, 3e-6, 20e-6, 2.0):
        h.add(s)
    assert h.cumulative([1e-6, 4e-6, 16e-6, 64e-6, 1.0]) == [
        (1e-6, 1),
        (4e-6, 3),
        (16e-6, 3),
        (64e-6, 4),
        (1.0, 4),
        (math.inf, 5),
    ]


def test_stats_observe_refuses_an_unknown_layer() -> None:
    with pytest.raises(ValueError, match="layer='disk'.*kv_read"):
        Stats().observe("embeddings", "disk", 0.1)


def test_stats_latency_reset_and_snapshot_keys() -> None:
    stats = Stats()
    stats.observe("embeddings", "kv_read", 0.002)
    stats.observe("embeddings", "provider", 0.2)
    latency = stats.snapshot()["embeddings"]["latency"]
    assert set(latency) == {"kv_read", "provider"}
    assert set(latency["kv_read"]) == {"count", "p50_ms", "p99_ms", "max_ms", "sum_ms"}
    assert stats.snapshot()["job_analysis"]["latency"] == {}
    stats.reset()
    assert stats.snapshot()["embeddings"]["latency"] == {} and stats.latency("embeddings", "kv_read") is None


async def test_stats_latency_per_layer_from_real_calls(emu: Any, tmp_path: Path) -> None:
    async with _cache(emu) as cache:
        await cache.embed("latency one")  # KV miss, provider (through the gateway), KV write
        await cache.flush()
        await cache.embed("latency one")  # KV hit
        snap = cache.stats.snapshot()["embeddings"]
        cache.stats.save(tmp_path / "stats.json")
    latency = snap["latency"]
    assert latency["kv_read"]["count"] == 2 and latency["provider"]["count"] == 1
    assert latency["kv_write"]["count"] == 1 and "gateway" not in latency
    assert all(row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in latency.values())
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["embeddings"]["requests"] == 2 and saved["embeddings"]["latency"] == latency


# -- the stats report ---------------------------------------------------------------------------------


def _snapshot() -> dict[str, Any]:
    stats = Stats()
    from dualcache import Outcome

    for outcome in (Outcome.KV_HIT, Outcome.KV_HIT, Outcome.GATEWAY_HIT, Outcome.PROVIDER):
        stats.record("embeddings", outcome)
    stats.skip("embeddings", "kv")
    stats.observe("embeddings", "kv_read", 0.003)
    stats.observe("embeddings", "provider", 0.25)
    return stats.snapshot()


def test_report_render_layers_shows_rates_skips_and_latency() -> None:
    text = render_layers(_snapshot())
    assert re.search(r"^embeddings\s+4\s+50\.0%\s+25\.0%", text, re.M), text
    assert re.search(r"^embeddings\s+1\s+0\s+0\s+0\s+0$", text, re.M), text  # one KV skip
    row = re.search(r"^embeddings\s+(\S+) \((\d+)\)\s+-\s+(\S+) \((\d+)\)\s+-$", text, re.M)
    assert row is not None, text
    kv_p50, _ = (float(x) for x in row.group(1).split("/"))
    provider_p50, _ = (float(x) for x in row.group(3).split("/"))
    assert 3 / 1.19 <= kv_p50 <= 3 * 1.19 and 250 / 1.19 <= provider_p50 <= 250 * 1.19


def test_report_load_snapshot_from_a_file_and_a_url(tmp_path: Path) -> None:
    snap = _snapshot()
    path = tmp_path / "s.json"
    path.write_text(json.dumps(snap))
    assert load_snapshot(str(path)) == snap

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/stats"
        return httpx.Response(200, json=snap)

    assert load_snapshot("http://service.test/stats", transport=httpx.MockTransport(handler)) == snap


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("not json", "not JSON", id="not-json"),
        pytest.param("[1, 2]", "not a stats snapshot", id="a-list"),
        pytest.param('{"embeddings": {"requests": 1}}', "lacks integer counter", id="missing-counters"),
    ],
)
def test_report_load_snapshot_refuses_what_is_not_one(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        load_snapshot(str(path))


# -- repeat intervals and TTL advice ------------------------------------------------------------------


def _item(op: str, request: str | None, t: float, *, cached: bool = False) -> dict[str, Any]:
    meta: dict[str, str] = {"operation": op}
    if request is not None:
        meta["request"] = request
    created = datetime.fromtimestamp(1_800_000_000 + t, UTC).isoformat().replace("+00:00", "Z")
    return {"created_at": created, "cached": cached, "metadata": json.dumps(meta)}


def test_report_repeat_intervals_group_by_operation_and_request() -> None:
    items = [
        _item("job_analysis", "a", 0),
        _item("job_analysis", "a", 600),
        _item("job_analysis", "a", 4200),
        _item("job_analysis", "b", 100),
        _item("job_analysis", None, 50),
        _item("embeddings", "a", 0, cached=True),
        {"created_at": "2026-01-01T00:00:00Z", "metadata": "not json"},
    ]
    got = repeat_intervals(list(reversed(items)))  # newest first, as the API lists them
    assert got["job_analysis"] == {
        "requests": 2,
        "entries": 5,
        "unidentified": 1,
        "cached": 0,
        "intervals": [600, 3600],
    }
    assert got["embeddings"] == {"requests": 1, "entries": 1, "unidentified": 0, "cached": 1, "intervals": []}
    assert set(got) == {"job_analysis", "embeddings"}


def test_report_advice_against_the_policies_ttls() -> None:
    # 20 repeats: 19 within 30 min, one after 2 days.
    intervals = {
        "job_analysis": {
            "requests": 5,
            "unidentified": 0,
            "intervals": sorted([60.0] * 10 + [1800.0] * 9 + [172800.0]),
        },
        "spam_detection": {"requests": 3, "unidentified": 0, "intervals": [30.0, 40.0]},
        "resume_parsing": {"requests": 2, "unidentified": 0, "intervals": []},
        "summarize": {"requests": 1, "unidentified": 0, "intervals": [7200.0]},
    }
    policies = Policies().override({"job_analysis": {"kv_ttl": 600}})
    job, spam, resume, custom = advise_ttls(intervals, policies)
    assert (job.kv_ttl, job.kv_coverage, job.p95, job.recommended_ttl) == (600, 0.5, 1800.0, 1800)
    assert job.text.startswith("job_analysis: 5 request(s), 20 repeat(s); 95 % of repeats within 1 h")
    assert "current kv_ttl 10 min covers 50 %; recommend kv_ttl 30 min (covers 95 %)" in job.text
    assert "the gateway logs only what KV missed" in job.text
    assert spam.kv_coverage == 1.0 and spam.gateway_coverage == 1.0 and "keep it" in spam.text
    assert "current gateway_ttl 1 d covers 100 %" in spam.text
    assert resume.recommended_ttl is None and "no request was repeated" in resume.text
    assert custom.kv_ttl is None and "no cache holds it now; a TTL of 6 h would cover 100 %" in custom.text


# -- the gateway logs, read from the emulator -----------------------------------------------------------


def _resume_calls(emu: Any) -> None:
    """Resume R1 at 0, +10 min, +30 min, +2 h; R2 at 0 and +5 min (resume parsing: KV and gateway cache off)."""

    async def run() -> None:
        async with _cache(emu) as cache:
            for delay, text in ((0, R1), (0, R2), (300, R2), (300, R1), (1200, R1), (5400, R1)):
                emu.control.advance_clock(delay)
                await cache.parse_resume(text=text, user_id="u1")

    asyncio.run(run())


def test_report_fetch_gateway_logs_is_capped_by_pages_and_budget(emu: Any) -> None:
    _resume_calls(emu)
    o = emu.outputs

    async def read(**kwargs: Any) -> Any:
        async with httpx.AsyncClient() as client:
            return await fetch_gateway_logs(
                client, api_base_url=o.api_base_url, account_id=o.account_id, gateway_id=o.gateway_id,
                api_token=TOKEN, **kwargs,
            )  # fmt: skip

    everything = asyncio.run(read(per_page=4))
    assert (len(everything.items), everything.pages, everything.total, everything.complete) == (6, 2, 6, True)
    capped = asyncio.run(read(per_page=2, max_pages=2))
    assert (len(capped.items), capped.pages, capped.complete) == (4, 2, False)
    assert [i["id"] for i in capped.items] == [i["id"] for i in everything.items[:4]]  # the newest ones
    budget = RequestBudget(api_limit=3, headroom=2)  # one request left
    spent = asyncio.run(read(per_page=2, budget=budget))
    assert (len(spent.items), spent.pages, spent.complete) == (2, 1, False)
    assert budget.counts["sent"] == 1 and budget.counts["budget"] == 1
    with pytest.raises(InvalidInputError, match="max_pages=0"):
        asyncio.run(read(max_pages=0))


def test_report_cli_end_to_end_against_the_emulator(
    emu: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _resume_calls(emu)

    async def spam() -> Stats:
        # Spam detection: KV 7 d, gateway 1 d. A repeat after 8 days finds both expired and reaches the model.
        async with _cache(emu) as cache:
            messages = [{"role": "user", "content": "Is this spam? Earn $$$ from home"}]
            await cache.detect_spam(job_id="job-1", messages=messages)
            await cache.flush()
            await cache.detect_spam(job_id="job-1", messages=messages)  # a KV hit: the gateway never sees it
            emu.control.advance_clock(8 * 86400)
            await cache.detect_spam(job_id="job-1", messages=messages)
            cache.stats.save(tmp_path / "stats.json")
            return cache.stats

    asyncio.run(spam())
    outputs = tmp_path / "outputs.json"
    emu.outputs.dump(outputs)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    html = tmp_path / "repeats.html"
    status = cli_main(
        ["report", "--stats", str(tmp_path / "stats.json"), "--gateway-logs", "--outputs", str(outputs),
         "--per-page", "3", "--html", str(html)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert re.search(r"^spam_detection\s+3\s+33\.3%", out, re.M), out
    assert f"AI Gateway {emu.outputs.gateway_id}: 8 of 8 log entries read in 3 page(s)" in out
    assert (
        "resume_parsing: 2 request(s), 4 repeat(s); 75 % of repeats within 1 h, median 10 min; "
        "no cache holds it now; a TTL of 6 h would cover 100 %"
    ) in out
    assert (
        "spam_detection: 1 request(s), 1 repeat(s); 0 % of repeats within 1 h, median 8 d; current kv_ttl 7 d "
        "covers 0 %; current gateway_ttl 1 d covers 0 %; recommend kv_ttl 14 d (covers 100 %); "
        "the gateway logs only what KV missed"
    ) in out
    page = html.read_text()
    assert page.count("<svg") == 2 and "resume_parsing" in page


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["report"], "nothing to report", id="nothing"),
        pytest.param(["report", "--stats", "missing.json"], "does not exist", id="no-file"),
        pytest.param(["report", "--gateway-logs", "--since", "last week"], "--since 'last week'", id="since"),
        pytest.param(["report", "--gateway-logs", "--max-pages", "0"], "--max-pages 0", id="max-pages"),
        pytest.param(["report", "--stats", "s.json", "--html", "x.html"], "--html", id="html-without-logs"),
        pytest.param(["report", "--gateway-logs", "--html", "/no/such/dir/x.html"], "folder does not exist", id="html"),
        pytest.param(
            ["report", "--gateway-logs", "--account-id", "a" * 32, "--gateway-id", "gw"],
            "CLOUDFLARE_API_TOKEN",
            id="no-token",
        ),
        pytest.param(["report", "--gateway-logs"], "--account-id and --gateway-id", id="no-ids"),
    ],
)
def test_report_cli_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    monkeypatch.delenv("DUALCACHE_OUTPUTS", raising=False)
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dualcache report: error: ") and message in err and err.count("\n") == 1, err
