"""``python -m dualcache.local dev ...``: the ``dev`` command on its own (same as ``dualcache dev``)."""

from __future__ import annotations

import argparse
import sys

from dualcache._exceptions import DualCacheError
from dualcache.local._cli import register


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (``dev [options]``) and run the command; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dualcache.local")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except DualCacheError as exc:
        print(f"dualcache {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
