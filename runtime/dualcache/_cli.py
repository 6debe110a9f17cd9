"""The ``dualcache`` command: one entry point, one module per group of subcommands.

Each module named in ``_COMMAND_MODULES`` has ``register(subparsers) -> None``, which adds its
subcommands with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit status. Those modules must
stay cheap to import: anything heavy (pulumi, starlette, uvicorn) is imported inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from dualcache._exceptions import ConfigError, DualCacheError

__all__ = ["add_project_dir_argument", "find_project_dir", "main"]

_COMMAND_MODULES = (
    "dualcache._cli_infra",  # plan, outputs, wrangler
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit 1, like every other error of the command.

    argparse's own status for a usage error is 2, which ``dualcache plan --diff/--against`` reserves for
    "there are changes"; a CI job must never read a typo as a change.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _build_parser(modules: Sequence[str] = _COMMAND_MODULES, prog: str = "dualcache") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Dual-layer caching of AI calls on Cloudflare: provisioning, local emulator, demo.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except DualCacheError as exc:
        print(f"dualcache {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
