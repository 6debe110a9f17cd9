"""Running the emulator: provisioning a stack into it, the in-process :class:`Emulator`, the control client."""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from dualcache._cli import find_project_dir
from dualcache._exceptions import ConfigError, UsageError
from dualcache._outputs import StackOutputs
from dualcache._policy import Namespace
from dualcache._stackconfig import StackConfig, load_stack_config
from dualcache.local._app import create_app
from dualcache.local._clock import Clock
from dualcache.local._common import DATA_PLANE_PATH
from dualcache.local._lock import DataDirLock
from dualcache.local._state import DataPlane, EmulatorState
from dualcache.local._store import Store

__all__ = [
    "DATA_PLANE_TOKEN_ENV_VAR",
    "DEFAULT_DATA_DIR",
    "Emulator",
    "bind_socket",
    "check_data_plane_token",
    "connect_host",
    "data_plane_for",
    "data_plane_worker_name",
    "EmulatorControl",
    "emulated",
    "is_loopback",
    "gateway_settings",
    "new_data_plane_token",
    "provision",
    "stack_outputs",
]

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".dualcache")
DATA_PLANE_TOKEN_ENV_VAR = "DUALCACHE_DATA_PLANE_TOKEN"
"""The environment variable ``dualcache dev`` reads its data-plane token from (the runtime reads the same one)."""
_START_TIMEOUT = 15.0
_TOKEN_MAX = 4096


def new_data_plane_token() -> str:
    """A fresh random data-plane token (256 bits, URL-safe base64)."""
    return secrets.token_urlsafe(32)


def check_data_plane_token(token: str, *, source: str = "data_plane_token") -> str:
    """Validate a data-plane token; return it.

    Raises:
        ConfigError: it is empty, too long or holds anything but visible ASCII (it travels in a header); the
            message names ``source``, never the token.
    """
    if not token or len(token) > _TOKEN_MAX or not all("!" <= c <= "~" for c in token):
        raise ConfigError(
            f"{source}: the data-plane token must be 1..{_TOKEN_MAX} visible ASCII characters (no spaces); "
            "the value given is not"
        )
    return token


def data_plane_worker_name(config: StackConfig) -> str:
    """The data-plane Worker's script name for ``config``'s stack: ``<project>-dualcache-<stack>``."""
    return f"{config.project}-dualcache-{config.stack}"


def data_plane_for(config: StackConfig, token: str) -> DataPlane:
    """The :class:`DataPlane` of ``config``'s stack: its six bindings, gateway and ``token``."""
    return DataPlane(
        token=token,
        account_id=config.account_id,
        namespaces={b.value: config.offline_namespace_id(b) for b in Namespace},
        gateway_id=config.gateway_id,
        rate_limits={name: (r.limit, r.period) for name, r in config.data_plane.rate_limits.items()},
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0 = a free port), for uvicorn to listen on.

    The protocol is given explicitly (``IPPROTO_TCP``): asyncio sets ``TCP_NODELAY`` on accepted
    connections only when the listening socket says it is TCP, and without it every keep-alive response
    waits ~40 ms for a delayed ACK (Nagle).

    Raises:
        ConfigError: the address cannot be bound; the message names it and, for a port in use, what to do.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = (
                " (another process, perhaps another `dualcache dev`, is listening there: stop it or choose "
                "another port; port 0 takes a free one)"
            )
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    return sock


def connect_host(host: str) -> str:
    """The address clients should use for a server bound to ``host``, in URL form.

    A wildcard bind (``0.0.0.0``, ``::``) is reached on loopback; IPv6 addresses get brackets.
    """
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve to anything


def gateway_settings(config: StackConfig) -> dict[str, Any]:
    """The management-API body of the stack's gateway."""
    gw = config.gateway
    settings: dict[str, Any] = {
        "id": config.gateway_id,
        "cache_invalidate_on_update": gw.cache_invalidate_on_update,
        "cache_ttl": gw.cache_ttl,
        "collect_logs": gw.collect_logs,
        "rate_limiting_interval": gw.rate_limiting.interval,
        "rate_limiting_limit": gw.rate_limiting.limit,
        "rate_limiting_technique": gw.rate_limiting.technique,
        "authentication": gw.authentication,
        "retry_max_attempts": gw.retry.max_attempts,
        "retry_delay": gw.retry.delay,
        "retry_backoff": gw.retry.backoff,
    }
    if gw.log_management is not None:
        settings["log_management"] = gw.log_management
    if gw.log_management_strategy is not None:
        settings["log_management_strategy"] = gw.log_management_strategy
    return settings


