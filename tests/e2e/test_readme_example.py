"""The docs' code, run as written: the README's service and install examples, the emulator and SDK examples of
``docs/local.md`` against the emulator, and every `dualcache` command of the shell blocks of the README and
``docs/*.md`` (the offline ones run, the others are parsed). Also: every python block of them compiles, the
links of every page resolve (files and anchors) and the text refers to nothing outside the repository.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PROJECT_DIR, TOKEN

from dualcache import DualCache
from dualcache._cli import _build_parser
from infra.cli import main as infra_main
from tests.docs_support import DOCS, README, blocks, broken_links, doc_block

BGE = "@cf/baai/bge-base-en-v1.5"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
LOCAL = PROJECT_DIR / "docs" / "local.md"
PAGES = [README, *DOCS]
"""The README and the reference pages: every one is link-checked and has its code compiled or run."""


def _readme_example() -> str:
    return doc_block(README, "A complete example")


def _run(script: str, tmp_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run ``script`` (written under ``tmp_path``) in a subprocess from ``cwd`` (default ``tmp_path``)."""
    path = tmp_path / "readme_block.py"
    path.write_text(script, encoding="utf-8")
    cwd = cwd or tmp_path
    done = subprocess.run(
        [sys.executable, str(path)], env=env or dict(os.environ), cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_example_runs_against_the_emulator(emu: Any, tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(_readme_example(), encoding="utf-8")
    outputs = tmp_path / "outputs.dev.json"
    emu.outputs.dump(outputs)
    env = {
        **os.environ,
        "DUALCACHE_OUTPUTS": str(outputs),
        "CLOUDFLARE_API_TOKEN": TOKEN,
        "OPENAI_API_KEY": "sk-local",
    }
    env.pop("CF_AIG_TOKEN", None)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("best match: job-1") == 4
    assert done.stdout.count("summary: job-") == 2
    assert "spam verdict:" in done.stdout
    assert "forgot: 1 record(s) of user-42" in done.stdout  # the analysis; summaries and embeddings are global
    assert re.search(r"^embeddings\s+12\s", done.stdout, re.M), done.stdout
    assert re.search(r"^summarize_job\s+2\s.*unknown\s+unknown$", done.stdout, re.M), done.stdout
    assert re.search(r"^application_generation\s+0\s+–", done.stdout, re.M), done.stdout
    stats = emu.control.stats()
    # As the README says: the resume and the two jobs are embedded once (two model calls: one text, then
    # one batch of two), one analysis and one spam verdict reach the model, the rest coalesced; two
    # summaries; after forget_user, the new resume (one more embedding) and the analysis afresh.
    assert stats["upstream"] == {BGE: 3, LLAMA: 5}
    assert stats["kv"]["bulk_get"] == 2  # one per embed_many: the second one finds both jobs in KV
    session = emu.control.requests()
    assert any(r["method"] == "PUT" and r["path"].endswith("/values/session%3Aabc") for r in session), session
    assert asyncio.run(_stored_keys(emu)) == {
        "API_CACHE": ["spam:job-2", "summarize_job:%v1:job-1", "summarize_job:%v1:job-2"],
        "JOB_ANALYSIS_CACHE": ["analysis:user-42:job-1"],
    }


async def _stored_keys(emu: Any) -> dict[str, list[str]]:
    async with DualCache.from_outputs(emu.outputs, api_token=TOKEN) as cache:
        return {
            ns: sorted([k.name async for k in cache.kv(ns).list_keys()]) for ns in ("API_CACHE", "JOB_ANALYSIS_CACHE")
        }


def test_readme_install_example_counts_a_kv_hit(tmp_path: Path) -> None:
    # Run from outside the repository, as a service's test would, with the stack's settings in code.
    out = _run(doc_block(README, "A service: the runtime only", "StackConfig"), tmp_path)
    assert re.search(r"'requests': 2, 'kv_hits': 1, 'gateway_hits': 0, 'provider_calls': 1", out), out


def test_readme_emulator_example_runs_in_the_project(tmp_path: Path) -> None:
    out = _run(
        doc_block(LOCAL, "Pointing a service at it", "from dualcache.local import Emulator"),
        tmp_path,
        cwd=PROJECT_DIR,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the emulators' temporary state folders land in tmp_path
    )
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+ http://127\.0\.0\.1:\d+/client/v4", lines[0]), out
    assert lines[1].startswith("{'get': 0,"), out
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", lines[2]), out


def test_readme_sdk_example_gets_a_gateway_miss(tmp_path: Path) -> None:
    from dualcache.local import Emulator

    # As after `dualcache dev` (no --token): the outputs file under .dualcache/, in the service's directory.
    with Emulator(stack="dev", project_dir=PROJECT_DIR, data_dir=tmp_path / "state") as emu:
        (tmp_path / ".dualcache").mkdir()
        emu.outputs.dump(tmp_path / ".dualcache" / "outputs.dev.json")
        out = _run(doc_block(LOCAL, "Pointing a service at it", "import cloudflare, openai"), tmp_path)
        stats = emu.control.stats()
    assert out.splitlines() == ["MISS"], out
    assert stats["kv"]["put"] == 1
    assert stats["gateway"]["misses"] == 1


def _readme_commands() -> list[list[str]]:
    """Every `.venv/bin/dualcache ...` line of the sh blocks of the README and the reference pages, in page
    order, split as the shell would (comments cut)."""
    commands = []
    for block in (b for page in PAGES for b in blocks(page, "sh")):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [".venv/bin/dualcache"]:
                commands.append(words[1:])
    return commands


def test_readme_dualcache_commands_parse_and_the_offline_ones_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    parser = _build_parser()
    written: dict[str, str] = {}  # `> FILE` of an earlier command -> where the test put it
    ran = []
    for words in _readme_commands():
        redirect = None
        if ">" in words:
            at = words.index(">")
            words, redirect = words[:at], words[at + 1]
        args = [written.get(w, w) for w in words]
        if args[0] not in ("plan", "wrangler") or "--write" in args or "--against" in args:
            # dev serves until stopped, outputs needs the Pulumi CLI, the demo has its own tests, --write would
            # change a snapshot and --against needs origin/main: these are parsed, not run. (The plan commands'
            # options may be declared by the project's Pulumi program rather than here: those below run.)
            namespace, unknown = parser.parse_known_args(args)
            assert namespace.command == args[0], args
            assert unknown == [] or args[0] in ("plan", "outputs"), (args, unknown)
            continue
        capfd.readouterr()
        # In process, as `dualcache plan` runs it in its subprocess (`python -m infra.cli`; the forwarding is
        # tested in tests/test_cli.py): one Pulumi import for all the README's plans instead of one each.
        status = infra_main(args)
        out = capfd.readouterr().out
        assert status in ((0, 2) if "--diff" in args else (0,)), (args, status)  # 2 = the diff found changes
        assert out, args
        if redirect is not None:
            written[redirect] = str(tmp_path / redirect)
            Path(written[redirect]).write_text(out, encoding="utf-8")
        ran.append(args[0])
    assert ran.count("plan") >= 5, ran  # the extraction found the README's plan commands


def test_readme_contents_links_resolve() -> None:
    contents = README.read_text(encoding="utf-8").split("## Contents", 1)[1].split("\n## ", 1)[0]
    links = set(re.findall(r"\]\(([^)]+)\)", contents))
    assert len(links) >= 7
    # Every page under docs/ is reachable from the contents, and so are the two contracts kept beside the code.
    linked = {link.partition("#")[0] for link in links}
    assert {f"docs/{page.name}" for page in DOCS} | {
        "infra/worker/DATAPLANE.md",
        "runtime/dualcache/RECORDS.md",
    } <= linked
    assert broken_links(README) == []


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_readme_docs_pages_links_resolve(page: Path) -> None:
    assert page.read_text(encoding="utf-8").startswith("# "), "a page opens with its title"
    assert broken_links(page) == []


def test_readme_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n```sh\n# not a heading\n```\n"
        "[ok](other.md#a-section) [ok](#page) [web](https://example.com/x) `[code](nowhere.md)`\n"
        "[gone](missing.md) [no anchor](other.md#b-section) [comment](#not-a-heading)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md (no file missing.md)",
        "other.md#b-section (no heading #b-section in other.md)",
        "#not-a-heading (no heading #not-a-heading in page.md)",
    ]


def test_readme_every_python_block_compiles() -> None:
    # The blocks not run by a test (here, or in tests/runtime and tests/local) are at least compiled, so none rots.
    compiled = []
    for page in PAGES:
        for number, src in enumerate(blocks(page, "python"), start=1):
            compile(src, f"{page.relative_to(PROJECT_DIR)}:python block {number}", "exec")
            compiled.append(page.name)
    assert compiled.count("README.md") >= 2 and {"local.md", "observability.md", "runtime.md"} <= set(compiled)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_readme_refers_to_nothing_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    # `--seed` and a faults `seed` are the demo's and the emulator's random seeds, not outside documents.
    outside = re.findall(r"\bthe seed\b|\bseed's\b|SPEC\.md|\bissue\b|fact sheet|\bPyPI package\b", text, re.I)
    assert outside == []
