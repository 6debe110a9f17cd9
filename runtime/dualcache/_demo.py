"""``dualcache demo``: the offline demo — emulator in-process, the dev plan, a day of traffic, the figures.

The workload is shaped like a job-matching service's day (per day: 600 embeddings — 500 job descriptions and
100 resumes —, 200 job analyses, 100 generations, 20 PDF and 10 image resumes, 50 spam checks), with
the reuse that makes caching pay: job descriptions shared by many users (and reposted under new ids),
users revisiting the jobs they analysed, and bursts of concurrent identical requests (a resume upload
firing several matches at once, double clicks). It is generated from ``--seed`` and replayed in order,
bursts concurrently, while the emulator's clock moves through the day — so a run is reproducible.

KV goes through the emulator's data-plane API by default (as it goes through the stack's own Worker in
production: no Cloudflare API request on the cache path); ``--kv rest`` replays the same workload over the
Cloudflare REST API instead, for comparison.

This module stays cheap to import: rich, the emulator and the plan are imported inside the command.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KV_PATHS",
    "DemoResult",
    "Step",
    "build_workload",
    "kv_requests",
    "minimal_pdf",
    "register",
    "render_tables",
    "replay",
    "run_demo",
]

KV_PATHS = ("dataplane", "rest")
"""How the demo reaches KV: the data-plane Worker API (the default, as in production) or the REST API."""

DAILY_VOLUME: dict[str, int] = {
    "embed_job": 500,
    "embed_resume": 100,
    "job_analysis": 200,
    "application_generation": 100,
    "resume_pdf": 20,
    "resume_image": 10,
    "spam_detection": 50,
}
"""Requests per day of a job-matching service, per kind."""

# The expected costs (per month of 30 days: embeddings $18 -> $5-7, job analysis $180 -> $45-63,
# generation $60 -> $60), as per-day figures: (cost without caches, with caches low, high, hit rate text).
SEED_ESTIMATES: dict[str, tuple[float, float, float, str]] = {
    "embeddings": (0.60, 5 / 30, 7 / 30, "60-70%"),
    "job_analysis": (6.00, 45 / 30, 63 / 30, "65-75%"),
    "application_generation": (2.00, 2.00, 2.00, "0%"),
}

_TITLES = ["Backend Engineer", "Data Scientist", "Frontend Developer", "SRE", "ML Engineer", "Product Designer"]
_LEVELS = ["Junior", "Mid-level", "Senior", "Staff", "Lead"]
_COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell", "Cyberdyne", "Soylent"]
_SKILLS = [
    "Python",
    "Go",
    "Rust",
    "TypeScript",
    "Kubernetes",
    "PostgreSQL",
    "Kafka",
    "React",
    "PyTorch",
    "Terraform",
    "GraphQL",
    "Redis",
    "AWS",
    "Cloudflare Workers",
]
_CITIES = ["Berlin", "Lisbon", "Austin", "Toronto", "Remote", "London", "Singapore"]
_NAMES = ["Ada", "Grace", "Linus", "Guido", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger"]


@dataclass(frozen=True, slots=True)
class Call:
    """One call of the runtime API."""

    kind: str
    """``embed``, ``embed_many``, ``analyze``, ``spam``, ``generate``, ``resume_pdf``, ``resume_image``."""
    args: dict[str, Any]
    requests: int = 1
    """How many requests of its operation the call makes (``embed_many``: one per text)."""


@dataclass(frozen=True, slots=True)
class Step:
    """Calls made at the same moment: one, or a burst run concurrently."""

    calls: tuple[Call, ...]


@dataclass
class DemoResult:
    """What a run measured.

    Attributes:
        snapshot: :meth:`dualcache.Stats.snapshot` of the run.
        emulator: The emulator's own counters (``control.stats()``).
        planned: Requests per operation the workload contained.
        days: Days replayed.
        prices: The price table used, per operation.
        scale: Fraction of the daily volume replayed (the expected figures are scaled alike).
        kv: How KV was reached, one of :data:`KV_PATHS`.
    """

    snapshot: dict[str, dict[str, Any]]
    emulator: dict[str, Any]
    planned: dict[str, int]
    days: int
    prices: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    kv: str = "dataplane"


def _job_text(rng: random.Random) -> str:
    level, title = rng.choice(_LEVELS), rng.choice(_TITLES)
    company, city = rng.choice(_COMPANIES), rng.choice(_CITIES)
    skills = rng.sample(_SKILLS, 4)
    years = rng.randint(1, 10)
    ref = rng.randrange(10**6)
    return (
        f"{level} {title} at {company} ({city}), ref {ref:06d}. You will design, build and run services used by "
        f"millions of people. Requirements: {years}+ years of experience with {', '.join(skills[:3])}; "
        f"experience with {skills[3]} is a plus. We offer a competitive salary, equity, a learning budget and "
        f"flexible hours. {company} is an equal opportunity employer. "
        + " ".join(rng.choice(["Ownership.", "Curiosity.", "Craft.", "Kindness.", "Impact."]) for _ in range(6))
    )


def _resume_text(rng: random.Random, user: str, version: int) -> str:
    name = f"{rng.choice(_NAMES)} {user}"
    skills = ", ".join(rng.sample(_SKILLS, 5))
    return (
        f"{name} - resume v{version}. Software engineer with {rng.randint(1, 15)} years of experience. "
        f"Skills: {skills}. Experience: {rng.choice(_COMPANIES)} ({rng.randint(2012, 2020)}-present), "
        f"{rng.choice(_COMPANIES)} ({rng.randint(2005, 2012)}-{rng.randint(2012, 2020)}). "
        f"Education: BSc Computer Science, {rng.choice(_CITIES)} University."
    )


def _spam_messages(description: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Decide whether this job posting is spam. Answer in JSON: is_spam, reasons."},
        {"role": "user", "content": description},
    ]


def _analysis_messages(resume: str, description: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Rate the candidate's fit for the job. Answer in JSON: score, strengths, gaps."},
        {"role": "user", "content": f"Resume:\n{resume}\n\nJob:\n{description}"},
    ]


def _generation_messages(resume: str, description: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Write a tailored cover letter. Answer in JSON: subject, body."},
        {"role": "user", "content": f"Resume:\n{resume}\n\nJob:\n{description}"},
    ]


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def minimal_pdf(lines: Sequence[str]) -> bytes:
    """Return a one-page PDF showing ``lines`` in Helvetica (ASCII text), for resumes in the demo."""
    ops = " T* ".join(f"({_pdf_escape(line.encode('ascii', 'replace').decode())}) Tj" for line in lines)
    stream = f"BT /F1 11 Tf 14 TL 50 780 Td {ops} ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Resources << /Font << /F1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def build_workload(seed: int, days: int, *, scale: float = 1.0) -> list[list[Step]]:
    """Return the steps of each day, generated from ``seed`` (same seed, same workload).

    Args:
        seed: Seed of the generator.
        days: Days of traffic.
        scale: Fraction of the daily volume (1.0 = :data:`DAILY_VOLUME`; tests use less).
    """
    rng = random.Random(seed)
    users = [f"user-{i:03d}" for i in range(_scaled(50, scale))]
    resumes: dict[str, str] = {}
    jobs: dict[str, str] = {}  # job id -> description
    history: dict[str, list[str]] = {}  # user -> jobs analysed
    spam_checked: list[str] = []
    all_days: list[list[Step]] = []

    def popular_job() -> str:
        ids = list(jobs)
        # Recent jobs are the popular ones: weight by recency (later ids weigh more).
        return rng.choices(ids, weights=[1 + i for i in range(len(ids))])[0]

    def resume_of(user: str) -> str:
        if user not in resumes:
            resumes[user] = _resume_text(rng, user, 1)
        return resumes[user]

    for day in range(days):
        steps: list[Step] = []
        # New postings of the day; one in ten reposts an existing description under a new id.
        new_ids = []
        for i in range(_scaled(150, scale)):
            job_id = f"job-{day:02d}-{i:03d}"
            if jobs and rng.random() < 0.1:
                jobs[job_id] = jobs[rng.choice(list(jobs))]
            else:
                jobs[job_id] = _job_text(rng)
            new_ids.append(job_id)
        # Ingestion: new postings embedded in batches of 50 (embed_many).
        ingestion: list[Step] = []
        for i in range(0, len(new_ids), 50):
            texts = [jobs[j] for j in new_ids[i : i + 50]]
            ingestion.append(Step((Call("embed_many", {"texts": texts}, len(texts)),)))
        budget = _scaled(DAILY_VOLUME["embed_job"], scale) - len(new_ids)
        # Bursts: a job description pasted from elsewhere, matched by several requests at once.
        for _ in range(_scaled(5, scale)):
            text = _job_text(rng)
            steps.append(Step(tuple(Call("embed", {"text": text}) for _ in range(6))))
            budget -= 6
        for _ in range(max(0, budget)):
            text = jobs[popular_job()] if rng.random() < 0.55 else _job_text(rng)
            steps.append(Step((Call("embed", {"text": text}),)))
        # Resumes: uploads of a new version fire three matches at once; other requests re-embed.
        budget = _scaled(DAILY_VOLUME["embed_resume"], scale)
        for _ in range(_scaled(20, scale)):
            user = rng.choice(users)
            version = int(resume_of(user).split(" resume v")[1].split(".")[0]) + 1
            resumes[user] = _resume_text(rng, user, version)
            steps.append(Step(tuple(Call("embed", {"text": resumes[user]}) for _ in range(3))))
            budget -= 3
        for _ in range(max(0, budget)):
            steps.append(Step((Call("embed", {"text": resume_of(rng.choice(users))}),)))
        # Job analyses: users revisit what they analysed; some double-click.
        budget = _scaled(DAILY_VOLUME["job_analysis"], scale)
        bursts = _scaled(10, scale)
        while budget > 0:
            user = rng.choice(users)
            seen = history.setdefault(user, [])
            job_id = rng.choice(seen) if seen and rng.random() < 0.7 else popular_job()
            if job_id not in seen:
                seen.append(job_id)
            args = {
                "user_id": user,
                "job_id": job_id,
                "messages": _analysis_messages(resume_of(user), jobs[job_id]),
            }
            n = 2 if bursts > 0 and budget >= 2 else 1
            bursts -= 1 if n == 2 else 0
            steps.append(Step(tuple(Call("analyze", args) for _ in range(n))))
            budget -= n
        # Spam checks: new postings first (reposts share their text), then re-checks.
        for i in range(_scaled(DAILY_VOLUME["spam_detection"], scale)):
            if spam_checked and (i % 10 >= 7 or len(spam_checked) >= len(jobs)):
                job_id = rng.choice(spam_checked)
            else:
                job_id = new_ids[i % len(new_ids)]
                spam_checked.append(job_id)
            steps.append(Step((Call("spam", {"job_id": job_id, "messages": _spam_messages(jobs[job_id])}),)))
        for _ in range(_scaled(DAILY_VOLUME["application_generation"], scale)):
            user, job_id = rng.choice(users), popular_job()
            args = {"user_id": user, "messages": _generation_messages(resume_of(user), jobs[job_id])}
            steps.append(Step((Call("generate", args),)))
        for _ in range(_scaled(DAILY_VOLUME["resume_pdf"], scale)):
            user = rng.choice(users)
            lines = [line.strip() for line in resume_of(user).split(". ")]
            steps.append(Step((Call("resume_pdf", {"pdf": minimal_pdf(lines), "user_id": user}),)))
        for _ in range(_scaled(DAILY_VOLUME["resume_image"], scale)):
            user = rng.choice(users)
            url = f"https://uploads.example.com/resumes/{user}/{rng.randrange(10**6):06d}.png"
            steps.append(Step((Call("resume_image", {"image_url": url, "user_id": user}),)))
        rng.shuffle(steps)
        all_days.append(ingestion + steps)
    return all_days


_OPERATION_OF = {
    "embed": "embeddings",
    "embed_many": "embeddings",
    "analyze": "job_analysis",
    "spam": "spam_detection",
    "generate": "application_generation",
    "resume_pdf": "resume_parsing",
    "resume_image": "resume_parsing",
}


def planned_requests(workload: list[list[Step]]) -> dict[str, int]:
    """Requests per operation in ``workload``."""
    counts: Counter[str] = Counter()
    for day in workload:
        for step in day:
            for call in step.calls:
                counts[_OPERATION_OF[call.kind]] += call.requests
    return dict(counts)


async def _run_call(cache: Any, call: Call) -> None:
    match call.kind:
        case "embed":
            await cache.embed(call.args["text"])
        case "embed_many":
            await cache.embed_many(call.args["texts"])
        case "analyze":
            await cache.analyze_job(**call.args)
        case "spam":
            await cache.detect_spam(**call.args)
        case "generate":
            await cache.generate_application(**call.args)
        case "resume_pdf" | "resume_image":
            await cache.parse_resume(**call.args)
        case _:
            raise ValueError(f"unknown call kind {call.kind!r}")


def _check_kv(kv: str) -> str:
    if kv not in KV_PATHS:
        from dualcache._exceptions import ConfigError

        raise ConfigError(f"kv={kv!r}: must be one of {', '.join(KV_PATHS)}")
    return kv


async def replay(
    emulator: Any,
    workload: list[list[Step]],
    *,
    token: str,
    kv: str = "dataplane",
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Replay ``workload`` through a :class:`~dualcache.DualCache` pointed at ``emulator``; return its stats.

    The emulator's clock moves through each day as the steps are replayed, then to the next day. Queued
    KV writes are flushed before the stats are taken, so the emulator has seen every request of the run.

    Args:
        emulator: A started :class:`dualcache.local.Emulator`.
        workload: What :func:`build_workload` returned.
        token: The emulator's API token (KV over REST, and Workers AI).
        kv: ``"dataplane"`` (KV through the emulator's data-plane API, with its ``data_plane_token``) or
            ``"rest"`` (KV through the Cloudflare REST API).
        on_progress: Called with the number of requests of each step once it is served.

    Raises:
        ConfigError: ``kv`` is not one of :data:`KV_PATHS`.
    """
    from dualcache import DualCache

    _check_kv(kv)
    clock = emulator.state.clock
    data_plane_token = emulator.data_plane_token if kv == "dataplane" else None
    async with DualCache.from_outputs(
        emulator.outputs,
        api_token=token,
        data_plane_token=data_plane_token,
        openai_api_key="sk-local-demo",
        clock=clock.now,
    ) as cache:
        for day in workload:
            tick = 86_400 / max(1, len(day))
            for step in day:
                clock.advance(tick)
                if len(step.calls) == 1:
                    await _run_call(cache, step.calls[0])
                else:
                    await asyncio.gather(*(_run_call(cache, c) for c in step.calls))
                if on_progress is not None:
                    on_progress(sum(c.requests for c in step.calls))
        await cache.flush()
        return cache.stats.snapshot()


