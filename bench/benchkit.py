"""What the bench scripts share, so that one figure is measured one way whichever script prints it.

* :func:`hits_at`: hits per second, p50/p99 and provider calls for N concurrent callers of ``embed``;
* :func:`hit_vs_floor`: an ``embed`` hit against its floor, one raw GET of the same value from the same
  server with the same client (the cache's own KV client, so the same pool, limits and timeouts);
* :func:`seed_records`: embedding records written by the cache itself (memory backend, a local model
  double), to copy into any KV so every key the benches ask for is cached;
* the servers: :func:`dev_emulator` (``dualcache dev`` in its own process, as a service would meet it) and
  :func:`workerd_data_plane` (the real data-plane Worker in workerd, when ``infra/worker`` has its
  ``node_modules``).

Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from dualcache import DualCache, DualCacheError, MemoryKVBackend, Namespace, StackOutputs

PROJECT_DIR = Path(__file__).resolve().parents[1]
DIMS = 768
EMBED_MODEL = "@cf/baai/bge-base-en-v1.5"
FAKE_OUTPUTS = StackOutputs.from_data(
    {
        "stack": "bench",
        "account_id": "a" * 32,
        "gateway_id": "gw",
        "api_base_url": "https://api.invalid/client/v4",
        "gateway_base_url": "https://gateway.invalid/v1",
        "namespaces": {n: f"{i:032x}" for i, n in enumerate(Namespace, start=1)},
        "worker_name": "api",
    },
    trusted_hosts=["api.invalid", "gateway.invalid"],  # fake hosts, trusted explicitly (only tests' doubles answer)
)
"""Outputs for in-process caches: every HTTP request goes to a ``httpx.MockTransport``."""


def quiet_logs() -> None:
    """Silence the runtime's per-key warnings (a KV timeout under load logs one line per key): the
    tables count them instead."""
    import logging

    logging.getLogger("dualcache").setLevel(logging.ERROR)


def texts(n: int) -> list[str]:
    """``n`` distinct job-posting-like texts, longer than a record's 200-character snippet (as real ones are)."""
    return [
        f"Senior Python engineer, posting {i}: you will design, build and run services used by millions of "
        "people. Requirements: 5+ years with Python, asyncio and PostgreSQL; Kubernetes is a plus. Remote, "
        "flexible hours, a learning budget."
        for i in range(n)
    ]


def vector_of(text: str) -> list[float]:
    """A deterministic 768-d unit vector for ``text``, with values spread like a real embedding's."""
    rng = random.Random(text)
    raw = [rng.gauss(0.0, 1.0) for _ in range(DIMS)]
    norm = sum(x * x for x in raw) ** 0.5
    return [x / norm for x in raw]


def model_double(request: httpx.Request) -> httpx.Response:
    """Answers Workers AI embeddings (and any chat call) like the real API, with no network."""
    body = json.loads(request.content)
    if "bge" in request.url.path:
        items = body["text"] if isinstance(body["text"], list) else [body["text"]]
        result: Any = {"shape": [len(items), DIMS], "data": [vector_of(t) for t in items]}
    else:
        result = {"response": {"score": 7, "summary": "a good match"}}
    return httpx.Response(200, json={"result": result, "success": True, "errors": [], "messages": []})


def memory_cache(**kwargs: Any) -> tuple[DualCache, dict[Namespace, MemoryKVBackend]]:
    """A cache on the memory backend whose provider is :func:`model_double`; and its backends."""
    backends: dict[Namespace, MemoryKVBackend] = {}
    cache = DualCache.from_outputs(
        FAKE_OUTPUTS,
        api_token="bench-token",
        kv=lambda ns: backends.setdefault(ns, MemoryKVBackend()),
        transport=httpx.MockTransport(model_double),
        **kwargs,
    )
    return cache, backends


async def settle(cache: DualCache) -> None:
    """Wait until the cache's queued KV writes have landed (trees without write-behind: nothing to wait)."""
    flush: Callable[[], Awaitable[Any]] | None = getattr(cache, "flush", None)
    if flush is not None:
        await flush()


