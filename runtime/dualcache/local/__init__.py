"""dualcache.local: a loopback emulator of the Cloudflare APIs dualcache uses (``dualcache dev``).

It serves the Workers KV REST API, the AI Gateway management API and proxy (``workers-ai`` and
``openai``, with the gateway's caching, rate limiting and authentication) and the direct Workers AI
endpoint, answered by local, deterministic stand-in models, and the data-plane API of dualcache's own
Worker (``infra/worker/DATAPLANE.md``) over the same KV store. State lives in SQLite under a data folder,
which one emulator at a time may use (it is locked while the server runs).

Needs the ``local`` extra (starlette, uvicorn): ``pip install 'dualcache[local]'``. The public names
are loaded on first use, so that ``dualcache``'s command line (which registers ``dev`` from
``dualcache.local._cli``) stays cheap to start and works without the extra; using any of them without
the extra raises :class:`ImportError` naming it.

Both :class:`Emulator` and :func:`emulated` find the project (``Pulumi.yaml``) at or above the current
directory, as the ``dualcache`` command does, unless given ``project_dir`` or ``config``; without
``data_dir`` the state lives in a fresh temporary folder, removed when the emulator stops.

Example::

    from dualcache.local import Emulator, emulated

    with Emulator(stack="dev") as emu:
        outputs = emu.outputs          # StackOutputs pointing at the emulator (data_plane_url too)
        token = emu.data_plane_token   # the data plane's bearer token (never in the outputs)
        emu.control.advance_clock(3600)

    with emulated(stack="dev", data_dir=".dualcache") as outputs:   # just the outputs; data kept in .dualcache
        ...
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualcache.local._app import DataPlane, EmulatorState, FaultSpec, create_app
    from dualcache.local._clock import Clock
    from dualcache.local._server import (
        DATA_PLANE_TOKEN_ENV_VAR,
        DEFAULT_DATA_DIR,
        Emulator,
        EmulatorControl,
        data_plane_for,
        emulated,
        gateway_settings,
        provision,
        stack_outputs,
    )
    from dualcache.local._store import Store

__all__ = [
    "DATA_PLANE_TOKEN_ENV_VAR",
    "DEFAULT_DATA_DIR",
    "Clock",
    "DataPlane",
    "Emulator",
    "EmulatorControl",
    "EmulatorState",
    "FaultSpec",
    "Store",
    "create_app",
    "data_plane_for",
    "emulated",
    "gateway_settings",
    "provision",
    "require_local_extra",
    "stack_outputs",
]

_WHERE = {
    "DATA_PLANE_TOKEN_ENV_VAR": "_server",
    "DEFAULT_DATA_DIR": "_server",
    "Clock": "_clock",
    "DataPlane": "_app",
    "Emulator": "_server",
    "EmulatorControl": "_server",
    "EmulatorState": "_app",
    "FaultSpec": "_app",
    "Store": "_store",
    "create_app": "_app",
    "data_plane_for": "_server",
    "emulated": "_server",
    "gateway_settings": "_server",
    "provision": "_server",
    "stack_outputs": "_server",
}
_EXTRA_MODULES = ("starlette", "uvicorn")


def require_local_extra() -> None:
    """Check that the ``local`` extra is installed.

    Raises:
        ImportError: starlette or uvicorn is missing; the message says ``pip install 'dualcache[local]'``.
    """
    missing = [name for name in _EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"dualcache.local needs the 'local' extra ({', '.join(missing)} missing): pip install 'dualcache[local]'",
            name=missing[0],
        )


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dualcache.local' has no attribute {name!r}")
    require_local_extra()
    value = getattr(importlib.import_module(f"dualcache.local.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
