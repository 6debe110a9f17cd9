"""The extras in pyproject.toml cover what the package imports: the runtime alone, local, pdf, demo, dev."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "runtime" / "dualcache"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Top-level import name -> distribution on PyPI. A third-party import missing here fails
# test_extras_every_third_party_import_is_known, so a new dependency cannot slip in undeclared.
DISTRIBUTION = {
    "httpx": "httpx",
    "pydantic": "pydantic",
    "yaml": "pyyaml",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "rich": "rich",
    "pypdf": "pypdf",
    "pulumi": "pulumi",
    "pulumi_cloudflare": "pulumi-cloudflare",
    "prometheus_client": "prometheus-client",
    "opentelemetry": "opentelemetry-api",
}
# The emulator's modules may import the local extra's packages at module level: they are reached through
# dualcache.local, whose __init__ checks for the extra first and names it in the ImportError. Its entry
# points (the package, `python -m dualcache.local`, the `dev` command) must import without the extra.
LOCAL_ENTRY_POINTS = {"dualcache/local/__init__.py", "dualcache/local/__main__.py", "dualcache/local/_cli.py"}
EXTRA_PACKAGES = {"starlette", "uvicorn", "rich", "pypdf", "pulumi", "pulumi_cloudflare"}


def _extra_module(path: str) -> bool:
    return path.startswith("dualcache/local/") and path not in LOCAL_ENTRY_POINTS


# `infra` is the repository's Pulumi program, imported from the project directory by the plan commands.
PROJECT_PACKAGES = {"dualcache", "infra"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Return the top-level names imported at module level and inside functions (or under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    nested: set[str] = set()

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in child.names]
                    if isinstance(child, ast.Import)
                    else [child.module or ""]
                    if child.level == 0
                    else []
                )
                for name in names:
                    (nested if inside else top).add(name.split(".")[0])
            deeper = inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                deeper = True
            visit(child, deeper)

    visit(tree, False)
    third_party = {n for n in top | nested if n not in sys.stdlib_module_names and n not in PROJECT_PACKAGES}
    return top & third_party, nested & third_party


def _modules() -> dict[str, tuple[set[str], set[str]]]:
    return {str(p.relative_to(PACKAGE.parent)): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in requirements}  # type: ignore[union-attr]


def _extra(name: str) -> set[str]:
    """The distributions an extra installs, with the package's own extras (`dualcache[local,...]`) expanded."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    out: set[str] = set()
    for requirement in extras[name]:
        nested = re.fullmatch(r"dualcache\[([a-z,]+)\]", requirement.replace(" ", ""))
        if nested:
            for inner in nested.group(1).split(","):
                out |= _extra(inner)
        else:
            out |= _names([requirement])
    return out | _names(PYPROJECT["project"]["dependencies"])


def test_extras_every_third_party_import_is_known() -> None:
    unknown = {path: sorted((top | nested) - DISTRIBUTION.keys()) for path, (top, nested) in _modules().items()}
    assert {path: names for path, names in unknown.items() if names} == {}


def test_extras_base_dependencies_cover_module_level_imports() -> None:
    base = _names(PYPROJECT["project"]["dependencies"])
    missing = {
        path: sorted(DISTRIBUTION[n] for n in top if DISTRIBUTION[n] not in base)
        for path, (top, _nested) in _modules().items()
        if not _extra_module(path)
    }
    assert {path: names for path, names in missing.items() if names} == {}
    assert base == {"httpx", "pydantic", "pyyaml"}


def test_extras_emulator_modules_import_only_the_local_extra() -> None:
    emulator = {path: top | nested for path, (top, nested) in _modules().items() if _extra_module(path)}
    assert len(emulator) >= 2, sorted(emulator)
    for path, names in emulator.items():
        assert {DISTRIBUTION[n] for n in names} <= _extra("local"), path


# Run in a fresh interpreter: every finder is wrapped so that an extra's package is not found (find_spec gives
# None, as when it is not installed), then every module but the emulator's is imported.
_WITHOUT_EXTRAS = """
import importlib, importlib.abc, json, sys

hidden, modules = json.loads(sys.argv[1])


class Hidden(importlib.abc.MetaPathFinder):
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            return None
        return self.inner.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.inner, "invalidate_caches", lambda: None)()


sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
for name in modules:
    importlib.import_module(name)
import dualcache

for name in dualcache.__all__:
    getattr(dualcache, name)
try:
    from dualcache.local import Emulator
except ImportError as exc:
    print(exc)
"""


def test_extras_runtime_imports_without_any_extra() -> None:
    # As in a service that installed the runtime alone: everything imports but the emulator, which names its extra.
    modules = [
        path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for path in _modules()
        if not _extra_module(path)
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, json.dumps([sorted(EXTRA_PACKAGES), modules])],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "needs the 'local' extra" in done.stdout and "pip install 'dualcache[local]'" in done.stdout, done.stdout
    assert len(modules) >= 20


@pytest.mark.parametrize(
    ("extra", "needed"),
    [
        pytest.param("local", {"starlette", "uvicorn"}, id="local-emulator"),
        pytest.param("pdf", {"pypdf"}, id="pdf-resumes"),
        # the demo starts the emulator, parses PDF resumes, draws with rich and shows the offline plan
        pytest.param("demo", {"rich", "starlette", "uvicorn", "pypdf", "pulumi", "pulumi-cloudflare"}, id="demo"),
        pytest.param("infra", {"pulumi", "pulumi-cloudflare"}, id="infra"),
    ],
)
def test_extras_cover_their_features(extra: str, needed: set[str]) -> None:
    assert needed <= _extra(extra)


def test_extras_lazy_imports_belong_to_an_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    anywhere = set().union(*(_extra(name) for name in extras))
    lazy = {DISTRIBUTION[n] for _top, nested in _modules().values() for n in nested}
    assert lazy - anywhere == set()
    assert {"rich", "pypdf", "uvicorn"} <= lazy  # the scan sees imports inside functions


def test_extras_dev_has_every_other_extra_but_bench() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = _extra("dev")
    for name in extras.keys() - {"dev", "bench"}:
        assert _extra(name) <= dev, name
    assert {"pytest", "ruff", "mypy"} <= dev
    assert "litellm" not in dev  # bench only


def test_extras_make_test_runs_the_wheel_check() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_rule = re.search(r"^test:(.*)$", makefile, re.M)
    assert test_rule is not None and "wheel-check" in test_rule.group(1).split()
    assert re.search(r"^demo: \$\(DEMO_STAMP\)$", makefile, re.M)  # the demo installs the demo extra, not dev
    assert "-e '.[demo]'" in makefile and "-e '.[dev]'" in makefile
