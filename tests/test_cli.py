from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualcache._cli import main


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["plan", "--stack", "dev", "--diff", "a.json", "--against", "main"], id="diff-and-against"),
        pytest.param(["plan"], id="missing-stack"),
        pytest.param(["no-such-command"], id="unknown-command"),
    ],
)
def test_cli_usage_errors_exit_1_never_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # 2 means "changes" for `plan --diff/--against`; a usage error must not look like one to CI.
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    assert "error:" in capsys.readouterr().err


def test_cli_plan_review_options_need_diff_or_against(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", "dev", "--max-chars", "5000"]) == 1
    assert "--max-chars and --out go with --diff" in capsys.readouterr().err


def test_cli_plan_diff_writes_bounded_markdown_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.json"
    assert main(["plan", "--stack", "dev", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    manifest["resources"] = [r for r in manifest["resources"] if "Namespace" not in r["type"]]
    base.write_text(json.dumps(manifest), encoding="utf-8")
    out = tmp_path / "review.md"
    status = main(["plan", "--stack", "dev", "--diff", str(base), "--max-chars", "2000", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 2
    assert out.read_text(encoding="utf-8") == printed
    assert 0 < len(printed) <= 2000
    assert "**6 to add" in printed and "kv-sessions" in printed