def provision(store: Store, config: StackConfig, now: float) -> None:
    """Create or reopen the stack's six namespaces and its gateway in ``store``.

    Namespaces get the plan's titles and ids (:meth:`StackConfig.namespace_title`,
    :meth:`StackConfig.offline_namespace_id`). The gateway takes the stack's settings (the stack file is
    the source of truth, as ``pulumi up`` would make it); its cache is kept unless the settings changed
    and ``cache_invalidate_on_update`` is on.
    """
    from dualcache.local._common import _iso

    account = config.account_id
    for binding in Namespace:
        store.create_namespace(account, config.offline_namespace_id(binding), config.namespace_title(binding))
    wanted = gateway_settings(config)
    current = store.gateway(account, config.gateway_id)
    if current is None:
        stamp = _iso(now)
        store.put_gateway(account, {**wanted, "created_at": stamp, "modified_at": stamp})
        return
    stored = {k: v for k, v in current.items() if k not in ("created_at", "modified_at")}
    if stored != wanted:
        store.put_gateway(account, {**wanted, "created_at": current["created_at"], "modified_at": _iso(now)})
        if wanted["cache_invalidate_on_update"]:
            store.clear_gateway_cache(account, config.gateway_id)


def stack_outputs(config: StackConfig, base_url: str) -> StackOutputs:
    """The :class:`StackOutputs` of ``config`` with every base URL pointing at an emulator at ``base_url``.

    The data plane is ``{base_url}/dataplane``; its token is never part of the outputs. An emulator bound
    to a host that is not loopback is trusted here for plain http; a service loading these outputs must
    trust it too (``DUALCACHE_TRUSTED_HOSTS=http://<host>``, see :func:`dualcache.StackOutputs.load`).
    """
    base = base_url.rstrip("/")
    host = httpx.URL(base).host
    data = {
        "stack": config.stack,
        "account_id": config.account_id,
        "gateway_id": config.gateway_id,
        "api_base_url": f"{base}/client/v4",
        "gateway_base_url": f"{base}/v1",
        "namespaces": {b.value: config.offline_namespace_id(b) for b in Namespace},
        "worker_name": config.worker_name,
        "data_plane_url": f"{base}/{DATA_PLANE_PATH}",
        "data_plane_worker_name": data_plane_worker_name(config),
        "policies": config.policies,
        "gateway_api": config.gateway.api,
    }
    return StackOutputs.from_data(data, source="the emulator's outputs", trusted_hosts=[f"http://{host}"])


