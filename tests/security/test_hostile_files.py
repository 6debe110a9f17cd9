"""Hostile input files through the real command line: each one fails fast, in one line, without a traceback.

Every command runs as a subprocess bounded in time (20 s) and address space (1 GiB): an alias bomb, a read
of ``/dev/zero`` or a 60 MB echo would hit one of the bounds instead of taking the test run down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIME_LIMIT_S = 20
MEMORY_LIMIT_BYTES = 1024**3
ACCOUNT = "0123456789abcdef0123456789abcdef"
SECRET = "v1:AAABBBCCCDDDEEEsecret-ciphertext-must-not-be-echoed"
# Sets the memory bound inside the child, then runs the console script's entry point.
_RUN = (
    "import resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT_BYTES}, {MEMORY_LIMIT_BYTES})); "
    "from dualcache._cli import main; sys.exit(main())"
)


def dualcache(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``dualcache ARGV`` bounded in time and memory."""
    return subprocess.run(
        [sys.executable, "-c", _RUN, *argv],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIME_LIMIT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], command: str, fragment: str) -> str:
    """Exit status 1 and one short line on stderr, naming ``fragment``; return that line."""
    err = done.stderr
    assert len(err) < 1000, f"stderr is {len(err):,} characters: {err[:300]!r}…"
    assert "Traceback" not in err, err
    assert done.returncode == 1, (done.returncode, err)
    line = err.strip()
    assert "\n" not in line, err
    assert line.startswith(f"dualcache {command}: error: "), err
    assert fragment in line, err
    return line


