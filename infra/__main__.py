"""Entry point the Pulumi CLI runs (``main: infra/`` in Pulumi.yaml). Thin on purpose: see infra/program.py."""

from __future__ import annotations

import sys
from pathlib import Path

# The CLI runs this file as a script with infra/ on sys.path; the program imports `infra.*` and `dualcache`
# from the checkout (dualcache is normally installed too, by `pip install -e .`), so put both first.
_PROJECT_DIR = Path(__file__).resolve().parent.parent
for _path in (_PROJECT_DIR / "runtime", _PROJECT_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pulumi  # noqa: E402

from dualcache import ConfigError  # noqa: E402
from infra.program import main  # noqa: E402

try:
    main(_PROJECT_DIR, deploying=True)
except ConfigError as exc:
    # A RunError is reported by the CLI as a plain message, without a Python traceback.
    raise pulumi.RunError(str(exc)) from None
