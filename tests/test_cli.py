"""The ``dualcache`` command as a newcomer meets it: one-line errors, ``--version``, the infra commands forwarded.

Commands run as subprocesses (``python -c`` calling the console script's entry point), so that what is
checked is what a terminal shows: stderr, the exit status, no traceback. A missing extra is simulated in
that subprocess with ``sys.modules[name] = None``, which makes ``import name`` fail as if not installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dualcache._cli import main

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime" / "dualcache"
TIME_LIMIT_S = 120


def dualcache(
    *argv: str, missing: tuple[str, ...] = (), cwd: Path = REPO, env: dict[str, str] | None = None, entry: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``dualcache ARGV`` (or ``entry``'s ``main``) in a subprocess, with the modules in ``missing`` hidden."""
    shim = "".join(f"sys.modules[{name!r}] = None; " for name in missing)
    code = f"import sys; {shim}from {entry or 'dualcache._cli'} import main; sys.exit(main(sys.argv[1:]))"
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "runtime"), str(REPO)])  # this checkout
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S,
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], command: str, *fragments: str) -> str:
    """Exit status 1 and exactly one line on stderr, ``dualcache COMMAND: error: ...`` naming ``fragments``."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, (done.returncode, done.stderr)
    line = done.stderr.strip()
    assert "\n" not in line, done.stderr
    assert line.startswith(f"dualcache {command}: error: "), done.stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def _project_with_infra_of_this_checkout(root: Path) -> Path:
    """A project dir of its own (Pulumi.yaml, the stack files) whose infra/ is this checkout's (a symlink)."""
    root.mkdir(exist_ok=True)
    for path in REPO.glob("Pulumi*.yaml"):
        shutil.copy(path, root / path.name)
    (root / "infra").symlink_to(REPO / "infra", target_is_directory=True)
    return root


