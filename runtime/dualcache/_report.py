"""``dualcache report``: a readable per-operation, per-layer report, and TTL advice from the AI Gateway logs.

Two sources, either or both:

* ``--stats SOURCE``: a stats snapshot (:meth:`~dualcache.Stats.snapshot` as JSON), from a file
  (:meth:`~dualcache.Stats.save`) or a running service's URL (a route answering the snapshot, such as the
  ``/stats`` of docs/observability.md). The report shows per operation the hit rates per layer, provider calls, errors,
  skips per layer, cost and saved dollars, then p50/p99 latency per layer.
* ``--gateway-logs``: the AI Gateway logs API (``GET /client/v4/accounts/{account}/ai-gateway/gateways/
  {gateway}/logs``, newest first, ``page``/``per_page``), at most ``--max-pages`` pages, each taken from the
  token's :class:`~dualcache.RequestBudget` (the REST API quota KV shares). Every gateway request of the
  runtime carries ``cf-aig-metadata`` with its ``operation`` and ``request`` (a hash prefix of the request's
  cache key), so entries of one request are its repeats; the intervals between them, per operation, are
  held against the operation's TTLs (from the stack outputs' policies, else the defaults) and give a
  recommendation.

The gateway sees only what KV did not serve: for an operation whose KV is on, a repeat inside the KV TTL
never reaches the gateway, so its logs show the repeats KV missed (after expiry, a failure, a skip). The
advice says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "GatewayLogPage",
    "TTLAdvice",
    "advise_ttls",
    "fetch_gateway_logs",
    "load_snapshot",
    "main",
    "register",
    "render_layers",
    "repeat_intervals",
]

SNAPSHOT_MAX_BYTES = 16 * 1024 * 1024
"""Largest stats snapshot read (file or URL)."""
DEFAULT_MAX_PAGES = 20
"""Pages of the logs API read by default (each one REST request)."""
DEFAULT_PER_PAGE = 50
"""Log entries asked for per page. Cloudflare documents no maximum for ``per_page``; 50 is a size any list
endpoint of the API accepts."""
COVERAGE_TARGET = 0.95
"""The share of repeats a recommended TTL covers."""

_LAYER_TITLES = (("kv_read", "KV read"), ("gateway", "gateway hit"), ("provider", "provider"), ("kv_write", "KV write"))
_STEPS = (60, 300, 900, 1800, 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)
"""TTLs a recommendation is rounded up to (1 min .. 30 days, the gateway's cache maximum)."""


# -- the stats snapshot -----------------------------------------------------------------------------


def _check_snapshot(data: Any, source: str) -> dict[str, dict[str, Any]]:
    from dualcache._exceptions import InvalidInputError

    if not isinstance(data, Mapping) or not all(isinstance(v, Mapping) for v in data.values()):
        raise InvalidInputError(f"{source}: not a stats snapshot (a JSON object of operation -> counters)")
    needed = ("requests", "kv_hits", "gateway_hits", "provider_calls", "coalesced", "errors", "failures")
    for name, row in data.items():
        missing = [k for k in needed if not isinstance(row.get(k), int) or isinstance(row.get(k), bool)]
        if missing:
            raise InvalidInputError(
                f"{source}: operation {name!r} lacks integer counter(s) {', '.join(missing)}; "
                "pass the JSON of cache.stats.snapshot()"
            )
    return {str(k): dict(v) for k, v in data.items()}


def load_snapshot(source: str, *, timeout: float = 10.0, transport: Any = None) -> dict[str, dict[str, Any]]:
    """Read a stats snapshot from a file path or an ``http(s)://`` URL serving it (no redirect followed).

    ``transport`` is the ``httpx`` transport of the URL's request (tests pass an ``httpx.MockTransport``).

    Raises:
        InvalidInputError: the file or answer is not a snapshot (the message names the source).
        BackendUnavailableError: the URL could not be read.
    """
    import httpx

    from dualcache._exceptions import BackendUnavailableError, InvalidInputError

    if source.startswith(("http://", "https://")):
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False, transport=transport) as client:
                response = client.get(source, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"stats {source}: {type(exc).__name__}: {exc}", backend="stats") from None
        if response.status_code != 200:
            raise BackendUnavailableError(f"stats {source}: HTTP {response.status_code}", backend="stats")
        if len(response.content) > SNAPSHOT_MAX_BYTES:
            raise InvalidInputError(f"stats {source}: answer over {SNAPSHOT_MAX_BYTES} bytes")
        raw = response.content
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"stats file {source!r} does not exist; pass a saved snapshot or a URL")
        if path.stat().st_size > SNAPSHOT_MAX_BYTES:
            raise InvalidInputError(f"stats file {source!r} is over {SNAPSHOT_MAX_BYTES} bytes")
        raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"stats {source}: not JSON ({exc})") from None
    return _check_snapshot(data, f"stats {source}")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}" if float(value) >= 10 else f"{float(value):.2f}"


