"""``dualcache dev``: run the local emulator for one stack until interrupted.

Cheap to import: starlette and uvicorn are imported inside the command.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from dualcache._cli import add_project_dir_argument, find_project_dir
from dualcache._exceptions import ConfigError
from dualcache._untrusted import read_text_file, redact_url

__all__ = ["API_TOKEN_ENV_VAR", "TOKEN_FILE_MAX_BYTES", "register", "run_dev"]

API_TOKEN_ENV_VAR = "DUALCACHE_DEV_TOKEN"
"""The environment variable ``dualcache dev`` reads its API token from when neither flag is given."""
TOKEN_FILE_MAX_BYTES = 4096
"""Largest token file read (``--token-file``, ``--data-plane-token-file``)."""
_VISIBLE = "A command-line flag is visible to other users in the process list: prefer the file or the environment"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


_without_userinfo = redact_url  # the one helper; kept under this name for the tests that import it


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dev`` subcommand."""
    parser = subparsers.add_parser(
        "dev",
        help="run the local Cloudflare emulator (KV, AI Gateway, Workers AI) for a stack",
        description=(
            "Serve the Workers KV REST API, the AI Gateway (management and proxy) and Workers AI on loopback, "
            "with local deterministic models, for the stack's namespaces and gateway, and the data-plane API of "
            "dualcache's Worker over the same KV (under /dataplane). Writes DIR/outputs.STACK.json "
            "(StackOutputs pointing at the emulator, without any token) and serves until interrupted (Ctrl-C). "
            "One emulator per DIR: a second one on the same folder is refused."
        ),
    )
    parser.add_argument(
        "--stack", "-s", default="dev", help="stack whose Pulumi.<stack>.yaml settings to use (default: dev)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: 127.0.0.1, loopback). Requests must name a loopback host (or this one) "
        "in their Host header, so a web page cannot reach the emulator through DNS rebinding",
    )
    parser.add_argument("--port", type=int, default=8787, help="port to listen on (default: 8787; 0 = a free port)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(".dualcache"),
        metavar="DIR",
        help="state folder: emulator.sqlite3 and outputs.STACK.json (default: .dualcache)",
    )
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        default=None,
        help="API token every Cloudflare API request (and Workers AI through the gateway) must carry as "
        f"'Authorization: Bearer <token>' (default: --token-file, else ${API_TOKEN_ENV_VAR}, else no "
        f"authentication). {_VISIBLE}",
    )
    tokens.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read the API token from this file (its first line; not visible in the process list)",
    )
    data_plane_tokens = parser.add_mutually_exclusive_group()
    data_plane_tokens.add_argument(
        "--data-plane-token",
        default=None,
        metavar="TOKEN",
        help="bearer token the data plane requires (default: --data-plane-token-file, else "
        f"$DUALCACHE_DATA_PLANE_TOKEN, else a random one, printed at start). {_VISIBLE}",
    )
    data_plane_tokens.add_argument(
        "--data-plane-token-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read the data plane's bearer token from this file (its first line)",
    )
    parser.add_argument(
        "--openai-upstream",
        default=None,
        metavar="URL",
        help="forward openai/* to this OpenAI-compatible base URL (e.g. http://127.0.0.1:11434/v1) "
        "instead of the local models",
    )
    add_project_dir_argument(parser)
    parser.set_defaults(func=run_dev, extra="local")


def _token_from_file(path: Path, flag: str) -> str:
    """The first line of a token file (bounded read; a FIFO or device is refused), without its newline."""
    text = read_text_file(path, limit=TOKEN_FILE_MAX_BYTES, what=f"{flag} file")
    token = text.splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ConfigError(f"{flag} {str(path)!r} is empty; write the token on its first line")
    return token


def _api_token(flag: str | None, file: Path | None) -> tuple[str | None, str]:
    """The API token and where it came from: the flag, the file, the environment, or ``(None, "")`` (none)."""
    from dualcache.local._server import check_data_plane_token

    # The API token has the data-plane token's rules: visible ASCII, it travels in a header.
    if flag is not None:
        return (check_data_plane_token(flag, source="--token") if flag else None), "--token"
    if file is not None:
        return check_data_plane_token(_token_from_file(file, "--token-file"), source="--token-file"), "--token-file"
    from_env = os.environ.get(API_TOKEN_ENV_VAR)
    if from_env:
        source = f"${API_TOKEN_ENV_VAR}"
        return check_data_plane_token(from_env, source=source), source
    return None, ""


def _data_plane_token(flag: str | None, file: Path | None = None) -> tuple[str, str]:
    """The data-plane token and where it came from: the flag, the file, the environment, or ``""`` (generated)."""
    from dualcache.local._server import DATA_PLANE_TOKEN_ENV_VAR, check_data_plane_token, new_data_plane_token

    if flag is not None:
        return check_data_plane_token(flag, source="--data-plane-token"), "--data-plane-token"
    if file is not None:
        token = _token_from_file(file, "--data-plane-token-file")
        return check_data_plane_token(token, source="--data-plane-token-file"), "--data-plane-token-file"
    from_env = os.environ.get(DATA_PLANE_TOKEN_ENV_VAR)
    if from_env:
        source = f"${DATA_PLANE_TOKEN_ENV_VAR}"
        return check_data_plane_token(from_env, source=source), source
    return new_data_plane_token(), ""


