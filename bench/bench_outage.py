"""Scripted outages of each layer against the local emulator: what a service sees (a script, not a test).

    .venv/bin/python bench/bench_outage.py [--calls N] [--waves W] [--in-process]

For each scenario a fresh emulator (``python -m dualcache.local dev`` in a subprocess, so that it does
not share this process's GIL; ``--in-process`` runs it in a thread instead) and a fresh ``DualCache``
(default budgets, pools and breakers) are warmed while healthy (embeddings and job analyses stored in
KV), then the fault is set and ``waves`` waves of ``calls`` concurrent calls run: half ``embed`` (a
quarter of them cached), half ``analyze_job`` (a fifth cached). Then the fault is cleared and the
records in KV are counted.

Columns: calls served (answered without an exception), p50/p99 latency of a call, upstream model calls
(counted by the emulator), gateway requests failed by the fault, counters of the cache (errors, skips)
and records stored after the fault cleared, against the distinct keys asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualcache import DualCache, StackOutputs
from dualcache.local import Emulator, EmulatorControl

PROJECT_DIR = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
MSGS = [{"role": "user", "content": "Rate this job for a senior Python engineer"}]

SCENARIOS: list[tuple[str, dict[str, dict[str, Any]]]] = [
    ("healthy", {}),
    ("kv slow (1.5 s)", {"kv": {"latency_ms": 1500}}),
    ("kv down (503)", {"kv": {"error_rate": 1.0, "status": 503}}),
    ("gateway hanging", {"gateway": {"timeout": True}}),
    ("gateway 5xx", {"gateway": {"error_rate": 1.0, "status": 502}}),
    ("workers-ai 5xx", {"upstream": {"error_rate": 1.0, "status": 503, "provider": "workers-ai"}}),
]


@dataclass
class Served:
    """An emulator serving in another process."""

    outputs: StackOutputs
    control: EmulatorControl


@contextlib.contextmanager
def subprocess_emulator(data: Path) -> Iterator[Served]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "dualcache.local", "dev", "--port", str(port), "--data", str(data)]
    command += ["--token", TOKEN, "--project-dir", str(PROJECT_DIR)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    control = EmulatorControl(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                control.stats()
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    detail = proc.stderr.read() if proc.stderr else ""
                    raise RuntimeError(f"the emulator did not start: {detail!r}") from exc
                time.sleep(0.1)
        yield Served(StackOutputs.load(data / "outputs.dev.json"), control)
    finally:
        control.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a request still hanging on a `timeout` fault delays the shutdown
            proc.kill()
            proc.wait(timeout=5)


async def timed(call: Any) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        await call
    except Exception:
        return time.perf_counter() - started, False
    return time.perf_counter() - started, True


async def scenario(emu: Emulator | Served, faults: dict[str, dict[str, Any]], calls: int, waves: int) -> dict[str, Any]:
    half = calls // 2
    async with DualCache.from_outputs(emu.outputs, api_token=TOKEN, openai_api_key="sk-local") as cache:
        cached_texts = [f"warm text {i}" for i in range(half // 4)]
        cached_jobs = [f"warm-job-{i}" for i in range(half // 5)]
        await cache.embed_many(cached_texts)
        for job in cached_jobs:
            await cache.analyze_job(user_id="u", job_id=job, messages=MSGS)
        cache.stats.reset()
        emu.control.reset()
        emu.control.set_faults(faults)
        latencies: list[float] = []
        served = 0
        texts: set[str] = set(cached_texts)
        jobs: set[str] = set(cached_jobs)
        started = time.perf_counter()
        for wave in range(waves):
            wave_texts = cached_texts + [f"wave {wave} text {i}" for i in range(half - len(cached_texts))]
            wave_jobs = cached_jobs + [f"wave-{wave}-job-{i}" for i in range(half - len(cached_jobs))]
            texts.update(wave_texts)
            jobs.update(wave_jobs)
            results = await asyncio.gather(
                *(timed(cache.embed(t)) for t in wave_texts),
                *(timed(cache.analyze_job(user_id="u", job_id=j, messages=MSGS)) for j in wave_jobs),
            )
            latencies += [t for t, _ in results]
            served += sum(ok for _, ok in results)
        elapsed = time.perf_counter() - started
        stats = emu.control.stats()
        emu.control.clear_faults()
        snap = cache.stats.snapshot()
    async with DualCache.from_outputs(emu.outputs, api_token=TOKEN) as counter:  # fresh: no breaker open
        stored_embeds = [k async for k in counter.kv("EMBEDDINGS_CACHE").list_keys(prefix="embed:")]
        stored_jobs = [k async for k in counter.kv("JOB_ANALYSIS_CACHE").list_keys(prefix="analysis:")]
    latencies.sort()
    ops = ("embeddings", "job_analysis")
    return {
        "served": served,
        "total": len(latencies),
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "upstream": sum(stats["upstream"].values()),
        "gw_faults": stats["faults"]["gateway"],
        "errors": sum(snap[o]["errors"] for o in ops),
        "kv_skip": sum(snap[o]["kv_skipped"] for o in ops),
        "gw_skip": sum(snap[o]["gateway_skipped"] for o in ops),
        "stored": len(stored_embeds) + len(stored_jobs),
        "distinct": len(texts) + len(jobs),
        "elapsed": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="concurrent calls per wave (default 40)")
    parser.add_argument("--waves", type=int, default=2, help="waves per scenario (default 2)")
    parser.add_argument("--in-process", action="store_true", help="run the emulator in a thread of this process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    header = (
        f"{'scenario':<18}{'served':>10}{'p50 ms':>9}{'p99 ms':>9}{'upstream':>9}{'gw fail':>8}"
        f"{'errors':>7}{'kv skip':>8}{'gw skip':>8}{'stored':>11}{'wall s':>8}"
    )
    print(f"{args.waves} waves of {args.calls} concurrent calls (half embed, half analyze_job), default budgets")
    print(header)
    print("-" * len(header))
    for name, faults in SCENARIOS:
        with tempfile.TemporaryDirectory() as tmp:
            served: contextlib.AbstractContextManager[Emulator | Served] = (
                Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=Path(tmp), token=TOKEN)
                if args.in_process
                else subprocess_emulator(Path(tmp))
            )
            with served as emu:
                r = asyncio.run(scenario(emu, faults, args.calls, args.waves))
        print(
            f"{name:<18}{r['served']:>5}/{r['total']:<4}{r['p50']:>9.0f}{r['p99']:>9.0f}{r['upstream']:>9}"
            f"{r['gw_faults']:>8}{r['errors']:>7}{r['kv_skip']:>8}{r['gw_skip']:>8}"
            f"{r['stored']:>6}/{r['distinct']:<4}{r['elapsed']:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
