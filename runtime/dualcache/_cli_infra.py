"""``dualcache plan | outputs | wrangler``: forwarded to the project's own ``infra.cli``.

These commands run the Pulumi program, which lives in the repository's ``infra/`` package, not in the
installed library. So the library never imports ``infra``: this module finds the project (the nearest
directory at or above the current one holding ``Pulumi.yaml``, or ``--project-dir``), checks that it is a
clone with ``infra/cli.py``, and runs ``python -m infra.cli COMMAND ARGS...`` there with the same
interpreter, in the same working directory (so relative paths mean the same), with the project first on
``PYTHONPATH``. The exit status, stdout and stderr are the subprocess's own.

Before it starts the subprocess it fails fast, in one line, on what it can see: no project, a stack file
that is missing or invalid, a project that is not a clone (no ``infra/cli.py``), and a missing ``infra``
extra (the same interpreter runs both).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from dualcache._cli import find_project_dir
from dualcache._exceptions import ConfigError

__all__ = ["INFRA_COMMANDS", "INFRA_EXTRA_MODULES", "infra_command", "register", "run_infra_command"]

INFRA_COMMANDS: dict[str, str] = {
    "plan": "show the resources a stack declares, offline (Pulumi mock engine; no CLI, token or network)",
    "outputs": "write a stack's `dualcache` output (from `pulumi stack output`) to the file services load",
    "wrangler": "print the wrangler configs of the stack's Workers (the API Worker's [env.<stack>], the data plane's)",
}
"""The commands forwarded to ``python -m infra.cli``, with their one-line help."""
INFRA_EXTRA_MODULES = ("pulumi", "pulumi_cloudflare")
"""What the ``infra`` extra installs, needed by ``plan`` (and ``wrangler`` without ``--outputs``)."""
_CLONE_HINT = "run it inside a clone of the dualcache repository (`git clone` it) or pass --project-dir CLONE"


def register(subparsers: Any) -> None:
    """Add ``plan``, ``outputs`` and ``wrangler``; their options are the project's ``infra.cli`` (``--help``)."""
    for name, help_text in INFRA_COMMANDS.items():
        parser = subparsers.add_parser(
            name,
            help=help_text,
            add_help=False,  # `dualcache plan --help` is answered by infra.cli, which declares the options
            description=f"{help_text}. Runs `python -m infra.cli {name}` in the project (a clone of the repository).",
        )
        parser.set_defaults(func=_cmd_forward, forward=True, extra="infra")


class _Unparsable(Exception):
    """The forwarded arguments do not parse; infra.cli will say how, with its own usage error."""


class _Peek(argparse.ArgumentParser):
    """Reads the few options this module checks before forwarding, ignoring all others."""

    def error(self, message: str) -> NoReturn:
        raise _Unparsable(message)


def _peek(argv: list[str]) -> argparse.Namespace | None:
    parser = _Peek(add_help=False)
    parser.add_argument("--project-dir", type=Path, default=None)
    parser.add_argument("--stack", "-s", default=None)
    parser.add_argument("--outputs", type=Path, default=None)
    parser.add_argument("-h", "--help", action="store_true")
    try:
        known, _ = parser.parse_known_args(argv)
    except _Unparsable:
        return None
    return known


def _project_dir(given: Path | None, command: str) -> Path:
    if given is not None:
        if not (given / "Pulumi.yaml").is_file():
            raise ConfigError(f"--project-dir {str(given)!r} holds no Pulumi.yaml; `dualcache {command}` needs a clone")
        return given.resolve()
    try:
        return find_project_dir()
    except ConfigError as exc:
        raise ConfigError(f"`dualcache {command}` needs a clone of the dualcache repository: {exc}") from None


def _check_clone(project: Path, command: str) -> None:
    if not (project / "infra" / "cli.py").is_file():
        raise ConfigError(
            f"`dualcache {command}` needs a clone of the dualcache repository (its infra/ package runs the Pulumi "
            f"program), and {str(project)!r} has no infra/cli.py; {_CLONE_HINT}"
        )


def _require_infra_extra() -> None:
    missing = [name for name in INFRA_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"the offline plan needs the 'infra' extra ({', '.join(missing)} missing): pip install 'dualcache[infra]'",
            name=missing[0],
        )


def infra_command(command: str, argv: list[str], project_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``command`` of the project's ``infra.cli``.

    Args:
        command: One of :data:`INFRA_COMMANDS`.
        argv: Its arguments, as given to ``dualcache``.
        project_dir: The clone (holds ``infra/cli.py``).

    Returns:
        ``[sys.executable, "-P", "-m", "infra.cli", command, *argv]`` (``-P``: the working directory is not on
        ``sys.path``, so an unrelated ``infra`` package there cannot shadow the project's) and ``os.environ``
        with the project, then the folder this ``dualcache`` was imported from, first on ``PYTHONPATH``.
    """
    paths = [str(project_dir)]
    library = Path(__file__).resolve().parent.parent  # the folder holding this dualcache package
    if library.name not in ("site-packages", "dist-packages"):  # an installed copy is on sys.path already
        paths.append(str(library))
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return [sys.executable, "-P", "-m", "infra.cli", command, *argv], env


def run_infra_command(command: str, argv: list[str], *, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Check what can be checked here, then run ``command`` of the project's ``infra.cli`` in a subprocess.

    Args:
        command: One of :data:`INFRA_COMMANDS`.
        argv: Its arguments (``--stack dev --json``, ...); the project is ``--project-dir`` among them, else
            the nearest directory at or above the working directory that holds ``Pulumi.yaml``.
        capture: Capture stdout and stderr (text) instead of letting the subprocess write to ours.

    Raises:
        ConfigError: no project, not a clone (no ``infra/cli.py``), or a missing or invalid stack file.
        ModuleNotFoundError: the ``infra`` extra is not installed and the command needs it.
    """
    if command not in INFRA_COMMANDS:
        raise ConfigError(f"{command!r} is not one of the infra commands {', '.join(INFRA_COMMANDS)}")
    peeked = _peek(argv)
    project = _project_dir(peeked.project_dir if peeked else None, command)
    # With --help, or arguments infra.cli will refuse with its own usage error, only the clone is checked.
    checking = peeked if peeked is not None and not peeked.help else None
    if checking is not None and command in ("plan", "wrangler") and checking.stack is not None:
        from dualcache._stackconfig import load_stack_config

        # The caller's input first: a bad stack file fails here, in one line, before Python starts again.
        load_stack_config(project, checking.stack)
    _check_clone(project, command)
    if checking is not None and (command == "plan" or (command == "wrangler" and checking.outputs is None)):
        _require_infra_extra()
    args, env = infra_command(command, argv, project)
    try:
        return subprocess.run(args, env=env, check=False, text=True, capture_output=capture)
    except OSError as exc:
        raise ConfigError(f"could not start {sys.executable!r} for `python -m infra.cli {command}`: {exc}") from None


def _cmd_forward(args: argparse.Namespace) -> int:
    done = run_infra_command(args.command, list(args.forward))
    if done.returncode < 0:  # killed by a signal: the shell's convention
        return 128 - done.returncode
    return done.returncode