# -- usage errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "command", "fragment"),
    [
        pytest.param(
            ["plan", "--stack", "dev", "--diff", "a.json", "--against", "main"],
            "plan",
            "argument --against: not allowed with argument --diff",
            id="diff-and-against",
        ),
        pytest.param(["plan"], "plan", "the following arguments are required: --stack/-s", id="missing-stack"),
        pytest.param(["plan", "--stack", "dev", "--bogus"], "plan", "unrecognized arguments: --bogus", id="plan-bogus"),
        pytest.param(["dev", "--bogus"], "dev", "unrecognized arguments: --bogus", id="dev-bogus"),
        pytest.param(["dev", "--port", "x"], "dev", "argument --port: invalid int value: 'x'", id="dev-bad-int"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_1_never_2(argv: list[str], command: str, fragment: str) -> None:
    # 2 means "changes" for `plan --diff/--against`; a usage error must not look like one to CI.
    done = dualcache(*argv)
    assert_one_line_error(done, command, fragment, f"see `dualcache {command} --help`")
    assert done.stdout == ""


def test_cli_unknown_command_is_one_line_listing_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("dualcache: error: argument COMMAND: invalid choice: 'no-such-command'")
    for name in ("plan", "outputs", "wrangler", "dev", "demo"):
        assert repr(name) in err


def test_cli_plan_review_options_need_diff_or_against() -> None:
    done = dualcache("plan", "--stack", "dev", "--max-chars", "5000")
    assert_one_line_error(done, "plan", "--max-chars and --out go with --diff")


# -- --version ----------------------------------------------------------------------------------------------


def test_cli_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"dualcache {importlib.metadata.version('dualcache')}\n"


def test_cli_version_runs_as_python_m_dualcache() -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-m", "dualcache", "--version"], env=environment, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"dualcache {importlib.metadata.version('dualcache')}\n",
        "",
    )


def test_cli_version_falls_back_to_dunder_version_without_package_metadata() -> None:
    # A copy on PYTHONPATH that was never pip-installed has no metadata: the package's __version__ is used.
    code = (
        "import importlib.metadata as metadata, sys\n"
        "def unknown(name):\n"
        "    raise metadata.PackageNotFoundError(name)\n"
        "metadata.version = unknown\n"
        "from dualcache._cli import main\n"
        "sys.exit(main(['--version']))\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=False)
    import dualcache

    assert (done.returncode, done.stdout, done.stderr) == (0, f"dualcache {dualcache.__version__}\n", "")


# -- missing extras -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "argv", "extra"),
    [
        pytest.param("rich", ["demo", "--scale", "0.01"], "demo", id="demo-without-rich"),
        pytest.param("uvicorn", ["dev", "--port", "0"], "local", id="dev-without-uvicorn"),
        pytest.param("starlette", ["dev", "--port", "0"], "local", id="dev-without-starlette"),
        pytest.param("pulumi", ["plan", "--stack", "dev"], "infra", id="plan-without-pulumi"),
        pytest.param("pulumi_cloudflare", ["plan", "--stack", "dev", "--json"], "infra", id="plan-without-provider"),
        pytest.param("pulumi", ["wrangler", "--stack", "dev"], "infra", id="wrangler-without-pulumi"),
    ],
)
def test_cli_missing_extra_is_one_line_naming_it(missing: str, argv: list[str], extra: str, tmp_path: Path) -> None:
    done = dualcache(*argv, "--project-dir", str(REPO), missing=(missing,), cwd=tmp_path)
    assert_one_line_error(done, argv[0], f"'{extra}' extra", missing, f"pip install 'dualcache[{extra}]'")
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing written (dev's .dualcache folder included)


def test_cli_infra_cli_itself_names_the_infra_extra_when_pulumi_is_missing() -> None:
    # `python -m infra.cli` (what the runtime CLI forwards to) says the same when run on its own.
    done = dualcache("plan", "--stack", "dev", missing=("pulumi",), entry="infra.cli")
    assert_one_line_error(done, "plan", "'infra' extra", "pulumi is missing", "pip install 'dualcache[infra]'")


def test_cli_wrangler_with_an_outputs_file_needs_no_infra_extra(tmp_path: Path) -> None:
    done = dualcache("wrangler", "--stack", "dev", "--outputs", str(tmp_path / "none.json"), missing=("pulumi",))
    # Not the extra: the file is what is wrong, and wrangler --outputs never imports pulumi.
    assert_one_line_error(done, "wrangler", f"outputs file '{tmp_path / 'none.json'}' does not exist")


# -- bad paths ----------------------------------------------------------------------------------------------


def test_cli_dev_data_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "state.txt"
    data.write_text("not a folder\n")
    done = dualcache("dev", "--port", "0", "--data", str(data))
    assert_one_line_error(done, "dev", f"--data {str(data)!r} is not a directory")
    assert data.read_text() == "not a folder\n"
    nested = data / "inner"
    done = dualcache("dev", "--port", "0", "--data", str(nested))
    assert_one_line_error(done, "dev", f"--data {str(nested)!r}: {str(data)!r} is not a directory")


def test_cli_plan_out_in_a_missing_folder_is_one_line_before_planning(tmp_path: Path) -> None:
    base = REPO / "infra" / "snapshots" / "dev.json"
    done = dualcache("plan", "--stack", "dev", "--diff", str(base), "--out", "/nonexistent/x.md")
    assert_one_line_error(done, "plan", "--out '/nonexistent/x.md': the folder '/nonexistent' does not exist")
    assert done.stdout == ""  # refused before the diff was printed, not after


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device whose writes fail: disk full)")
def test_cli_plan_out_that_fails_to_write_is_one_line() -> None:
    base = REPO / "infra" / "snapshots" / "dev.json"
    done = dualcache("plan", "--stack", "dev", "--diff", str(base), "--out", "/dev/full")
    assert_one_line_error(done, "plan", "--out '/dev/full': could not write the summary: No space left on device")


def _fake_pulumi(bin_dir: Path) -> Path:
    """A `pulumi` that records that it ran."""
    bin_dir.mkdir()
    script = bin_dir / "pulumi"
    script.write_text(f'#!/bin/sh\ntouch "{bin_dir}/ran"\necho "{{}}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        pytest.param("/nonexistent/o.json", "the folder '/nonexistent' does not exist", id="missing-folder"),
        pytest.param(".", "is a directory", id="a-directory"),
    ],
)
def test_cli_outputs_out_that_cannot_be_written_is_one_line_before_pulumi_runs(
    tmp_path: Path, out: str, fragment: str
) -> None:
    bin_dir = _fake_pulumi(tmp_path / "bin")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = dualcache("outputs", "--stack", "dev", "--out", out, "--project-dir", str(REPO), env=env)
    assert_one_line_error(done, "outputs", f"--out {out!r}", fragment)
    assert not (bin_dir / "ran").exists()