def render_layers(snapshot: Mapping[str, Mapping[str, Any]]) -> str:
    """Render a snapshot: the counters table (hit rates, cost, saved), skips per layer, latency per layer.

    Latency columns are ``p50/p99`` in milliseconds of the layers timed so far (``-`` where none was).
    """
    from dualcache._stats import render_report

    lines = [render_report(snapshot), ""]
    header = f"{'operation':<24}{'KV skip':>8}{'GW skip':>8}{'prov skip':>10}{'KV w drop':>10}{'upstream':>9}"
    lines += [header, "-" * len(header)]
    for name, c in snapshot.items():
        lines.append(
            f"{name:<24}{int(c.get('kv_skipped', 0)):>8}{int(c.get('gateway_skipped', 0)):>8}"
            f"{int(c.get('provider_skipped', 0)):>10}{int(c.get('kv_write_dropped', 0)):>10}"
            f"{int(c.get('upstream_requests', 0)):>9}"
        )
    header = f"{'latency ms (p50/p99)':<24}" + "".join(f"{title:>20}" for _, title in _LAYER_TITLES)
    lines += ["", header, "-" * len(header)]
    for name, c in snapshot.items():
        latency = c.get("latency") or {}
        cells = []
        for layer, _ in _LAYER_TITLES:
            row = latency.get(layer)
            cells.append(
                f"{_ms(row.get('p50_ms'))}/{_ms(row.get('p99_ms'))} ({int(row.get('count', 0))})"
                if isinstance(row, Mapping)
                else "-"
            )
        lines.append(f"{name:<24}" + "".join(f"{cell:>20}" for cell in cells))
    return "\n".join(lines)


# -- the gateway logs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayLogPage:
    """What :func:`fetch_gateway_logs` read.

    Attributes:
        items: The log entries, as the API returned them (newest first).
        pages: Pages read (REST requests sent).
        total: ``result_info.total_count`` of the first page, when the API sent it.
        complete: Whether every entry matching was read (else ``max_pages`` or the budget stopped it).
    """

    items: list[dict[str, Any]]
    pages: int
    total: int | None
    complete: bool


