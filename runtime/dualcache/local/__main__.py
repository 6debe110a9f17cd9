"""``python -m dualcache.local dev ...``: the ``dev`` command on its own (same as ``dualcache dev``)."""

from __future__ import annotations

import sys

from dualcache._cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (``dev [options]``) and run the command; return the exit status."""
    return _main(argv, modules=("dualcache.local._cli",), prog="python -m dualcache.local")


if __name__ == "__main__":
    sys.exit(main())
