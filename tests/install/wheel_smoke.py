"""Use an installed dualcache wheel as a service would: emulator, one DualCache, a miss then a KV hit.

Run by ``scripts/wheel-check.sh`` with the fresh virtualenv's Python in isolated mode (``python -I``), from a
temporary directory, so neither the repository's source nor ``PYTHONPATH`` can stand in for the wheel. It
needs no file of the repository: the stack's settings are a :class:`dualcache.StackConfig` built here, as a
service without the Pulumi project would build them. Exits 1 with a message on the first check that fails.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import dualcache
from dualcache import DualCache, StackConfig
from dualcache.local import Emulator

BGE = "@cf/baai/bge-base-en-v1.5"
TOKEN = "wheel-check-token"


def check(ok: bool, what: str) -> None:
    """Stop with status 1 naming the failed check."""
    if not ok:
        sys.exit(f"wheel check failed: {what}")


async def two_calls(emu: Any) -> dict[str, Any]:
    """Embed the same text twice through KV (the data plane) and the gateway; return the embeddings row."""
    async with DualCache.from_outputs(emu.outputs, api_token=TOKEN, data_plane_token=emu.data_plane_token) as cache:
        first = await cache.embed("Senior Python engineer, remote")
        await cache.flush()  # the record is in KV, so the second call is a read, not the write-behind queue
        second = await cache.embed("Senior Python engineer, remote")
        check(first == second, "the KV hit returned another vector than the first call")
        check(len(first) == 768, f"expected a 768-dimension vector from {BGE}, got {len(first)}")
        row: dict[str, Any] = cache.stats.snapshot()["embeddings"]
        return row


def main() -> None:
    """Run the checks and print what was used and counted."""
    where = Path(dualcache.__file__).resolve()
    print(f"dualcache {where}")
    check(where.is_relative_to(Path(sys.prefix).resolve()), f"dualcache was imported from outside {sys.prefix}")
    config = StackConfig(stack="dev", account_id="0" * 32)
    with tempfile.TemporaryDirectory() as data, Emulator(config=config, data_dir=data, token=TOKEN) as emu:
        row = asyncio.run(two_calls(emu))
        stats = emu.control.stats()
    print(f"embeddings: {row['requests']} requests, {row['kv_hits']} KV hit, {row['provider_calls']} provider call")
    print(f"emulator: upstream {stats['upstream']}, data-plane KV requests {stats['surfaces']['data_plane']}")
    check(row["requests"] == 2, f"expected 2 requests counted, got {row['requests']}")
    check(row["kv_hits"] == 1, f"expected the second call to be a KV hit, got {row['kv_hits']} KV hits")
    check(row["provider_calls"] == 1, f"expected 1 provider call, got {row['provider_calls']}")
    check(stats["upstream"] == {BGE: 1}, f"expected one model call to {BGE}, the emulator saw {stats['upstream']}")
    check(stats["surfaces"]["data_plane"] >= 2, "KV did not go through the emulator's data plane")
    print("wheel check: ok")


if __name__ == "__main__":
    main()