async def seed_records(items: Sequence[str]) -> dict[str, bytes]:
    """The embedding records of ``items`` as this tree's cache writes them: ``{KV key: stored bytes}``."""
    cache, backends = memory_cache()
    async with cache:
        for start in range(0, len(items), 100):
            await cache.embed_many(list(items[start : start + 100]))
        await settle(cache)
        backend = backends[Namespace.EMBEDDINGS_CACHE]
        page = await backend.list(prefix=None, cursor=None, limit=len(items) + 10)
        stored = {k.name: await backend.get(k.name) for k in page.keys}
    return {k: v for k, v in stored.items() if v is not None}


def embed_key_of(text: str, cache: DualCache | None = None) -> str:
    """The KV key of ``text``'s embedding record (as ``cache`` keys it, where the tree keys per configuration)."""
    own = getattr(cache, "_embed_key", None)
    if own is not None:
        return str(own(text))
    from dualcache._keys import embed_key

    return embed_key(text)


def decode_us(raw: bytes, model: str = EMBED_MODEL, *, number: int = 500, repeat: int = 7) -> float:
    """µs of CPU time the runtime's record decoder (``judge_embedding_record``) takes on ``raw``, best of
    ``repeat`` blocks of ``number`` (CPU time: the machine is shared, wall time would measure the neighbours).

    Raises:
        RuntimeError: ``raw`` does not decode to a vector.
    """
    import timeit

    from dualcache._records import judge_embedding_record

    status, vector = judge_embedding_record(raw, model)
    if vector is None:
        raise RuntimeError(f"the record did not decode to a vector ({status})")
    blocks = timeit.repeat(
        lambda: judge_embedding_record(raw, model), number=number, repeat=repeat, timer=time.process_time
    )
    return min(blocks) / number * 1e6


