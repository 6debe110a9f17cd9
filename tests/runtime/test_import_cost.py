"""What importing dualcache and building a cache load: shapes (which modules, how many SSL contexts), never
timings (bench/bench_import.py prints those)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def _run(code: str) -> list[str]:
    # No proxy variables: httpx builds a proxy transport (and its SSL context) per proxy it finds in them.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = os.pathsep.join([str(RUNTIME), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return done.stdout.splitlines()


def test_dualcache_import_of_the_cache_loads_no_yaml_nor_the_stack_config() -> None:
    out = _run(
        "import sys\n"
        "from dualcache import DualCache, StackOutputs\n"
        "watched = ('yaml', 'dualcache._stackconfig', 'dualcache._yaml', 'httpx', 'pydantic')\n"
        "print(sorted(m for m in watched if m in sys.modules))\n"
        "from dualcache import load_stack_config\n"  # the stack config (the CLI's) still imports on first use
        "print(sorted(m for m in ('yaml', 'dualcache._stackconfig') if m in sys.modules))\n"
    )
    assert out == ["['httpx', 'pydantic']", "['dualcache._stackconfig']"]


def test_dualcache_yaml_parser_is_imported_by_the_first_yaml_read() -> None:
    out = _run(
        "import sys\n"
        "from dualcache._untrusted import load_yaml\n"
        "print('yaml' in sys.modules)\n"
        "print(load_yaml('a: [1, 2]\\nday: 2025-03-11', source='t'))\n"
        "print('yaml' in sys.modules)\n"
    )
    assert out == ["False", "{'a': [1, 2], 'day': '2025-03-11'}", "True"]


def test_dualcache_construction_creates_no_ssl_context() -> None:
    # Every SSL context goes through SSLContext.__new__ (httpx builds one per HTTPS transport); the last line
    # shows the counter counts, so the zero before it is not vacuous.
    out = _run(
        "import ssl\n"
        "made = []\n"
        "real = ssl.SSLContext.__new__\n"
        "def counting(cls, *args, **kwargs):\n"
        "    made.append(cls)\n"
        "    return real(cls, *args, **kwargs)\n"
        "ssl.SSLContext.__new__ = counting\n"
        "from dualcache import DualCache, Namespace, StackOutputs\n"
        "outputs = StackOutputs.from_data({'stack': 'dev', 'account_id': 'a' * 32, 'gateway_id': 'gw',\n"
        "    'namespaces': {n.value: f'{i:032x}' for i, n in enumerate(Namespace, start=1)},\n"
        "    'worker_name': 'api', 'data_plane_url': 'https://dualcache-data.example.workers.dev'})\n"
        "cache = DualCache.from_outputs(outputs, api_token='t', data_plane_token='t', openai_api_key='k')\n"
        "cache.kv(Namespace.EMBEDDINGS_CACHE)\n"  # a store and its backend, still no request sent
        "print(len(made))\n"
        "import httpx\n"
        "httpx.AsyncHTTPTransport()\n"
        "print(len(made))\n"
    )
    assert out[0] == "0"
    assert int(out[1]) >= 1
