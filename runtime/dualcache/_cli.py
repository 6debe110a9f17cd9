"""The ``dualcache`` command: one entry point, one module per group of subcommands.

Each module named in ``_COMMAND_MODULES`` has ``register(subparsers) -> None``, which adds its
subcommands with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit status. Those modules must
stay cheap to import: anything heavy (pulumi, starlette, uvicorn) is imported inside ``func``. A command
that needs an extra says which with ``set_defaults(extra="name")``: a missing module then reads as
``pip install 'dualcache[name]'``. A command registered with ``set_defaults(forward=True)`` takes the
arguments it does not declare as ``args.forward`` (``plan``, ``outputs`` and ``wrangler`` pass them on to
the project's ``infra.cli``).

Every failure is one line on stderr, ``dualcache COMMAND: error: <what was wrong and how to fix it>``, and
exit status 1, never a traceback: usage errors, errors the library raises on purpose, missing extras and
files that cannot be read or written.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from dualcache._exceptions import ConfigError, DualCacheError, InvalidInputError

__all__ = ["add_project_dir_argument", "check_output_file", "find_project_dir", "main", "version"]

_COMMAND_MODULES = (
    "dualcache._cli_infra",  # plan, outputs, wrangler: forwarded to the project's infra.cli
    "dualcache.local._cli",  # dev
    "dualcache._demo",  # demo
    "dualcache._report",  # report
)


def find_project_dir(start: Path | None = None) -> Path:
    """Return the nearest directory at or above ``start`` (default: cwd) that holds ``Pulumi.yaml``.

    Raises:
        ConfigError: no such directory; the message says to run inside the project or pass --project-dir.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate
    raise ConfigError(f"no Pulumi.yaml in {str(here)!r} or above; run inside the project or pass --project-dir")


def add_project_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--project-dir`` (default: the nearest directory holding ``Pulumi.yaml``)."""
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="directory holding Pulumi.yaml and the stack files (default: nearest one at or above cwd)",
    )


def check_output_file(path: Path, flag: str) -> None:
    """Refuse, before any work is done, a file to write whose folder does not exist or is not writable.

    Args:
        path: The file a command is about to write.
        flag: The option that named it, for the message (``"--out"``).

    Raises:
        InvalidInputError: ``path`` is a directory, its folder does not exist, or the folder is not writable.
    """
    if path.is_dir():
        raise InvalidInputError(f"{flag} {str(path)!r} is a directory; give the path of a file to write")
    folder = path.parent
    if not folder.is_dir():
        raise InvalidInputError(
            f"{flag} {str(path)!r}: the folder {str(folder)!r} does not exist; create it first or pick another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{flag} {str(path)!r}: the folder {str(folder)!r} is not writable; pick another path")


def version() -> str:
    """The installed version of dualcache (package metadata; the package's ``__version__`` when not installed)."""
    try:
        return importlib.metadata.version("dualcache")
    except importlib.metadata.PackageNotFoundError:
        import dualcache

        return str(getattr(dualcache, "__version__", "unknown"))


class _VersionAction(argparse.Action):
    """``--version``: print ``dualcache <version>`` and exit 0 (the metadata is read only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: object, values: object, option: object = None
    ) -> None:
        sys.stdout.write(f"dualcache {version()}\n")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit 1, like every other error of the command.

    argparse's own status for a usage error is 2, which ``dualcache plan --diff/--against`` reserves for
    "there are changes"; a CI job must never read a typo as a change.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _build_parser(modules: Sequence[str] = _COMMAND_MODULES, prog: str = "dualcache") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Dual-layer caching of AI calls on Cloudflare: provisioning, local emulator, demo.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(
    argv: Sequence[str] | None = None, *, modules: Sequence[str] = _COMMAND_MODULES, prog: str = "dualcache"
) -> int:
    """Run the command line; return the exit status (also used as the console script).

    ``modules`` and ``prog`` let a narrower entry point (``python -m dualcache.local``) reuse it.
    """
    parser = _build_parser(modules, prog)
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "forward", False):
        args.forward = rest
    elif rest:
        parser.exit(
            1,
            f"{prog} {args.command}: error: unrecognized arguments: {' '.join(rest)}; see "
            f"`{prog} {args.command} --help`\n",
        )
    try:
        status: int = args.func(args)
    except DualCacheError as exc:
        return _fail(args.command, str(exc))
    except ImportError as exc:
        message = _missing_extra(exc, getattr(args, "extra", None))
        if message is None:
            raise  # our own code failed to import: a bug, whose traceback is the useful report
        return _fail(args.command, message)
    except OSError as exc:
        # The commands check their paths up front; this is the last line of defence (a disk full, a race).
        where = f" {str(exc.filename)!r}" if exc.filename is not None else " a file"
        return _fail(args.command, f"could not read or write{where}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130
    return status


def _fail(command: str, message: str) -> int:
    print(f"dualcache {command}: error: {message}", file=sys.stderr)
    return 1


def _missing_extra(exc: ImportError, extra: str | None) -> str | None:
    """The one-line message of an ImportError a command raised, or ``None`` when it is one of our own modules."""
    module = (exc.name or "").split(".")[0]
    if module in ("dualcache", "infra"):
        return None
    if "pip install" in str(exc):
        return str(exc)  # already names the extra
    if extra is None:
        return f"{module or exc} is not installed"
    return f"this command needs the {extra!r} extra ({module or exc} is missing): pip install 'dualcache[{extra}]'"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