# -- stacks and stack files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "wrangler", "dev"])
def test_cli_unknown_stack_is_one_line_listing_the_stacks(command: str, tmp_path: Path) -> None:
    extra = ["--port", "0", "--data", str(tmp_path / "data")] if command == "dev" else []
    done = dualcache(command, "--stack", "nosuch", "--project-dir", str(REPO), *extra)
    expected = f"no stack file '{REPO / 'Pulumi.nosuch.yaml'}' for stack 'nosuch'; stacks here: dev, prod, staging"
    assert_one_line_error(done, command, expected)
    assert not (tmp_path / "data").exists()


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)  # reading it would block forever


def _text(content: str | bytes) -> object:
    def write(path: Path) -> None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return write


@pytest.mark.parametrize("command", ["plan", "wrangler", "dev"])
@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(_directory, "is not a regular file", id="a-directory"),
        pytest.param(_fifo, "is not a regular file", id="a-fifo"),
        pytest.param(_text("config: [unclosed\n"), "is not valid YAML", id="not-yaml"),
        pytest.param(_text(b"config:\n  jobmatch-ai:accountId: \xff\n"), "is not UTF-8 text", id="not-utf8"),
        pytest.param(_text("config:\n  jobmatch-ai:accountId: 42\n"), "jobmatch-ai:accountId = 42", id="bad-value"),
    ],
)
def test_cli_unreadable_or_invalid_stack_file_is_one_line(
    tmp_path: Path, command: str, make: object, fragment: str
) -> None:
    project = _project_with_infra_of_this_checkout(tmp_path / "project")
    stack_file = project / "Pulumi.broken.yaml"
    make(stack_file)  # type: ignore[operator]
    extra = ["--port", "0", "--data", str(tmp_path / "data")] if command == "dev" else []
    done = dualcache(command, "--stack", "broken", "--project-dir", str(project), *extra)
    assert_one_line_error(done, command, str(stack_file), fragment)
    assert not (tmp_path / "data").exists()


# -- the infra commands, forwarded to the project's infra.cli -----------------------------------------------


@pytest.mark.parametrize("command", ["plan", "outputs", "wrangler"])
def test_cli_infra_commands_outside_a_clone_say_they_need_one(command: str, tmp_path: Path) -> None:
    done = dualcache(command, "--stack", "dev", cwd=tmp_path)
    assert_one_line_error(done, command, f"`dualcache {command}` needs a clone of the dualcache repository")
    # A Pulumi project that is not a clone of this repository (no infra/cli.py): the same, naming the folder.
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    done = dualcache(command, "--stack", "dev", cwd=tmp_path)
    assert_one_line_error(done, command, "needs a clone", f"{str(tmp_path)!r} has no infra/cli.py")


