"""The in-process hit path: µs per `embed` and `analyze_job` hit on the memory backend (a script, not a test).

    PYTHONPATH=<tree>/runtime:<tree> .venv/bin/python bench/bench_hitpath.py [--hits N] [--runs R]

Run it once per tree (for example main's and a branch's) to compare them side by side; it prints which
``dualcache`` it imported. Only the runtime's own cost is measured: KV is the memory backend, the upstream
is an ``httpx.MockTransport`` answered once (the miss that fills KV), then every call is a KV hit.

Prints, per operation, the median over ``runs`` of the mean µs per hit over ``hits`` sequential hits, and the
same for 100 concurrent callers hitting the same key (``asyncio.gather``), next to a dict lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import timeit
from typing import Any

import httpx

import dualcache
from dualcache import DualCache, MemoryKVBackend, Namespace, StackOutputs

DIMS = 768
MSGS = [{"role": "user", "content": "Analyze this job for me"}]
# Fake hosts, trusted explicitly: by default only Cloudflare's own hosts (or loopback) get a token.
OUTPUTS = StackOutputs.from_data(
    dict(
        stack="bench",
        account_id="a" * 32,
        gateway_id="gw",
        api_base_url="https://api.test/client/v4",
        gateway_base_url="https://gw.test/v1",
        namespaces={n: f"{i:032x}" for i, n in enumerate(Namespace, start=1)},
        worker_name="api",
    ),
    trusted_hosts=["api.test", "gw.test"],
)


def _answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if "bge" in request.url.path:
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        result: Any = {"shape": [len(texts), DIMS], "data": [[0.001 * (i % 997) for i in range(DIMS)] for _ in texts]}
    else:
        result = {"response": {"score": 7, "summary": "a good match"}}
    return httpx.Response(200, json={"result": result, "success": True, "errors": [], "messages": []})


async def _measure(call: Any, hits: int, runs: int, concurrent: int) -> tuple[float, float]:
    sequential, gathered = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(hits):
            await call()
        sequential.append((time.perf_counter() - t0) / hits * 1e6)
        rounds = max(1, hits // concurrent)
        t0 = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(call() for _ in range(concurrent)))
        gathered.append((time.perf_counter() - t0) / (rounds * concurrent) * 1e6)
    return statistics.median(sequential), statistics.median(gathered)


async def main(hits: int, runs: int) -> None:
    backends: dict[Namespace, MemoryKVBackend] = {}
    cache = DualCache.from_outputs(
        OUTPUTS,
        api_token="bench-token",
        kv=lambda ns: backends.setdefault(ns, MemoryKVBackend()),
        transport=httpx.MockTransport(_answer),
    )
    async with cache:
        text = "Senior Python engineer, remote, Kubernetes and PostgreSQL"
        await cache.embed(text)
        await cache.analyze_job(user_id="u", job_id="j", messages=MSGS)
        flush = getattr(cache, "flush", None)
        if flush is not None:  # write-behind trees: let the records land before measuring hits
            await flush()
        embed_seq, embed_par = await _measure(lambda: cache.embed(text), hits, runs, 100)
        job_seq, job_par = await _measure(
            lambda: cache.analyze_job(user_id="u", job_id="j", messages=MSGS), hits, runs, 100
        )
        snap = cache.stats.snapshot()
    table = {"k": 1}
    lookup = min(timeit.repeat(lambda: table.get("k"), number=100_000, repeat=5)) / 100_000 * 1e6
    print(f"dualcache from {dualcache.__file__}")
    print(f"  {'µs per hit (median of ' + str(runs) + ' runs)':<44}{'sequential':>12}{'100 concurrent':>16}")
    print(f"  {'embed (768 dims, memory backend)':<44}{embed_seq:>12.1f}{embed_par:>16.1f}")
    print(f"  {'analyze_job (memory backend)':<44}{job_seq:>12.1f}{job_par:>16.1f}")
    print(f"  {'dict lookup (the floor)':<44}{lookup:>12.2f}")
    emb, job = snap["embeddings"], snap["job_analysis"]
    print(
        f"  counts: embeddings {emb['kv_hits']} KV hits + {emb['coalesced']} coalesced, {emb['provider_calls']} "
        f"provider call(s); job_analysis {job['kv_hits']} KV hits + {job['coalesced']} coalesced, "
        f"{job['provider_calls']} provider call(s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=5000, help="hits per run (default 5000)")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is printed (default 5)")
    args = parser.parse_args()
    asyncio.run(main(args.hits, args.runs))