def kv_requests(emulator_stats: dict[str, Any]) -> dict[str, int]:
    """KV requests the emulator served, by path: ``rest`` (Cloudflare REST API) and ``dataplane``.

    Args:
        emulator_stats: ``Emulator.control.stats()`` (or :attr:`DemoResult.emulator`).
    """
    from dualcache.local._state import KV_OPERATIONS

    rest = emulator_stats.get("kv", {})
    plane = emulator_stats.get("data_plane", {})
    return {
        "rest": sum(int(rest.get(op, 0)) for op in KV_OPERATIONS),
        "dataplane": sum(int(plane.get(op, 0)) for op in KV_OPERATIONS),
    }


def run_demo(
    *,
    seed: int,
    days: int,
    project_dir: Path,
    scale: float = 1.0,
    kv: str = "dataplane",
    data_dir: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> DemoResult:
    """Start the emulator on a temporary data folder, replay the workload, return what was measured.

    Args:
        seed: Seed of the workload generator.
        days: Days of traffic.
        project_dir: Directory holding ``Pulumi.yaml`` (the dev stack's settings).
        scale: Fraction of the daily volume.
        kv: How KV is reached, one of :data:`KV_PATHS` (see :func:`replay`).
        data_dir: The emulator's data folder (default: a temporary one).
        on_progress: See :func:`replay`.
        on_total: Called once with the number of requests the workload holds.

    Raises:
        ConfigError: ``kv`` is not one of :data:`KV_PATHS`.
    """
    from dualcache import PriceTable
    from dualcache.local import Emulator

    _check_kv(kv)
    workload = build_workload(seed, days, scale=scale)
    planned = planned_requests(workload)
    if on_total is not None:
        on_total(sum(planned.values()))
    token = "demo-token"
    with tempfile.TemporaryDirectory(prefix="dualcache-demo-") as tmp:
        folder = data_dir or Path(tmp)
        with Emulator(stack="dev", project_dir=project_dir, data_dir=folder, token=token) as emu:
            snapshot = asyncio.run(replay(emu, workload, token=token, kv=kv, on_progress=on_progress))
            emulator_stats = emu.control.stats()
    prices = PriceTable().model_dump()
    return DemoResult(
        snapshot=snapshot, emulator=emulator_stats, planned=planned, days=days, prices=prices, scale=scale, kv=kv
    )


def _show_plan(console: Any, project_dir: Path) -> None:
    # The plan is the project's own `dualcache plan` (its infra/ package), in a subprocess: the library
    # never imports infra. Without a clone or the infra extra the demo goes on without it.
    from dualcache._cli_infra import run_infra_command
    from dualcache._exceptions import ConfigError

    try:
        done = run_infra_command("plan", ["--stack", "dev", "--project-dir", str(project_dir)], capture=True)
    except (ConfigError, ImportError) as exc:
        console.print(f"The dev plan is not available ({exc}); continuing without it.", style="yellow", markup=False)
        return
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        console.print(f"The dev plan failed ({reason}); continuing without it.", style="yellow", markup=False)
        return
    console.rule("The dev stack, as planned offline")
    console.print(_without_warnings(done.stdout), markup=False, highlight=False)


def _without_warnings(plan_text: str) -> str:
    """The plan text without its "Warnings:" block: what `pulumi up` would refuse does not matter offline."""
    kept: list[str] = []
    skipping = False
    for line in plan_text.splitlines(keepends=True):
        if line == "Warnings:\n":
            skipping = True
        elif skipping and not line.strip():
            skipping = False  # the blank line that ends the block goes with it
        elif not skipping:
            kept.append(line)
    return "".join(kept)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def render_tables(result: DemoResult) -> tuple[Any, Any]:
    """Return two rich Tables: traffic per layer, and cost with and without the caches beside the expected figures."""
    from rich.table import Table

    traffic = Table(title=f"Traffic, {result.days} day(s): KV -> AI Gateway -> provider")
    for name in ("operation", "requests", "KV hit rate", "gateway hit rate", "coalesced", "provider calls", "errors"):
        traffic.add_column(name, justify="left" if name == "operation" else "right")
    cost = Table(title="Cost (US$) with and without the caches, beside the expected savings")
    for name in ("operation", "without caches", "with caches", "saved", "expected hit rate", "expected cost"):
        cost.add_column(name, justify="left" if name == "operation" else "right")
    totals = Counter[str]()
    cost_without = cost_with = 0.0
    d = result.days * result.scale  # the expected figures are per day at full volume
    for op, c in result.snapshot.items():
        req = int(c["requests"])
        without, with_ = float(c["cost"]) + float(c["saved"]), float(c["cost"])
        traffic.add_row(
            op,
            str(req),
            _pct(int(c["kv_hits"]), req),
            _pct(int(c["gateway_hits"]), req),
            str(c["coalesced"]),
            str(c["provider_calls"]),
            str(c["errors"]),
        )
        seed = SEED_ESTIMATES.get(op)
        rate, seed_cost = (
            ("-", "not estimated")
            if seed is None
            else (
                seed[3],
                f"{seed[0] * d:.2f} -> {seed[1] * d:.2f}-{seed[2] * d:.2f}",
            )
        )
        cost.add_row(op, f"{without:.2f}", f"{with_:.2f}", _pct(without - with_, without), rate, seed_cost)
        for k in ("requests", "provider_calls", "coalesced", "errors"):
            totals[k] += int(c[k])
        cost_without += without
        cost_with += with_
    traffic.add_section()
    traffic.add_row(
        "total",
        str(totals["requests"]),
        "",
        "",
        str(totals["coalesced"]),
        str(totals["provider_calls"]),
        str(totals["errors"]),
    )
    full = sum(s[0] for s in SEED_ESTIMATES.values()) * d
    low = sum(s[1] for s in SEED_ESTIMATES.values()) * d
    high = sum(s[2] for s in SEED_ESTIMATES.values()) * d
    cost.add_section()
    cost.add_row(
        "total",
        f"{cost_without:.2f}",
        f"{cost_with:.2f}",
        _pct(cost_without - cost_with, cost_without),
        "",
        f"{full:.2f} -> {low:.2f}-{high:.2f} (3 ops)",
    )
    return traffic, cost


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dualcache._cli import find_project_dir
    from dualcache._exceptions import ConfigError

    if args.days < 1:
        raise ConfigError(f"--days {args.days}: must be >= 1")
    if not 0 < args.scale <= 10:
        raise ConfigError(f"--scale {args.scale}: must be > 0 and <= 10")
    project_dir = args.project_dir.resolve() if args.project_dir else find_project_dir()
    console = Console()
    if not console.is_terminal and console.width < 120:
        console = Console(width=120)  # piped output: wide enough for the tables
    console.rule("dualcache demo — offline, against the local emulator")
    console.print(
        f"seed {args.seed}, {args.days} day(s), volumes per day of a job-matching service"
        + (f" x {args.scale}" if args.scale != 1 else "")
    )
    _show_plan(console, project_dir)
    console.rule("Replaying the workload")
    if args.kv == "dataplane":
        console.print(
            "KV goes through the data-plane Worker API (the emulator's; in production, the stack's own Worker "
            "jobmatch-ai-dualcache-<stack>): no Cloudflare API request on the cache path."
        )
    else:
        console.print(
            "KV goes through the Cloudflare REST API (--kv rest, for comparison): every KV request counts "
            "against the account's 1,200 API requests per 5 minutes."
        )
    with Progress(
        TextColumn("requests"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("requests", total=None)
        result = run_demo(
            seed=args.seed,
            days=args.days,
            project_dir=project_dir,
            scale=args.scale,
            kv=args.kv,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    for table in render_tables(result):
        console.print(table)
    upstream = sum(int(v) for v in result.emulator["upstream"].values())
    console.print(
        f"The emulator saw {result.emulator['requests']} HTTP requests: {upstream} model calls "
        f"({', '.join(f'{m}: {n}' for m, n in sorted(result.emulator['upstream'].items()))}), "
        f"{result.emulator['gateway']['hits']} gateway cache hits."
    )
    surfaces, kv = result.emulator["surfaces"], kv_requests(result.emulator)
    served = sum(result.planned.values())
    console.print(
        f"Cloudflare API requests: {surfaces['api']} ({kv['rest']} of them KV); data-plane requests: "
        f"{surfaces['data_plane']} ({kv['dataplane']} KV); AI Gateway requests: {surfaces['gateway']}. "
        f"Per 1,000 demo requests: {1000 * surfaces['api'] / served:.0f} Cloudflare API, "
        f"{1000 * surfaces['data_plane'] / served:.0f} data plane."
    )
    console.print(
        "Prices per provider-answered request: "
        + ", ".join(f"{op} ${price:g}" for op, price in result.prices.items())
        + ". A hit costs nothing. Embeddings and spam verdicts are keyed by content in both layers, so the"
        " gateway only catches what KV cannot: reposted postings under new job ids (spam), KV failures,"
        " and other clients of the same gateway."
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``dualcache demo``."""
    from dualcache._cli import add_project_dir_argument

    parser = subparsers.add_parser(
        "demo",
        help="run the offline demo: emulator, dev plan, a day of traffic, per-operation figures",
        description="Start the local emulator, show the dev plan, replay traffic shaped like a job-matching "
        "service's day through the runtime, and print hit rates, provider calls and cost per operation.",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the workload generator (default 7)")
    parser.add_argument("--days", type=int, default=1, help="days of traffic to replay (default 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the daily volume (default 1.0)")
    parser.add_argument(
        "--kv",
        choices=KV_PATHS,
        default="dataplane",
        help="how KV is reached: the data-plane Worker API as in production (default), or the Cloudflare REST API",
    )
    add_project_dir_argument(parser)
    parser.set_defaults(func=_cmd_demo, extra="demo")