async def fetch_gateway_logs(
    client: Any,
    *,
    api_base_url: str,
    account_id: str,
    gateway_id: str,
    api_token: str,
    max_pages: int = DEFAULT_MAX_PAGES,
    per_page: int = DEFAULT_PER_PAGE,
    budget: Any = None,
    start_date: str | None = None,
) -> GatewayLogPage:
    """Read a gateway's log entries, newest first, at most ``max_pages`` pages of ``per_page``.

    Each page is one request taken from ``budget`` (a :class:`~dualcache.RequestBudget`; the token's shared
    one when ``None``) without waiting: a spent budget stops the reading, and what was read is returned
    (``complete`` false).

    Args:
        client: An ``httpx.AsyncClient``.
        api_base_url: The Cloudflare API base (``https://api.cloudflare.com/client/v4``, or the emulator's).
        account_id: The account id.
        gateway_id: The gateway id.
        api_token: A token with AI Gateway Read.
        max_pages: Most pages read (>= 1).
        per_page: Entries per page (1..1000).
        budget: The request budget; ``RequestBudget.for_token(api_token)`` when ``None``.
        start_date: Only entries created at or after this ISO-8601 time.

    Raises:
        InvalidInputError: ``max_pages`` or ``per_page`` out of range (before any I/O).
        BackendError: the API answered an error (401/403: the token lacks AI Gateway Read).
    """
    from urllib.parse import quote

    import httpx

    from dualcache._budget import RequestBudget
    from dualcache._exceptions import BackendUnavailableError, BadResponseError, InvalidInputError, SkippedError
    from dualcache._kv import raise_for_status

    if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
        raise InvalidInputError(f"max_pages={max_pages!r}: must be an integer >= 1")
    if isinstance(per_page, bool) or not isinstance(per_page, int) or not 1 <= per_page <= 1000:
        raise InvalidInputError(f"per_page={per_page!r}: must be an integer 1..1000")
    gate = budget if budget is not None else RequestBudget.for_token(api_token, api_base_url=api_base_url)
    url = (
        f"{api_base_url.rstrip('/')}/accounts/{quote(account_id, safe='')}/ai-gateway/gateways/"
        f"{quote(gateway_id, safe='')}/logs"
    )
    backend = "ai-gateway logs"
    items: list[dict[str, Any]] = []
    total: int | None = None
    pages = 0
    for page in range(1, max_pages + 1):
        try:
            await gate.acquire(0.0, backend=backend)
        except SkippedError:
            return GatewayLogPage(items, pages, total, False)
        params: dict[str, str | int] = {
            "page": page,
            "per_page": per_page,
            "order_by": "created_at",
            "order_by_direction": "desc",
        }
        if start_date is not None:
            params["start_date"] = start_date
        try:
            response = await client.get(url, params=params, headers={"authorization": f"Bearer {api_token}"})
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"{backend}: {type(exc).__name__}", backend=backend) from None
        pages += 1
        gate.observe(response.status_code, response.headers)
        raise_for_status(response, backend=backend, what="list")
        try:
            body = response.json()
        except ValueError:
            raise BadResponseError(f"{backend}: page {page} is not JSON", backend=backend) from None
        result = body.get("result") if isinstance(body, Mapping) else None
        if not isinstance(result, list):
            raise BadResponseError(f"{backend}: page {page} has no result list", backend=backend)
        info = body.get("result_info") if isinstance(body.get("result_info"), Mapping) else {}
        if page == 1 and isinstance(info.get("total_count"), int):
            total = int(info["total_count"])
        items.extend(dict(i) for i in result if isinstance(i, Mapping))
        if len(result) < per_page or (total is not None and len(items) >= total):
            return GatewayLogPage(items, pages, total, True)
    return GatewayLogPage(items, pages, total, total is not None and len(items) >= total)


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _metadata(value: Any) -> Mapping[str, Any]:
    # The API documents metadata as a string (the JSON the request sent); an object is accepted too.
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, Mapping) else {}
    return {}


