"""The raw round trip of the data-plane Worker in workerd (a script, not a test).

    PYTHONPATH=runtime:. .venv/bin/python bench/bench_dataplane_raw.py [--requests N]

Starts ``infra/worker/dev.mjs`` (the data-plane Worker in workerd through miniflare, on 127.0.0.1), stores one
embedding-sized value, and prints:
1. how long the Worker took to start (launch until its URL is printed);
2. the median, p90 and p99 of N sequential ``GET /kv/EMBEDDINGS_CACHE/values/<k>`` over one
   ``httpx.AsyncClient`` (keep-alive), in microseconds: the baseline an ``embed`` hit through the data plane
   is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.contract.workerd import workerd_data_plane  # noqa: E402


async def measure(url: str, token: str, requests: int) -> list[float]:
    """Microseconds of each of ``requests`` sequential GETs of one stored value."""
    key = "bench/embedding"
    value = json.dumps([0.001 * i for i in range(768)]).encode()
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        path = f"/kv/EMBEDDINGS_CACHE/values/{quote(key, safe='')}"
        (await client.put(path, content=value)).raise_for_status()
        for _ in range(50):  # warm up the connection and the runtime
            (await client.get(path)).raise_for_status()
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            response = await client.get(path)
            samples.append((time.perf_counter() - started) * 1e6)
            if response.status_code != 200 or response.content != value:
                raise RuntimeError(f"GET answered {response.status_code} with {len(response.content)} bytes")
        return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    with workerd_data_plane() as plane:
        startup = time.perf_counter() - started
        assert plane.token is not None
        samples = asyncio.run(measure(plane.url, plane.token, args.requests))
    cuts = statistics.quantiles(samples, n=100)
    print(f"workerd data plane: started in {startup:.2f} s")
    print(
        f"raw GET /kv/EMBEDDINGS_CACHE/values/<k> ({len(samples)} sequential, one AsyncClient, "
        f"{len(json.dumps([0.001 * i for i in range(768)]))} B value): "
        f"median {statistics.median(samples):.0f} us, p90 {cuts[89]:.0f} us, p99 {cuts[98]:.0f} us"
    )


if __name__ == "__main__":
    main()