def test_cli_plan_help_is_the_infra_cli_help() -> None:
    done = dualcache("plan", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: dualcache plan [-h] --stack STACK")
    assert "--against GIT_REF" in done.stdout


def test_cli_plan_diff_keeps_relative_paths_and_the_exit_status(tmp_path: Path) -> None:
    # The forwarded command runs in the caller's directory: relative --diff and --out mean what they say.
    manifest = json.loads(dualcache("plan", "--stack", "dev", "--json").stdout)
    manifest["resources"] = [r for r in manifest["resources"] if "Namespace" not in r["type"]]
    (tmp_path / "base.json").write_text(json.dumps(manifest), encoding="utf-8")
    argv = ["plan", "--stack", "dev", "--project-dir", str(REPO), "--diff", "base.json", "--out", "review.md"]
    done = dualcache(*argv, "--max-chars", "2000", cwd=tmp_path)
    assert done.returncode == 2, done.stderr  # 2: there are changes
    assert (tmp_path / "review.md").read_text(encoding="utf-8") == done.stdout
    assert 0 < len(done.stdout) <= 2000
    assert "**6 to add" in done.stdout and "kv-sessions" in done.stdout


def test_cli_plan_json_through_dualcache_is_the_committed_snapshot() -> None:
    done = dualcache("plan", "--stack", "prod", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (REPO / "infra" / "snapshots" / "prod.json").read_text(encoding="utf-8")


# -- layout -------------------------------------------------------------------------------------------------


def _imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def test_cli_runtime_package_never_imports_infra() -> None:
    # The library is installed alone (pip install dualcache); infra/ exists only in a clone of the repository.
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted(RUNTIME.rglob("*.py"))
        for name in _imported_modules(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        if name == "infra" or name.startswith("infra.")
    ]
    assert len(list(RUNTIME.rglob("*.py"))) > 20  # the walk found the package
    assert offenders == []


def test_cli_import_check_sees_every_form_of_import() -> None:
    # The check above would catch each of these (a check that cannot fail proves nothing).
    source = "import infra\nfrom infra.plan import x\nimport importlib\nimportlib.import_module('infra.cli')\n"
    assert _imported_modules(ast.parse(source)) == ["infra", "infra.plan", "importlib", "infra.cli"]


# -- the boundary in main(): what a command raises ------------------------------------------------------------

_COMMANDS_MODULE = """
from pathlib import Path


def register(subparsers):
    subparsers.add_parser("read").set_defaults(func=lambda args: len(Path("/nonexistent/file.txt").read_text()))
    subparsers.add_parser("ours").set_defaults(func=lambda args: __import__("dualcache._no_such_module"), extra="demo")
    subparsers.add_parser("theirs").set_defaults(func=lambda args: __import__("no_such_dependency"), extra="pdf")
"""


@pytest.fixture
def commands_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cli_boundary_commands.py").write_text(_COMMANDS_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_boundary_commands"


def test_cli_main_turns_an_os_error_into_one_line(commands_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["read"], modules=(commands_module,)) == 1
    assert capsys.readouterr().err == (
        "dualcache read: error: could not read or write '/nonexistent/file.txt': No such file or directory\n"
    )


def test_cli_main_names_the_extra_of_a_missing_dependency(
    commands_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["theirs"], modules=(commands_module,)) == 1
    assert capsys.readouterr().err == (
        "dualcache theirs: error: this command needs the 'pdf' extra (no_such_dependency is missing): "
        "pip install 'dualcache[pdf]'\n"
    )


def test_cli_main_lets_a_broken_import_of_its_own_code_raise(commands_module: str) -> None:
    # Not a missing extra: a bug, whose traceback is the report worth having.
    with pytest.raises(ModuleNotFoundError, match="dualcache._no_such_module"):
        main(["ours"], modules=(commands_module,))


def test_cli_demo_shows_the_dev_plan_of_the_project_without_its_warnings() -> None:
    # The demo gets the plan from `dualcache plan` (a subprocess: the library never imports infra) and
    # shows it as the plan command renders it, minus what `pulumi up` would refuse (irrelevant offline).
    import io

    from rich.console import Console

    from dualcache._demo import _show_plan
    from infra.cli import plan_manifest, render_plan_text

    buffer = io.StringIO()
    _show_plan(Console(file=buffer, width=10_000, color_system=None), REPO)
    shown = buffer.getvalue()
    assert "Warnings:" not in shown and "is not set" not in shown
    assert render_plan_text(plan_manifest("dev", REPO)) in shown


def _command_help(modules: tuple[str, ...]) -> dict[str, str]:
    import argparse

    from dualcache._cli import _build_parser

    parser = _build_parser(modules)
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: str(choice.help) for choice in subparsers._choices_actions}


def test_cli_forwarded_commands_list_the_help_of_infra_cli() -> None:
    # `dualcache --help` lists plan/outputs/wrangler without importing infra: the same one-line help.
    assert _command_help(("dualcache._cli_infra",)) == _command_help(("infra.cli",))