def _check_data_dir(data: Path) -> None:
    """Refuse a ``--data`` that is not a folder (or cannot become one) before anything is bound or written."""
    existing = next((p for p in (data, *data.parents) if p.exists() or p.is_symlink()), None)
    if existing is None or existing.is_dir():
        return
    if existing == data:
        raise ConfigError(f"--data {str(data)!r} is not a directory; give a folder for the emulator's state")
    raise ConfigError(f"--data {str(data)!r}: {str(existing)!r} is not a directory, so the folder cannot be created")


def run_dev(args: argparse.Namespace) -> int:
    """Run the emulator in the foreground; return 0 after Ctrl-C / SIGTERM."""
    from dualcache.local import require_local_extra

    require_local_extra()
    import uvicorn

    from dualcache._stackconfig import load_stack_config
    from dualcache.local._app import EmulatorState, create_app
    from dualcache.local._lock import DataDirLock
    from dualcache.local._server import (
        DATA_PLANE_TOKEN_ENV_VAR,
        bind_socket,
        connect_host,
        data_plane_for,
        is_loopback,
        provision,
        stack_outputs,
    )
    from dualcache.local._store import Store

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port number (0..65535)")
    _check_data_dir(Path(args.data))
    if args.openai_upstream and not str(args.openai_upstream).startswith(("http://", "https://")):
        raise ConfigError(f"--openai-upstream {redact_url(args.openai_upstream)!r} is not an http(s) URL")
    api_token, api_token_source = _api_token(args.token, args.token_file)
    data_plane_token, token_source = _data_plane_token(args.data_plane_token, args.data_plane_token_file)
    project_dir = args.project_dir if args.project_dir is not None else find_project_dir()
    config = load_stack_config(project_dir, args.stack)

    sock = bind_socket(args.host, args.port)  # ConfigError naming the address when it cannot
    port = sock.getsockname()[1]
    url = f"http://{connect_host(args.host)}:{port}"

    lock = DataDirLock(args.data)
    store: Store | None = None
    try:
        lock.acquire()  # another emulator on this folder: a one-line ConfigError, nothing written
        store = Store(args.data)
        state = EmulatorState(
            store,
            token=api_token,
            openai_upstream=args.openai_upstream,
            data_plane=data_plane_for(config, data_plane_token),
            bound_host=args.host,
        )
        provision(store, config, state.clock.now())
        outputs = stack_outputs(config, url)
        outputs_path = Path(args.data) / f"outputs.{config.stack}.json"
        outputs.dump(outputs_path)
        bound = f" (listening on {args.host or '0.0.0.0'} port {port})" if args.host in ("", "0.0.0.0", "::") else ""
        print(f"dualcache dev: stack {config.stack!r} emulated at {url}{bound}", flush=True)
        print(f"  Cloudflare API base  {outputs.api_base_url}", flush=True)
        print(f"  AI Gateway base      {outputs.gateway_base_url}/{config.account_id}/{config.gateway_id}", flush=True)
        print(f"  data plane           {outputs.data_plane_url}  (Worker {outputs.data_plane_worker_name})", flush=True)
        if token_source:
            print(f"  data-plane token     from {token_source}", flush=True)
        else:
            print(f"  data-plane token     {DATA_PLANE_TOKEN_ENV_VAR}={data_plane_token}  (generated)", flush=True)
        print(f"  outputs              {outputs_path}  (DUALCACHE_OUTPUTS={outputs_path})", flush=True)
        print(f"  state                {store.path}", flush=True)
        auth = f"Bearer token required (from {api_token_source})" if api_token else "off"
        print(f"  API authentication   {auth}", flush=True)
        if args.openai_upstream:
            print(f"  openai/* forwarded to {redact_url(args.openai_upstream)}", flush=True)
        print("  models are local, deterministic stand-ins; press Ctrl-C to stop", flush=True)
        if not is_loopback(args.host):
            print(
                f"dualcache dev: warning: listening on {args.host}, reachable from other machines; the "
                "/__emulator control endpoints take no token"
                + ("" if api_token else ", and without --token neither does the API")
                + (
                    ""
                    if args.host in ("", "0.0.0.0", "::")
                    else f"; services must trust it with DUALCACHE_TRUSTED_HOSTS=http://{connect_host(args.host)}"
                ),
                file=sys.stderr,
                flush=True,
            )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(state), log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
            )
        )
        # uvicorn handles SIGINT/SIGTERM itself (graceful shutdown) in the main thread, then re-raises the
        # signal once it has stopped: SIGINT becomes KeyboardInterrupt, and SIGTERM is routed there too.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # the normal way to stop: uvicorn has shut down gracefully, "stopped" is printed below
        finally:
            signal.signal(signal.SIGTERM, previous)
            state.stopping.set()
    finally:
        if store is not None:
            store.close()
        sock.close()
        lock.release()
    print("dualcache dev: stopped", file=sys.stderr, flush=True)
    return 0
