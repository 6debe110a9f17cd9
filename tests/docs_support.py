"""Reading the project's Markdown docs from tests: the README and the reference pages under ``docs/``.

Tests that run or compile a doc's code blocks find them here, by the page and the heading they sit under, so a
section that moves to another page moves its test with one edit.
"""

from __future__ import annotations

import re
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
README = PROJECT_DIR / "README.md"
DOCS = sorted((PROJECT_DIR / "docs").glob("*.md"))
"""The reference pages under ``docs/``."""

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
HEADING = re.compile(r"^(#{1,6}) (.+)$", re.M)


def prose(text: str) -> str:
    """Return ``text`` with its fenced code blocks blanked out (a ``# comment`` in a block is no heading), at
    the same offsets."""
    return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def section(path: Path, heading: str) -> str:
    """Return the section of ``path`` under the heading whose text starts with ``heading``, up to the next
    heading of the same or a higher level (its subsections included).

    Raises:
        AssertionError: No heading of ``path`` starts with ``heading``.
    """
    text = path.read_text(encoding="utf-8")
    headings = list(HEADING.finditer(prose(text)))
    for at, match in enumerate(headings):
        if match.group(2).startswith(heading):
            level = len(match.group(1))
            end = next((h.start() for h in headings[at + 1 :] if len(h.group(1)) <= level), len(text))
            return text[match.start() : end]
    raise AssertionError(f"{path.name} has no heading starting with {heading!r}")


def doc_block(path: Path, heading: str, containing: str = "", lang: str = "python") -> str:
    """Return the first ``lang`` block of the section under ``heading`` in ``path`` that contains ``containing``.

    Raises:
        AssertionError: The section does not exist or holds no such block.
    """
    for match in FENCE.finditer(section(path, heading)):
        if match.group(1) == lang and containing in match.group(2):
            return match.group(2)
    raise AssertionError(f"{path.name} has no {lang} block containing {containing!r} under {heading!r}")


def blocks(path: Path, lang: str) -> list[str]:
    """Return every ``lang`` fenced block of ``path``, in order."""
    return [m.group(2) for m in FENCE.finditer(path.read_text(encoding="utf-8")) if m.group(1) == lang]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Return the anchors of the headings of ``path`` (code blocks skipped)."""
    return {slug(h) for _, h in HEADING.findall(prose(path.read_text(encoding="utf-8")))}


def broken_links(path: Path) -> list[str]:
    """Return every relative link of ``path`` (outside code) whose file or ``#anchor`` does not exist."""
    text = prose(path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is no link
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no file {file_part})")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    return broken