def kv_client(cache: DualCache) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` the cache sends KV requests with (its KV pool where it has one per layer)."""
    client = getattr(cache, "_kv_http", None) or getattr(cache, "_http", None)
    if not isinstance(client, httpx.AsyncClient):
        raise RuntimeError("this tree's DualCache has no KV client attribute the bench knows (_kv_http or _http)")
    return client


def kv_gate(cache: DualCache) -> Any:
    """The admission gate in front of the cache's KV pool, or ``None`` in a tree without one."""
    try:
        from dualcache._transport import admission_of
    except ImportError:
        return None
    return admission_of(kv_client(cache))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class HitsRow:
    """What N concurrent callers measured."""

    callers: int
    hits: int
    per_second: float
    p50_ms: float
    p99_ms: float
    provider_calls: int
    not_from_kv: int
    """Calls not answered by a KV hit (provider, gateway, coalesced or failed)."""
    kv_errors: int
    kv_skipped: int
    """KV reads not sent (no place at the KV pool's gate in time, or an open breaker): misses too."""
    failed: int
    """Calls that raised (a miss whose provider could not be reached)."""
    gate_peak: int | None
    """Most KV requests in flight at once at the KV pool's admission gate (``None``: no gate in this tree)."""
    kv_requests: int | None = None
    """KV requests admitted at the KV gate during the run (single GETs and bulk gets; ``None``: no gate)."""
    coalesced: int | None = None
    """KV reads answered by a shared bulk get (``None``: this tree's data-plane client does not coalesce)."""


async def hits_at(cache: DualCache, items: Sequence[str], callers: int, hits: int) -> HitsRow:
    """``hits`` calls of ``cache.embed`` over ``items`` (all cached), spread over ``callers`` concurrent callers."""
    import asyncio

    gate = kv_gate(cache)
    if gate is not None:
        gate.peak = gate.in_flight
    admitted_before = None if gate is None else gate.admitted
    coalesced_before = coalesced_reads(cache)
    before = cache.stats.snapshot()["embeddings"]
    per_caller = max(1, hits // callers)
    latencies: list[float] = []

    failed = 0

    async def caller(offset: int) -> None:
        nonlocal failed
        for i in range(per_caller):
            started = time.perf_counter()
            try:
                await cache.embed(items[(offset * 7919 + i) % len(items)])
            except DualCacheError:  # a KV miss that could not reach a model (workerd has none): counted
                failed += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    elapsed = time.perf_counter() - started
    after = cache.stats.snapshot()["embeddings"]
    done = after["requests"] - before["requests"]
    return HitsRow(
        callers=callers,
        hits=len(latencies),
        per_second=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.5) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        provider_calls=after["provider_calls"] - before["provider_calls"],
        not_from_kv=done - (after["kv_hits"] - before["kv_hits"]),
        kv_errors=after["errors"] - before["errors"],
        kv_skipped=after.get("kv_skipped", 0) - before.get("kv_skipped", 0),
        failed=failed,
        gate_peak=None if gate is None else gate.peak,
        kv_requests=None if gate is None or admitted_before is None else gate.admitted - admitted_before,
        coalesced=None if coalesced_before is None else (coalesced_reads(cache) or 0) - coalesced_before,
    )


def coalesced_reads(cache: DualCache) -> int | None:
    """Reads of the embeddings namespace answered by shared bulk gets so far (``None``: the tree's KV client has
    no read coalescing)."""
    counts = getattr(cache.kv(Namespace.EMBEDDINGS_CACHE).backend, "read_counts", None)
    return None if counts is None else int(counts()["coalesced"])


def print_hits_table(title: str, rows: Sequence[HitsRow]) -> None:
    """Print :class:`HitsRow` s as one table."""
    print(f"  {title}")
    print(
        f"    {'callers':>8} {'hits':>7} {'hits/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'provider calls':>15} "
        f"{'not KV hits':>12} {'KV errors':>10} {'KV skipped':>11} {'failed':>7} {'KV gate peak':>13} "
        f"{'KV requests':>12} {'coalesced':>10}"
    )
    for r in rows:
        print(
            f"    {r.callers:>8} {r.hits:>7} {r.per_second:>9,.0f} {r.p50_ms:>9.2f} {r.p99_ms:>9.2f} "
            f"{r.provider_calls:>15} {r.not_from_kv:>12} {r.kv_errors:>10} {r.kv_skipped:>11} {r.failed:>7} "
            f"{'-' if r.gate_peak is None else r.gate_peak:>13} {'-' if r.kv_requests is None else r.kv_requests:>12} "
            f"{'-' if r.coalesced is None else r.coalesced:>10}"
        )


def print_side_by_side(tables: Sequence[tuple[str, Sequence[HitsRow]]]) -> None:
    """Print the same N of several servers on one line each: hits/s, p50/p99, misses, provider calls."""
    if not tables:
        return
    width = 46
    print("    " + f"{'':>8} " + " | ".join(f"{name[:width]:^{width}}" for name, _ in tables))
    cols = f"{'hits/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'misses':>7} {'provider':>9}"
    print("    " + f"{'callers':>8} " + " | ".join(f"{cols:>{width}}" for _ in tables))
    for i, first in enumerate(tables[0][1]):
        cells = []
        for _, rows in tables:
            r = rows[i]
            cell = f"{r.per_second:>8,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.not_from_kv:>7} {r.provider_calls:>9}"
            cells.append(f"{cell:>{width}}")
        print("    " + f"{first.callers:>8} " + " | ".join(cells))
    print("    (misses: calls not answered by a KV hit; provider: calls that reached a model; goal 0 for both)")


async def scaling(cache: DualCache, items: Sequence[str], callers: Sequence[int], hits: int) -> list[HitsRow]:
    """:func:`hits_at` for each N in ``callers`` (``max(hits, N)`` hits each), after a short warm-up."""
    for text in items[:20]:
        await cache.embed(text)  # connections open, code paths warm
    return [await hits_at(cache, items, n, max(hits, n)) for n in callers]


@dataclass(frozen=True)
class FloorRow:
    """An ``embed`` hit against one raw GET of the same value, medians of interleaved samples."""

    hit_us: float
    floor_us: float
    samples: int
    value_bytes: int
    hit_p99_us: float
    floor_p99_us: float
    store_us: float | None = None
    """Median of the cache's own KV client reading the same key (``KVStore.get``): the hit minus the engine."""
    paired_us: float | None = None
    """Median of the per-round differences hit - raw GET (each round times both back to back, so slow drift
    of a shared machine cancels out): the hit's own cost above its floor."""

    @property
    def ratio(self) -> float:
        """Hit over floor."""
        return self.hit_us / self.floor_us


async def hit_vs_floor(cache: DualCache, text: str, data_plane_url: str, token: str, samples: int) -> FloorRow:
    """Time ``cache.embed(text)`` (a hit), one raw data-plane GET of its record and the KV client's own read of
    it (``KVStore.get``), interleaved.

    The raw GET goes through the cache's own KV client (same pool, limits, timeouts, HTTP version), to the
    same server, for the same value: what is left is the runtime's own cost on a hit.
    """
    client = kv_client(cache)
    binding = Namespace.EMBEDDINGS_CACHE.value
    key = embed_key_of(text, cache)
    url = f"{data_plane_url.rstrip('/')}/kv/{binding}/values/{quote(key, safe='')}"
    headers = {"Authorization": f"Bearer {token}"}  # what the KV client sends: the bearer token, nothing else
    first = await client.get(url, headers=headers)
    if first.status_code != 200:
        raise RuntimeError(f"raw GET of the record answered {first.status_code}: is {text!r} cached?")
    store = cache.kv(Namespace.EMBEDDINGS_CACHE)
    calls: tuple[Callable[[], Awaitable[Any]], ...] = (
        lambda: cache.embed(text),
        lambda: client.get(url, headers=headers),
        lambda: store.get(key),
    )
    for _ in range(30):  # warm every path
        for call in calls:
            await call()
    times: tuple[list[float], ...] = ([], [], [])
    for i in range(samples):
        # Rotate which goes first, so drift (and the neighbours on a shared machine) hit all alike.
        for which in (i % 3, (i + 1) % 3, (i + 2) % 3):
            started = time.perf_counter()
            await calls[which]()
            times[which].append(time.perf_counter() - started)
    hit, floor, own = times
    return FloorRow(
        hit_us=statistics.median(hit) * 1e6,
        floor_us=statistics.median(floor) * 1e6,
        samples=samples,
        value_bytes=len(first.content),
        hit_p99_us=percentile(hit, 0.99) * 1e6,
        floor_p99_us=percentile(floor, 0.99) * 1e6,
        store_us=statistics.median(own) * 1e6,
        paired_us=statistics.median(h - f for h, f in zip(hit, floor, strict=True)) * 1e6,
    )


def print_floor(label: str, row: FloorRow) -> None:
    """Print a :class:`FloorRow`."""
    print(
        f"  {label}: embed hit {row.hit_us:,.0f} µs vs raw GET {row.floor_us:,.0f} µs = {row.ratio:.2f}x "
        f"(goal <= 1.10x; medians of {row.samples} interleaved rounds; p99 {row.hit_p99_us:,.0f} vs "
        f"{row.floor_p99_us:,.0f} µs; a {row.value_bytes:,} B record)"
    )
    if row.paired_us is not None:
        print(
            f"    per-round difference (median of hit - raw GET, drift cancelled): {row.paired_us:,.0f} µs = "
            f"{1 + row.paired_us / row.floor_us:.2f}x"
        )
    if row.store_us is not None:
        print(
            f"    of which the KV client (KVStore.get of the same key) {row.store_us:,.0f} µs = "
            f"{row.store_us / row.floor_us:.2f}x the raw GET; the engine's share {row.hit_us - row.store_us:,.0f} µs"
        )


# -- servers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A running data plane the benches talk to."""

    name: str
    outputs: StackOutputs
    data_plane_token: str
    control_url: str | None
    """The emulator's root URL (control endpoints), ``None`` for workerd."""


@contextlib.contextmanager
def dev_emulator() -> Iterator[Server]:
    """``dualcache dev`` on a free loopback port, in its own process (as a service would meet it)."""
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="dualcache-bench-") as tmp:
        env = {**os.environ, "DUALCACHE_DATA_PLANE_TOKEN": token}
        code = "import sys; from dualcache._cli import main; sys.exit(main(sys.argv[1:]))"
        args = ["dev", "--port", "0", "--data", tmp, "--project-dir", str(PROJECT_DIR)]
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            if " emulated at " not in first:
                proc.kill()
                raise RuntimeError(
                    f"dualcache dev did not start: {first!r} {proc.stderr.read() if proc.stderr else ''}"
                )
            url = first.split(" emulated at ", 1)[1].split()[0]
            outputs = StackOutputs.load(Path(tmp) / "outputs.dev.json")
            yield Server(name="emulator (dualcache dev)", outputs=outputs, data_plane_token=token, control_url=url)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def workerd_unavailable() -> str | None:
    """Why the real Worker cannot run here (a note to print), or ``None`` when it can."""
    if not (PROJECT_DIR / "infra" / "worker" / "node_modules").is_dir():
        return "infra/worker/node_modules is missing (run `make setup`, or `npm ci` in infra/worker)"
    try:
        import tests.contract.workerd  # noqa: F401
    except ImportError as exc:
        return f"this tree has no workerd launcher (tests/contract/workerd.py: {exc})"
    return None


@contextlib.contextmanager
def workerd_data_plane() -> Iterator[Server]:
    """The data-plane Worker in workerd (``infra/worker/dev.mjs``); check :func:`workerd_unavailable` first.

    Only KV is there: the outputs' gateway and API point at a closed loopback port, so a miss fails (and
    shows up as ``not KV hits`` / ``KV errors``) instead of reaching a model.
    """
    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    from tests.contract.workerd import workerd_data_plane as launch

    token = secrets.token_urlsafe(24)
    started = time.perf_counter()
    with launch(token=token) as plane:
        print(f"  (workerd data plane started in {time.perf_counter() - started:.2f} s at {plane.url})")
        outputs = FAKE_OUTPUTS.model_copy(
            update={
                "api_base_url": "http://127.0.0.1:9/client/v4",
                "gateway_base_url": "http://127.0.0.1:9/v1",
                "data_plane_url": plane.url,
            }
        )
        yield Server(name="real Worker in workerd", outputs=outputs, data_plane_token=token, control_url=None)


@contextlib.contextmanager
def servers(*, no_workerd: bool = False) -> Iterator[list[Server]]:
    """The emulator, and the real Worker in workerd unless ``no_workerd`` or it cannot run (a note says why)."""
    with contextlib.ExitStack() as stack:
        found = [stack.enter_context(dev_emulator())]
        why = "--no-workerd" if no_workerd else workerd_unavailable()
        if why is None:
            found.append(stack.enter_context(workerd_data_plane()))
        else:
            print(f"  note: the real Worker in workerd is skipped: {why}")
        yield found


@contextlib.asynccontextmanager
async def data_plane_cache(server: Server, records: dict[str, bytes], **kwargs: Any) -> AsyncIterator[DualCache]:
    """A cache on ``server``'s data plane (other ``DualCache`` arguments in ``kwargs``), with ``records``
    stored there first (through the cache's KV store)."""
    cache = DualCache.from_outputs(
        server.outputs,
        api_token="bench-token",
        data_plane_token=server.data_plane_token,
        openai_api_key="sk-bench",
        **kwargs,
    )
    async with cache:
        await cache.kv(Namespace.EMBEDDINGS_CACHE).put_many(records)
        yield cache
