"""What importing dualcache and building a ``DualCache`` cost, next to their dependencies (a script, not a test).

    python bench/bench_import.py [--runs 15] [--python /tmp/rt/bin/python] [--tree runtime] [--tree OTHER/runtime]

Run it with the interpreter of a runtime-only venv (``python3 -m venv /tmp/rt && /tmp/rt/bin/pip install .``,
no extras) for the figure a service meets: a development venv has more packages on its path (pytest plugins,
pulumi) and ``.pth`` hooks that slow every interpreter start alike.

Each statement runs in ``--runs`` fresh interpreters, the statements interleaved (so a neighbour's load hits
them alike); the figure is the median wall time of the statement itself, timed inside the interpreter
(start-up excluded), and its median CPU time (what a loaded machine distorts least). Printed side by side:

* ``import dualcache``, ``from dualcache import DualCache``, and building a ``DualCache`` from outputs (after
  that import): for each ``--tree`` given (a ``runtime/`` folder put first on the path; default: whatever
  ``dualcache`` the interpreter imports), so two trees are compared in one run;
* the baselines: ``import asyncio``, ``import httpx``, ``import pydantic``, ``from pydantic import BaseModel,
  SecretStr``, and the floor: all of them and one model class built, in one interpreter (what ``DualCache``
  cannot do without: its HTTP clients, its validated policies and outputs);
* how many modules each statement imports, which heavy ones among them (pydantic, yaml, ssl, httpx), the SSL
  contexts building a cache created, and the largest self times ``-X importtime`` reports for
  ``from dualcache import DualCache``.

Goal: ``from dualcache import DualCache`` <= 150 ms in a runtime-only venv.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
GOAL_MS = 150.0
WATCHED = ("pydantic", "yaml", "ssl", "httpx", "asyncio")
FLOOR = "import asyncio, httpx\nfrom pydantic import BaseModel, SecretStr\nclass M(BaseModel):\n    x: int"
"""What ``DualCache`` cannot do without: asyncio, its HTTP client, and one validated model (``import pydantic``
alone is lazy: ``BaseModel`` and ``SecretStr`` import the model machinery, and the first model class built
loads pydantic's schema builder and its plugins' entry points)."""

_BUILD = """
from dualcache import DualCache, StackOutputs
outputs = StackOutputs.from_data(
    {
        "stack": "bench",
        "account_id": "a" * 32,
        "gateway_id": "gw",
        "namespaces": {n: f"{i:032x}" for i, n in enumerate(
            ["SESSIONS", "RATE_LIMITS", "OAUTH_STATES", "JOB_ANALYSIS_CACHE", "EMBEDDINGS_CACHE", "API_CACHE"],
            start=1,
        )},
        "worker_name": "api",
        "data_plane_url": "https://dualcache-data.example.workers.dev",
    }
)
"""

_TIMED = """\
import sys, time
{setup}
{count_ssl}
BEFORE = len(sys.modules)
t, c = time.perf_counter(), time.process_time()
{statement}
ms, cpu = (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3
watched = ",".join(m for m in {watched!r} if m in sys.modules)
print(ms, cpu, watched or "-", SSL_CONTEXTS[0], len(sys.modules) - BEFORE)
"""

_COUNT_SSL = """\
SSL_CONTEXTS = [0]
if "ssl" in sys.modules or {patch!r}:
    import ssl
    _real = ssl.create_default_context
    def _counting(*a, **k):
        SSL_CONTEXTS[0] += 1
        return _real(*a, **k)
    ssl.create_default_context = _counting
"""


class Case:
    """One statement timed in fresh interpreters (after ``setup``, untimed)."""

    def __init__(self, label: str, statement: str, *, setup: str = "", tree: str | None = None) -> None:
        self.label = label
        self.statement = statement
        self.setup = setup
        self.tree = tree
        self.ms: list[float] = []
        self.cpu_ms: list[float] = []
        self.watched = "-"
        self.ssl_contexts = 0
        self.modules = 0
        """Modules the statement imported (a count the machine's load cannot distort)."""

    def env(self) -> dict[str, str]:
        return child_env(self.tree)

    def run_once(self, python: str) -> None:
        # Count SSL contexts only for the construction: patching ssl imports it, which the imports must not see.
        patch = "DualCache.from_outputs" in self.statement
        code = _TIMED.format(
            setup=self.setup,
            count_ssl=_COUNT_SSL.format(patch=patch),
            statement=self.statement,
            watched=WATCHED,
        )
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=self.env(), check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{self.label}: the interpreter failed:\n{done.stderr}")
        ms, cpu, self.watched, contexts, modules = done.stdout.split()
        self.modules = int(modules)
        self.ms.append(float(ms))
        self.cpu_ms.append(float(cpu))
        self.ssl_contexts = int(contexts)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)

    def row(self, extra: str = "") -> str:
        return (
            f"  {self.label:<44} {self.median:>9.1f} {min(self.ms):>8.1f} {self.cpu:>8.1f} {self.modules:>8}   "
            f"{self.watched}{extra}"
        )


PYCACHE = tempfile.mkdtemp(prefix="dualcache-bench-pycache-")


def child_env(tree: str | None) -> dict[str, str]:
    """The environment of a measured interpreter: ``tree`` first on the path, and bytecode cached.

    An installed package has its ``.pyc`` files (pip compiles them); with ``PYTHONDONTWRITEBYTECODE`` set (as
    in some shells and CI images) every fresh interpreter would compile dualcache's sources again, which is
    not what a service pays. The bytecode goes to a temporary ``PYTHONPYCACHEPREFIX``, so no tree is written to,
    and a warm-up round fills it.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [env.get("PYTHONPATH")])])
    return env


def top_self_times(python: str, statement: str, tree: str | None, runs: int) -> list[tuple[float, str]]:
    """The largest median self times ``-X importtime`` reports for ``statement`` (ms, module)."""
    env = child_env(tree)
    selfs: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run(
            [python, "-X", "importtime", "-c", statement], capture_output=True, text=True, env=env, check=True
        )
        for line in done.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
            if match is not None:
                selfs.setdefault(match.group(2), []).append(int(match.group(1)) / 1e3)
    return sorted(((statistics.median(v), k) for k, v in selfs.items()), reverse=True)[:10]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per statement")
    parser.add_argument("--python", default=sys.executable, help="interpreter (a runtime-only venv's)")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="a runtime/ folder to import dualcache from (repeat to compare trees); default: the interpreter's",
    )
    args = parser.parse_args()
    trees: list[str | None] = [str(Path(t).resolve()) for t in args.tree] or [None]

    baselines = [
        Case("import asyncio", "import asyncio"),
        Case("import httpx", "import httpx"),
        Case("import pydantic", "import pydantic"),
        Case("from pydantic import BaseModel, SecretStr", "from pydantic import BaseModel, SecretStr"),
        Case("floor: asyncio, httpx, one pydantic model", FLOOR),
    ]
    ours: list[list[Case]] = []
    for tree in trees:
        ours.append(
            [
                Case("import dualcache", "import dualcache", tree=tree),
                Case("from dualcache import DualCache", "from dualcache import DualCache", tree=tree),
                Case(
                    "  + build a DualCache from outputs",
                    'cache = DualCache.from_outputs(outputs, data_plane_token="t", api_token="t")',
                    setup=_BUILD,
                    tree=tree,
                ),
            ]
        )
    cases = baselines + [c for group in ours for c in group]
    for case in cases:  # warm-up: fills the bytecode cache, and the OS file cache
        case.run_once(args.python)
        case.ms.clear()
        case.cpu_ms.clear()
    for _ in range(args.runs):
        for case in cases:  # interleaved: drift on the shared machine hits every statement alike
            case.run_once(args.python)

    version = subprocess.run(
        [args.python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"import and construction (python {version} at {args.python}; median of {args.runs} fresh interpreters)\n")
    floor, floor_cpu = baselines[-1].median, baselines[-1].cpu
    print(f"  {'statement':<44} {'wall ms':>9} {'min ms':>8} {'CPU ms':>8} {'modules':>8}   heavy ones among them")
    for case in baselines:
        print(case.row())
    for tree, group in zip(trees, ours, strict=True):
        print(f"\n  dualcache from {tree or 'the interpreter path'}")
        for case in group:
            extra = f"; {case.ssl_contexts} SSL context(s) created" if "build" in case.label else ""
            print(case.row(extra))
        total = group[1].median + group[2].median
        print(
            f"  from dualcache import DualCache = {group[1].median / floor:.2f}x the floor (CPU: "
            f"{group[1].cpu / floor_cpu:.2f}x); with the construction {total:.1f} ms (goal <= {GOAL_MS:.0f} ms; "
            f"the floor is {floor:.1f} ms = {floor / GOAL_MS:.2f}x the goal)"
        )
        top = top_self_times(args.python, "from dualcache import DualCache", tree, max(3, args.runs // 3))
        print("    largest self times: " + ", ".join(f"{k} {ms:.1f}" for ms, k in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
