"""The README's complete service example, run as written against the emulator."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from e2e_support import PROJECT_DIR, TOKEN

from dualcache import DualCache

BGE = "@cf/baai/bge-base-en-v1.5"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"


def _readme_example() -> str:
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### A complete example") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README has no python block under 'A complete example'"
    return match.group(1)


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
