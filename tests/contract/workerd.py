"""The data-plane Worker in workerd: ``infra/worker/dev.mjs`` run as a child process, for tests and benches.

A :class:`DataPlane` is what the contract suite needs of an implementation of ``infra/worker/DATAPLANE.md``:
its URL, its token and a way to move its KV clock. :func:`workerd_data_plane` gives one backed by the real
Workers runtime (miniflare's workerd); the local emulator can give another, so the same suite runs over both.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKER_DIR = REPO / "infra" / "worker"
LAUNCHER = WORKER_DIR / "dev.mjs"
START_TIMEOUT_S = 60.0
"""How long the Worker may take to print its URL (workerd starts in about a second; the machine is shared)."""
COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DataPlane:
    """One running implementation of the data-plane API.

    Attributes:
        name: Which implementation (``"workerd"``, ...); the contract tests' parameter id.
        url: The ``data_plane_url``, without a trailing slash.
        token: The bearer token it accepts, or None when it runs without one (then it answers 401 to all).
        advance: Moves the KV clock forward by whole seconds. In workerd only ``RATE_LIMITS`` is clocked, so
            TTL tests use that namespace (and keep its values under 1 KiB, see ``dev.mjs``).
    """

    name: str
    url: str
    token: str | None
    advance: Callable[[int], None]


class WorkerdError(RuntimeError):
    """The workerd launcher could not start or did not answer."""


def node_or_none() -> str | None:
    """The ``node`` executable, or None when Node.js is not installed."""
    return shutil.which("node")


@contextlib.contextmanager
def workerd_data_plane(
    *,
    token: str | None = None,
    with_token: bool = True,
    worker_dir: Path = WORKER_DIR,
    rate_limits: Mapping[str, tuple[int, int]] | None = None,
) -> Iterator[DataPlane]:
    """Starts the data-plane Worker in workerd on 127.0.0.1 and stops it on exit.

    Args:
        token: The ``DUALCACHE_TOKEN`` secret; a random one when None and ``with_token`` is true.
        with_token: False starts a Worker without ``DUALCACHE_TOKEN``.
        worker_dir: The directory holding ``dev.mjs`` and ``node_modules``.
        rate_limits: Workers Rate Limiting bindings to bind, ``{name: (limit, period)}`` (period 10 or 60).

    Yields:
        The running data plane.

    Raises:
        WorkerdError: Node.js or ``infra/worker/node_modules`` is missing, or the Worker did not start in
            ``START_TIMEOUT_S``.
    """
    node = node_or_none()
    if node is None:
        raise WorkerdError("Node.js is not installed; the data-plane Worker runs in workerd through miniflare")
    if not (worker_dir / "node_modules" / "miniflare").is_dir():
        raise WorkerdError(f"{worker_dir / 'node_modules'} has no miniflare: run make setup")
    env = {k: v for k, v in os.environ.items() if k not in ("DUALCACHE_TOKEN", "DUALCACHE_RATE_LIMITS")}
    if rate_limits:
        env["DUALCACHE_RATE_LIMITS"] = json.dumps(
            {n: {"limit": lim, "period": per} for n, (lim, per) in rate_limits.items()}
        )
    secret = (token or secrets.token_urlsafe(32)) if with_token else None
    if secret is not None:
        env["DUALCACHE_TOKEN"] = secret
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [node, str(worker_dir / LAUNCHER.name)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=worker_dir,
            text=True,
            bufsize=1,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        pumper = threading.Thread(target=pump, name="workerd-stdout", daemon=True)
        pumper.start()

        def fail(what: str) -> WorkerdError:
            stderr.seek(0)
            detail = stderr.read().decode("utf-8", "replace").strip()[-2000:]
            return WorkerdError(f"the workerd data plane {what}; its stderr: {detail or '(empty)'}")

        def next_line(timeout: float, what: str) -> str:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise fail(f"did not {what} within {timeout:.0f} s") from None
            if line is None:
                raise fail(f"exited (status {proc.wait()}) before it could {what}")
            return line

        lock = threading.Lock()

        def advance(seconds: int) -> None:
            if seconds < 0:
                raise ValueError(f"the clock only moves forward; got {seconds} s")
            assert proc.stdin is not None
            with lock:
                proc.stdin.write(f"advance {seconds}\n")
                proc.stdin.flush()
                answer = next_line(COMMAND_TIMEOUT_S, "answer an advance command")
                while not answer.startswith(("ok ", "error ")):  # a line the runtime printed; not an answer
                    answer = next_line(COMMAND_TIMEOUT_S, "answer an advance command")
            if answer != f"ok advance {seconds}":
                raise WorkerdError(f"advance {seconds} was answered {answer!r}")

        try:
            url = next_line(START_TIMEOUT_S, "print its URL")
            if not url.startswith("http://127.0.0.1:"):
                raise fail(f"printed {url!r} instead of its URL")
            yield DataPlane(name="workerd", url=url, token=secret, advance=advance)
        finally:
            # Closing stdin is the launcher's signal to stop; terminate only if it does not.
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=10)
            pumper.join(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