def _alias_bomb() -> str:
    """The billion laughs in a real key: 9 levels of 9 aliases, about 700 bytes, 387 million strings expanded.

    Every key is valid, so nothing refuses the file before its value is looked at (validated, echoed).
    """
    levels = ['&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&l{n} [{','.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 10)]
    items = "".join(f"\n      - {level}" for level in levels)
    return f'config:\n  jobmatch-ai:accountId: "{ACCOUNT}"\n  jobmatch-ai:worker:\n    name:{items}\n'


def _stack_file_cases() -> list[pytest.param]:
    deep = "[" * 50_000 + "]" * 50_000
    return [
        pytest.param(_alias_bomb, "expands to more than", id="alias-bomb"),
        pytest.param(lambda: f"config:\n  jobmatch-ai:gateway: {deep}\n", "nest deeper than 32", id="deep-nesting"),
        pytest.param(
            lambda: b'config:\n  jobmatch-ai:accountId: "\xff\xfe\xfa"\n', "is not UTF-8 text: byte 0xff", id="not-utf8"
        ),
        pytest.param(
            lambda: f'config:\n  jobmatch-ai:accountId: "{ACCOUNT}"\n  jobmatch-ai:accountId: "{"f" * 32}"\n',
            "duplicate key 'jobmatch-ai:accountId' at line 3 (first at line 2)",
            id="duplicate-keys",
        ),
        pytest.param(
            lambda: f'config:\n  jobmatch-ai:accountId: "{"a" * 900_000}"\n',
            "a value is 900,000 characters long; the limit is 16,384",
            id="900kb-value",
        ),
        pytest.param(
            lambda: (
                f'config:\n  jobmatch-ai:accountId: "{ACCOUNT}"\n'
                f'  jobmatch-ai:gateway:\n    id:\n      secure: "{SECRET}"\n'
            ),
            "jobmatch-ai:gateway.id is a secure (encrypted) value",
            id="nested-secure",
        ),
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project directory of its own (Pulumi.yaml, the good stack files, infra/), for hostile stack files."""
    root = tmp_path_factory.mktemp("project")
    for path in REPO.glob("Pulumi*.yaml"):
        shutil.copy(path, root / path.name)
    shutil.copytree(REPO / "infra", root / "infra", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _commands(root: Path) -> dict[str, list[str]]:
    where = ["--stack", "hostile", "--project-dir", str(root)]
    return {
        "plan": ["plan", *where],
        "wrangler": ["wrangler", *where],
        "dev": ["dev", *where, "--port", "0", "--data", str(root / ".dualcache")],
    }


@pytest.mark.parametrize("command", ["plan", "wrangler", "dev"])
@pytest.mark.parametrize(("content", "fragment"), _stack_file_cases())
def test_cli_refuses_a_hostile_stack_file_in_one_line(
    project: Path, command: str, content: Callable[[], str | bytes], fragment: str
) -> None:
    text = content()
    stack_file = project / "Pulumi.hostile.yaml"
    stack_file.write_bytes(text if isinstance(text, bytes) else text.encode())
    done = dualcache(*_commands(project)[command])
    line = assert_one_line_error(done, command, fragment)
    assert str(stack_file) in line
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["plan", "wrangler", "dev"])
def test_cli_refuses_a_60_mb_stack_file_without_echoing_it(project: Path, command: str) -> None:
    (project / "Pulumi.hostile.yaml").write_text(f'config:\n  jobmatch-ai:accountId: "{"a" * 60_000_000}"\n')
    done = dualcache(*_commands(project)[command])
    assert_one_line_error(done, command, "is 60,000,036 bytes; the limit is 1,048,576 bytes")


@pytest.mark.parametrize("command", ["wrangler", "dev"])
def test_cli_refuses_an_alias_bomb_in_pulumi_yaml(tmp_path: Path, command: str) -> None:
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.hostile.yaml")
    (tmp_path / "Pulumi.yaml").write_text("name: jobmatch-ai\n" + _alias_bomb().replace("config:\n", "extra:\n"))
    done = dualcache(*_commands(tmp_path)[command])
    assert_one_line_error(done, command, "Pulumi.yaml: the document expands to more than 20,000 nodes")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe nobody writes to: reading it would block forever."""
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_cli_plan_diff_refuses_a_file_that_never_ends(target: str, fifo: Path) -> None:
    path = str(fifo) if target == "fifo" else target
    done = dualcache("plan", "--stack", "dev", "--project-dir", str(REPO), "--diff", path)
    assert_one_line_error(done, "plan", f"base manifest {path!r} is not a regular file")


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_cli_wrangler_outputs_refuses_a_file_that_never_ends(target: str, fifo: Path) -> None:
    path = str(fifo) if target == "fifo" else target
    done = dualcache("wrangler", "--stack", "dev", "--project-dir", str(REPO), "--outputs", path)
    assert_one_line_error(done, "wrangler", f"outputs file {path!r} is not a regular file")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("[" * 200_000 + "]" * 200_000, "nests deeper than 64 levels", id="deep"),
        pytest.param('{"stack": "dev", "stack": "prod"}', "duplicate key 'stack'", id="duplicate-keys"),
        pytest.param('{"stack": NaN}', "NaN is not a JSON number", id="nan"),
        pytest.param(b'{"stack": "\xff"}', "is not UTF-8 text", id="not-utf8"),
        pytest.param("[" + "[]," * 200_001 + "0]", "holds 200,002 objects and arrays", id="many-arrays"),
    ],
)
def test_cli_refuses_hostile_json_inputs_in_one_line(tmp_path: Path, text: str | bytes, fragment: str) -> None:
    path = tmp_path / "hostile.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    diff = dualcache("plan", "--stack", "dev", "--project-dir", str(REPO), "--diff", str(path))
    assert_one_line_error(diff, "plan", fragment)
    outputs = dualcache("wrangler", "--stack", "dev", "--project-dir", str(REPO), "--outputs", str(path))
    assert_one_line_error(outputs, "wrangler", fragment)


def test_outputs_from_env_refuses_dev_zero_in_one_line() -> None:
    probe = (
        "import resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT_BYTES}, {MEMORY_LIMIT_BYTES})); "
        "from dualcache import ConfigError, DualCache\n"
        "try:\n    DualCache.from_env()\nexcept ConfigError as exc:\n    print(exc); sys.exit(1)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S,
        env={**os.environ, "DUALCACHE_OUTPUTS": "/dev/zero"},
        check=False,
    )
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.strip() == "outputs file '/dev/zero' is not a regular file; give the path of a file"
