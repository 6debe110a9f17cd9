"""The tracked code and docs are self-contained: they name no document the reader of the repository lacks.

Code, docstrings, comments, test names, bench scripts and Markdown say what the project does in its own
words. They never point at the design document the project started from ("the seed"), its spec file, a
reference sheet kept outside the repository ("the fact sheet", ``cloudflare-facts §2.1``) or a tracker
("the issue", "issue 10"). A random seed (``--seed``, a faults ``seed``) is not such a reference.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".js", ".mjs", ".ts", ".yaml", ".yml", "Makefile")

OUTSIDE_REFERENCE = re.compile(
    r"\bthe seed\b(?!\s+of\b)"  # "the seed of the generator" is a random seed
    r"|\bseed's\b"
    r"|\bseed (?:worker|record|format|configuration|field|json)"
    r"|\bnon-seed\b"
    r"|\bspec\.md\b"
    r"|\bspec's\b"
    r"|\bfact sheet\b"
    r"|\bcloudflare-facts\b"
    r"|\bfacts §"
    r"|\bpeers §"
    r"|\bthe issue\b"
    r"|\bissues? \d+"
    r"|\bissue's\b"
    r"|\bissue-\d+",
    re.IGNORECASE,
)
"""Phrases that point outside the repository, case-insensitive."""

# These files name the phrases they forbid (this one, and the README's own check).
EXEMPT = {"tests/test_self_contained.py", "tests/e2e/test_readme_example.py"}


def tracked_sources() -> list[str]:
    """Return the tracked source, doc and config files (``git ls-files``), without vendored ``node_modules``."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return sorted(
        p
        for p in out.split("\0")
        if p.endswith(SUFFIXES) and "node_modules/" not in p and p not in EXEMPT and (ROOT / p).is_file()
    )


def outside_references(text: str) -> list[tuple[int, str]]:
    """Return ``(line number, matched phrase)`` of every outside reference in ``text``."""
    return [
        (number, match.group(0))
        for number, line in enumerate(text.splitlines(), start=1)
        for match in OUTSIDE_REFERENCE.finditer(line)
    ]


def test_self_contained_pattern_flags_outside_references_and_spares_random_seeds() -> None:
    flagged = [
        "keeps the seed's keys",
        "as the seed does",
        "The defaults are SPEC.md's table",
        "SPEC's longest is 30 days",
        "not in the fact sheet",
        "(cloudflare-facts §4.4)",
        "envelope per facts §3",
        "Why (issue 10): cancelling",
        "corrupt records (issues 10 and 13)",
        "the issue's goal",
        "what the issue measured",
        "a seed record vs a compact one",
        'id="issue-10-example"',
    ]
    spared = [
        "--seed 3 --days 7",
        "seed: Seed of the generator.",
        "same seed, same workload",
        "the seed of the workload generator",
        "errors are drawn from a RNG seeded by `seed` (default 0)",
        "build_seed_embedding_record(text)",
        "SEED_EMBEDDING",
        "context.issue.number",
    ]
    assert [line for line in flagged if not outside_references(line)] == []
    assert [line for line in spared if outside_references(line)] == []


def test_self_contained_tracked_sources_name_no_outside_document() -> None:
    files = tracked_sources()
    assert any(p.endswith(".md") for p in files) and any(p.endswith(".py") for p in files)
    # The README and every reference page under docs/ are read (the pages are where the README's depth went).
    on_disk = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert on_disk and on_disk | {"README.md"} <= set(files), sorted(on_disk | {"README.md"} - set(files))
    hits = [
        f"{path}:{number}: {phrase!r}"
        for path in files
        for number, phrase in outside_references((ROOT / path).read_text(encoding="utf-8", errors="replace"))
    ]
    assert hits == [], "outside references (say it in the project's own words):\n" + "\n".join(hits)