def repeat_intervals(items: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group log entries by operation and request; return ``{operation: {requests, entries, unidentified,
    cached, intervals}}``.

    ``requests`` counts distinct requests, ``entries`` the entries with an operation, ``unidentified`` those
    without a ``request`` id in their metadata (sent by other clients, or older runtimes: not grouped),
    ``cached`` the gateway cache hits; ``intervals`` are the seconds between consecutive entries of one
    request, sorted. Entries without an operation in their metadata are left out.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        meta = _metadata(item.get("metadata"))
        operation = meta.get("operation")
        created = _parse_time(item.get("created_at"))
        if not isinstance(operation, str) or created is None:
            continue
        row = out.setdefault(operation, {"requests": 0, "entries": 0, "unidentified": 0, "cached": 0, "intervals": []})
        row["entries"] += 1
        row["cached"] += 1 if item.get("cached") is True else 0
        request = meta.get("request")
        if not isinstance(request, str) or not request:
            row["unidentified"] += 1
            continue
        groups.setdefault(operation, {}).setdefault(request, []).append(created)
    for operation, requests in groups.items():
        intervals: list[float] = []
        for times in requests.values():
            times.sort()
            intervals.extend(b - a for a, b in zip(times, times[1:], strict=False))
        out[operation]["requests"] = len(requests)
        out[operation]["intervals"] = sorted(intervals)
    return out


def _share_within(intervals: Sequence[float], seconds: float) -> float:
    return sum(1 for i in intervals if i <= seconds) / len(intervals)


def _quantile(intervals: Sequence[float], q: float) -> float:
    return intervals[max(0, math.ceil(q * len(intervals)) - 1)]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            # Whole units when within 5 % of one (created_at has second precision; the clock moves on meanwhile).
            return f"{value:.0f} {unit}" if abs(value - round(value)) < 0.05 or value >= 10 else f"{value:.1f} {unit}"
    return f"{seconds:.0f} s"


def _pct(share: float) -> str:
    return f"{100 * share:.0f} %"


@dataclass(frozen=True, slots=True)
class TTLAdvice:
    """The TTL advice of one operation.

    Attributes:
        operation: The operation.
        requests: Distinct requests seen in the logs.
        repeats: Intervals between repeats of one request.
        p50: Median repeat interval in seconds (``None`` without repeats).
        p95: 95th percentile repeat interval in seconds.
        kv_ttl: The policy's KV TTL (``None``: KV off).
        kv_coverage: Share of repeats within ``kv_ttl``.
        gateway_ttl: The policy's gateway TTL (``None``: gateway cache off).
        gateway_coverage: Share of repeats within ``gateway_ttl``.
        recommended_ttl: The TTL covering :data:`COVERAGE_TARGET` of the repeats, rounded up to a round step.
        text: The advice in one line.
    """

    operation: str
    requests: int
    repeats: int
    p50: float | None
    p95: float | None
    kv_ttl: int | None
    kv_coverage: float | None
    gateway_ttl: int | None
    gateway_coverage: float | None
    recommended_ttl: int | None
    text: str


def advise_ttls(intervals: Mapping[str, Mapping[str, Any]], policies: Any = None) -> list[TTLAdvice]:
    """Hold each operation's repeat intervals (:func:`repeat_intervals`) against its policy's TTLs.

    Args:
        intervals: What :func:`repeat_intervals` returned.
        policies: The :class:`~dualcache.Policies` in force; the defaults when ``None``.
    """
    from dualcache._policy import GatewayMode, Policies

    policies = policies if policies is not None else Policies()
    advice: list[TTLAdvice] = []
    for operation, row in intervals.items():
        gaps: list[float] = list(row["intervals"])
        try:
            policy = policies.for_operation(operation)
        except ValueError:  # an operation these policies do not declare (another service's): no TTL to compare
            policy = None
        kv_ttl = policy.kv_ttl if policy is not None and policy.kv else None
        gw_ttl = policy.gateway_ttl if policy is not None and policy.gateway is GatewayMode.CACHE else None
        seen = f"{row['requests']} request(s), {len(gaps)} repeat(s)"
        if row.get("unidentified"):
            seen += f", {row['unidentified']} entr(ies) without a request id"
        if not gaps:
            advice.append(
                TTLAdvice(
                    operation,
                    row["requests"],
                    0,
                    None,
                    None,
                    kv_ttl,
                    None,
                    gw_ttl,
                    None,
                    None,
                    f"{operation}: {seen}: no request was repeated in the logs read; a longer TTL would not pay",
                )
            )
            continue
        p50, p95 = _quantile(gaps, 0.5), _quantile(gaps, COVERAGE_TARGET)
        recommended = next((s for s in _STEPS if s >= p95), _STEPS[-1])
        kv_cov = _share_within(gaps, kv_ttl) if kv_ttl is not None else None
        gw_cov = _share_within(gaps, gw_ttl) if gw_ttl is not None else None
        parts = [
            f"{operation}: {seen}; {_pct(_share_within(gaps, 3600))} of repeats within 1 h, median {_duration(p50)}"
        ]
        current = [(name, ttl, cov) for name, ttl, cov in (("kv_ttl", kv_ttl, kv_cov), ("gateway_ttl", gw_ttl, gw_cov))]
        for name, ttl, cov in current:
            if ttl is not None and cov is not None:
                parts.append(f"current {name} {_duration(ttl)} covers {_pct(cov)}")
        best = max((cov for _, ttl, cov in current if cov is not None), default=None)
        covered = _pct(_share_within(gaps, recommended))
        if best is None:
            parts.append(f"no cache holds it now; a TTL of {_duration(recommended)} would cover {covered}")
        elif best >= COVERAGE_TARGET:
            parts.append(f"keep it ({_duration(recommended)} would already cover {covered})")
        else:
            name = "kv_ttl" if kv_ttl is not None else "gateway_ttl"
            parts.append(f"recommend {name} {_duration(recommended)} (covers {covered})")
        if kv_ttl is not None:
            parts.append("the gateway logs only what KV missed")
        advice.append(
            TTLAdvice(
                operation,
                row["requests"],
                len(gaps),
                p50,
                p95,
                kv_ttl,
                kv_cov,
                gw_ttl,
                gw_cov,
                recommended,
                "; ".join(parts),
            )
        )
    return advice


def _histogram_svg(advice: Sequence[TTLAdvice], intervals: Mapping[str, Mapping[str, Any]]) -> str:
    """An HTML page with one inline-SVG bar chart per operation: repeats per interval step."""
    from html import escape

    sections = []
    edges = (0, *_STEPS, math.inf)
    for a in advice:
        gaps = list(intervals[a.operation]["intervals"])
        counts = [
            sum(1 for g in gaps if lo < g <= hi or (lo == 0 and g == 0))
            for lo, hi in zip(edges, edges[1:], strict=False)
        ]
        top = max(counts, default=0) or 1
        bars = []
        for i, n in enumerate(counts):
            h = round(120 * n / top)
            label = f"≤{_duration(edges[i + 1])}" if math.isfinite(edges[i + 1]) else ">30 d"
            bars.append(
                f'<rect x="{i * 52 + 4}" y="{130 - h}" width="44" height="{h}" fill="#f38020"><title>{n}</title></rect>'
                f'<text x="{i * 52 + 26}" y="146" font-size="9" text-anchor="middle">{escape(label)}</text>'
                f'<text x="{i * 52 + 26}" y="{126 - h}" font-size="9" text-anchor="middle">{n}</text>'
            )
        sections.append(
            f"<h2>{escape(a.operation)}</h2><p>{escape(a.text)}</p>"
            f'<svg width="{len(counts) * 52 + 8}" height="152" role="img">{"".join(bars)}</svg>'
        )
    return (
        "<!doctype html><meta charset=utf-8><title>dualcache: repeat intervals</title>"
        "<body style='font-family:sans-serif'><h1>Repeat intervals per operation</h1>" + "".join(sections)
    )


# -- the command ------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``dualcache report``."""
    parser = subparsers.add_parser(
        "report",
        help="per-operation, per-layer report from a service's stats; TTL advice from the AI Gateway logs",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--stats", metavar="SOURCE", help="a saved stats snapshot (JSON file) or a URL serving one")
    parser.add_argument(
        "--gateway-logs", action="store_true", help="read the AI Gateway logs and give a TTL recommendation"
    )
    parser.add_argument("--outputs", metavar="PATH", help="stack outputs (default: $DUALCACHE_OUTPUTS, if set)")
    parser.add_argument("--account-id", help="Cloudflare account id (default: from the outputs)")
    parser.add_argument("--gateway-id", help="AI Gateway id (default: from the outputs)")
    parser.add_argument("--api-base-url", help="Cloudflare API base (default: from the outputs, else Cloudflare's)")
    parser.add_argument("--max-pages", type=int, default=DEFAULT_MAX_PAGES, help="most log pages read (REST requests)")
    parser.add_argument("--per-page", type=int, default=DEFAULT_PER_PAGE, help="log entries per page")
    parser.add_argument("--since", metavar="ISO8601", help="only log entries created at or after this time")
    parser.add_argument("--html", metavar="PATH", help="also write an HTML page charting the repeat intervals")
    parser.set_defaults(func=main)


def _outputs(args: argparse.Namespace) -> Any:
    from dualcache._outputs import OUTPUTS_ENV_VAR, StackOutputs

    if args.outputs:
        return StackOutputs.load(args.outputs)
    if os.environ.get(OUTPUTS_ENV_VAR, "").strip():
        return StackOutputs.from_env()
    return None


async def _gateway_report(args: argparse.Namespace) -> tuple[str, str | None]:
    import httpx

    from dualcache._exceptions import ConfigError
    from dualcache._outputs import DEFAULT_API_BASE_URL, check_base_url

    outputs = _outputs(args)
    account = args.account_id or (outputs.account_id if outputs is not None else None)
    gateway = args.gateway_id or (outputs.gateway_id if outputs is not None else None)
    if not account or not gateway:
        raise ConfigError(
            "--gateway-logs needs the account and gateway: pass --account-id and --gateway-id, or --outputs "
            "(or set DUALCACHE_OUTPUTS)"
        )
    token = os.environ.get("CLOUDFLARE_API_TOKEN", "")
    if not token:
        raise ConfigError("--gateway-logs needs CLOUDFLARE_API_TOKEN (a token with AI Gateway Read)")
    base = check_base_url(
        args.api_base_url or (outputs.api_base_url if outputs is not None else DEFAULT_API_BASE_URL),
        role="api_base_url",
    )
    async with httpx.AsyncClient(timeout=30.0) as client:
        page = await fetch_gateway_logs(
            client,
            api_base_url=base,
            account_id=account,
            gateway_id=gateway,
            api_token=token,
            max_pages=args.max_pages,
            per_page=args.per_page,
            start_date=args.since,
        )
    intervals = repeat_intervals(page.items)
    advice = advise_ttls(intervals, outputs.policies if outputs is not None else None)
    of = f" of {page.total}" if page.total is not None else ""
    head = f"AI Gateway {gateway}: {len(page.items)}{of} log entries read in {page.pages} page(s)"
    if not page.complete:
        head += f" (stopped at --max-pages {args.max_pages} or the request budget: the newest entries only)"
    lines = [head, *(a.text for a in advice)] if advice else [head, "no entry carries dualcache's metadata"]
    return "\n".join(lines), (_histogram_svg(advice, intervals) if args.html else None)


def main(args: argparse.Namespace) -> int:
    """Run ``dualcache report``; return the exit status."""
    from dualcache._exceptions import InvalidInputError

    if not args.stats and not args.gateway_logs:
        raise InvalidInputError("nothing to report: pass --stats SOURCE and/or --gateway-logs")
    if args.html and not args.gateway_logs:
        raise InvalidInputError("--html charts the gateway logs' repeat intervals: pass --gateway-logs too")
    if isinstance(args.max_pages, int) and args.max_pages < 1:
        raise InvalidInputError(f"--max-pages {args.max_pages}: must be >= 1")
    if isinstance(args.per_page, int) and not 1 <= args.per_page <= 1000:
        raise InvalidInputError(f"--per-page {args.per_page}: must be 1..1000")
    if args.html and not Path(args.html).resolve().parent.is_dir():
        raise InvalidInputError(f"--html {args.html!r}: its folder does not exist")
    if args.since is not None and _parse_time(args.since) is None:
        raise InvalidInputError(f"--since {args.since!r}: must be an ISO-8601 time such as 2026-12-01T00:00:00Z")
    out: list[str] = []
    if args.stats:
        out.append(render_layers(load_snapshot(args.stats)))
    if args.gateway_logs:
        text, html = asyncio.run(_gateway_report(args))
        out.append(text)
        if html is not None:
            try:
                Path(args.html).write_text(html, encoding="utf-8")
            except OSError as exc:
                raise InvalidInputError(f"--html {args.html!r}: cannot write it: {exc.strerror or exc}") from None
            out.append(f"chart written to {args.html}")
    print("\n\n".join(out))
    return 0