class EmulatorControl:
    """Synchronous client of the control endpoints (``/__emulator/...``).

    Args:
        base_url: The emulator's root URL, for example ``http://127.0.0.1:8787``.
        timeout: Seconds per control request.
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/__emulator/", timeout=timeout)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        # Every POST carries a JSON body: the control API refuses any other content type (see _app).
        response = self._client.request(method, path, json={} if body is None and method == "POST" else body)
        if response.status_code != 200:
            raise ConfigError(f"emulator control {method} {path} failed ({response.status_code}): {response.text}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Counters: ``kv`` operations by kind through the Cloudflare REST API, ``data_plane`` operations by
        kind through the data plane (plus its ``unauthorized`` and ``health``), ``gateway``
        hits/misses/skips/rate_limited/refused, ``upstream`` and ``direct`` model calls by model, injected
        ``faults``, ``surfaces`` (requests per surface: ``api`` = Cloudflare API, ``data_plane``, ``gateway``,
        ``other``) and total ``requests``."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """Requests served since the last reset, oldest first: ``{"surface", "method", "path", "query",
        "headers", "time"}`` (``surface`` as in :meth:`stats`)."""
        result: list[dict[str, Any]] = self._call("GET", "requests")
        return result

    def reset(self) -> None:
        """Clear the counters, the request log and the rate-limit windows (stored data stays)."""
        self._call("POST", "reset")

    def advance_clock(self, seconds: float) -> float:
        """Move the emulator's clock forward; return its new time (unix seconds)."""
        result = self._call("POST", "clock", {"advance": seconds})
        return float(result["now"])

    def now(self) -> float:
        """The emulator's current time (unix seconds)."""
        return float(self._call("GET", "clock")["now"])

    def set_faults(self, faults: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Replace the faults: per target ``kv``/``gateway``/``upstream`` a dict of ``error_rate``,
        ``status``, ``latency_ms``, ``timeout``, ``seed`` (and for ``upstream`` an optional ``provider``,
        ``workers-ai`` or ``openai``, to fail only that one; for ``kv`` and ``gateway`` with status 429 an
        optional ``retry_after`` in seconds, default 60). ``{}`` clears them all. The ``kv`` target covers
        the REST API and the data plane alike.

        Raises:
            ConfigError: the emulator rejected the spec (the message says why).
        """
        result: dict[str, Any] = self._call("POST", "faults", faults)
        return result

    def faults(self) -> dict[str, Any]:
        """The faults in force, per target, as they were set."""
        result: dict[str, Any] = self._call("GET", "faults")
        return result

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._call("POST", "faults", {})

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


class Emulator:
    """The emulator in-process: uvicorn on ``host`` and a free port, in a background thread.

    Use it as a context manager; entering provisions the stack and returns once the server answers,
    leaving stops the server and closes SQLite. Data in a ``data_dir`` you give survives; a new Emulator on
    the same directory sees it. Without one, each start gets a fresh temporary folder, removed on stop.
    While one runs, its data folder is locked: another Emulator (or ``dualcache dev``) on it is refused
    with a :class:`ConfigError`.

    Besides the Cloudflare APIs it serves the data-plane API (``outputs.data_plane_url``) over the same KV
    store, guarded by ``data_plane_token``.

    Args:
        stack: The stack whose settings (``Pulumi.<stack>.yaml``) are used.
        project_dir: Directory holding ``Pulumi.yaml``; ``None`` (without ``config``) = the nearest one at or
            above the current directory, as the ``dualcache`` command finds it.
        data_dir: Where the SQLite state lives; ``None`` = a fresh temporary folder per start, removed on stop
            (``dualcache dev`` uses ``.dualcache``, :data:`DEFAULT_DATA_DIR`).
        token: API token the emulator requires (``None`` = none).
        config: A :class:`StackConfig` to use instead of reading the stack file.
        openai_upstream: Forward ``openai/*`` to this OpenAI-compatible base URL.
        host: Interface to bind (loopback by default).
        port: Port to bind; 0 picks a free one.
        clock: The clock to use (default: wall clock plus an offset moved by the control endpoint).
        data_plane_token: The bearer token of the data plane; ``None`` generates a random one.

    Attributes:
        url: ``http://HOST:PORT`` once started.
        outputs: The :class:`StackOutputs` pointing at this emulator.
        config: The :class:`StackConfig` in use.
        data_dir: The data folder: the one given, or while running the temporary one (else ``None``).
        token: The API token (``None`` = no authentication).
        data_plane_token: The data plane's bearer token (known before start; never in ``outputs``).
        control: An :class:`EmulatorControl` for the control endpoints.
        state: The live :class:`EmulatorState` (counters, faults, store).
    """

    def __init__(
        self,
        stack: str = "dev",
        project_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        token: str | None = None,
        config: StackConfig | None = None,
        openai_upstream: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        data_plane_token: str | None = None,
    ) -> None:
        if data_plane_token is not None:
            check_data_plane_token(data_plane_token)
        if config is None:
            if project_dir is None:
                try:
                    project_dir = find_project_dir()
                except ConfigError as exc:
                    raise ConfigError(
                        f"Emulator: {exc.args[0].split(';')[0]}; run inside the project, or pass project_dir (the "
                        "directory holding Pulumi.yaml) or config"
                    ) from None
            config = load_stack_config(project_dir, stack)
        self.config = config
        self.token = token or None
        self.data_plane_token = data_plane_token or new_data_plane_token()
        self._own_data_dir = data_dir is None
        """Whether the data folder is a temporary one of this Emulator's (made on start, removed on stop)."""
        self.data_dir: Path | None = None if data_dir is None else Path(data_dir)
        self.host = host
        self._port = port
        self._clock = clock
        self._openai_upstream = openai_upstream
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._state: EmulatorState | None = None
        self._control: EmulatorControl | None = None
        self._outputs: StackOutputs | None = None
        self._lock: DataDirLock | None = None
        self.url = ""

    @property
    def state(self) -> EmulatorState:
        """The live state (raises :class:`UsageError` when not started)."""
        if self._state is None:
            raise UsageError("the Emulator is not running; use it as a context manager")
        return self._state

    @property
    def outputs(self) -> StackOutputs:
        """The stack outputs pointing at this emulator."""
        if self._outputs is None:
            raise UsageError("the Emulator is not running; use it as a context manager")
        return self._outputs

    @property
    def control(self) -> EmulatorControl:
        """The control-endpoint client."""
        if self._control is None:
            raise UsageError("the Emulator is not running; use it as a context manager")
        return self._control

    def start(self) -> Emulator:
        """Provision the stack, start serving and wait until ready. Returns ``self``."""
        if self._thread is not None:
            raise UsageError("the Emulator is already running")
        sock = bind_socket(self.host, self._port)  # first: a port in use leaves no data folder behind
        if self._own_data_dir:
            self.data_dir = Path(tempfile.mkdtemp(prefix="dualcache-emulator-"))
        assert self.data_dir is not None
        lock = DataDirLock(self.data_dir)
        store: Store | None = None
        try:
            lock.acquire()  # before the store: a folder in use is left as it is
            store = Store(self.data_dir)
            state = EmulatorState(
                store,
                clock=self._clock,
                token=self.token,
                openai_upstream=self._openai_upstream,
                data_plane=data_plane_for(self.config, self.data_plane_token),
                bound_host=self.host,
            )
            provision(store, self.config, state.clock.now())
        except BaseException:
            if store is not None:
                store.close()
            lock.release()
            sock.close()
            self._remove_own_data_dir()
            raise
        self._lock = lock
        port = sock.getsockname()[1]
        self.url = f"http://{connect_host(self.host)}:{port}"
        app = create_app(state)
        # uvicorn closes a connection idle for 5 s by default; a pooled client that picks such a connection just as
        # it closes gets "server disconnected" and retries (a fault counted in ``errors``). Cloudflare's edge keeps
        # idle connections far longer, so the emulator does too.
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=75,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dualcache-emulator", daemon=True)
        self._state, self._server, self._thread, self._sock = state, server, thread, sock
        thread.start()
        started = threading.Event()
        deadline = _START_TIMEOUT
        while deadline > 0 and thread.is_alive():
            if server.started:
                started.set()
                break
            started.wait(0.01)
            deadline -= 0.01
        if not server.started:
            self.stop()
            raise UsageError(f"the emulator did not start on {self.url} within {_START_TIMEOUT:.0f} s")
        self._outputs = stack_outputs(self.config, self.url)
        self._control = EmulatorControl(self.url)
        return self

    def stop(self) -> None:
        """Stop serving (in-flight ``timeout`` faults return early) and close SQLite (idempotent)."""
        if self._state is not None:
            self._state.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._control is not None:
            self._control.close()
        if self._state is not None:
            self._state.store.close()
        if self._sock is not None:
            self._sock.close()  # uvicorn closed its server; this releases our reference
        if self._lock is not None:
            self._lock.release()
            self._remove_own_data_dir()
        self._server = self._thread = self._control = self._state = self._sock = None
        self._outputs = self._lock = None

    def _remove_own_data_dir(self) -> None:
        # Only a folder this Emulator made (data_dir=None); a folder the caller gave is theirs and is kept.
        if self._own_data_dir and self.data_dir is not None:
            try:
                shutil.rmtree(self.data_dir)
            except OSError as exc:  # a leftover temporary folder is harmless; say so rather than fail the stop
                logger.warning("could not remove the emulator's temporary data folder %s: %s", self.data_dir, exc)
            self.data_dir = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def emulated(
    stack: str = "dev",
    project_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    token: str | None = None,
    config: StackConfig | None = None,
    openai_upstream: str | None = None,
    *,
    data_plane_token: str | None = None,
) -> Iterator[StackOutputs]:
    """Run an :class:`Emulator` for the ``with`` block and give the :class:`StackOutputs` pointing at it.

    For code that only needs somewhere to point a service (``DualCache.from_outputs(outputs, ...)``);
    use :class:`Emulator` itself for the control endpoints. Arguments are :class:`Emulator`'s (so the
    project is found at or above the current directory, and the data lives in a temporary folder, unless
    given); pass ``data_plane_token`` to reach the data plane (the outputs never carry it).

    Example::

        with emulated() as outputs:
            async with DualCache.from_outputs(outputs) as cache: ...
    """
    with Emulator(
        stack,
        project_dir,
        data_dir,
        token=token,
        config=config,
        openai_upstream=openai_upstream,
        data_plane_token=data_plane_token,
    ) as emulator:
        yield emulator.outputs
