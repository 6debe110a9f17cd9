"""The offline plan: the real program under Pulumi's mock engine, with a stack file's config.

No Pulumi CLI, token, provider plugin or network is involved. The program runs exactly as ``pulumi up``
would run it, except that resource registrations go to :class:`pulumi.runtime.MockMonitor`. What the
engine would receive is recorded from the wire format (so a secret is seen where it is, even nested in a
list of bindings) and turned into a manifest::

    {"stack": ..., "resources": [{"type", "name", "inputs", "protect", "import"}], "outputs": {...}}

Secret values appear as ``"[secret]"``, never their value or length. Resources are sorted by type and
name, so the manifest is a stable snapshot (``infra/snapshots/<stack>.json``).

Pulumi's runtime keeps its state in context variables and per-thread event loops, so each plan runs in
a fresh thread (which starts with an empty context) with its own event loop: several stacks can be
planned in one process, one after the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
from google.protobuf import struct_pb2
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_pulumi_func

from dualcache import ConfigError, Namespace, StackConfig, load_stack_config
from dualcache._stackconfig import _read_yaml, check_stack_name, project_name, split_config_key

__all__ = [
    "SECRET",
    "PlanResult",
    "Registration",
    "manifest_json",
    "plan_manifest",
    "run_plan",
    "snapshot_path",
]

SECRET = "[secret]"
"""What a secret value looks like in a manifest."""
UNKNOWN = "[unknown]"
"""What a value unknown at plan time looks like in a manifest (none are expected: ids come from the mocks)."""
SECRET_PLACEHOLDER = "offline-plan-placeholder-for-{key}"  # tests check none leaks into a manifest
"""The value a secret config entry gets in the plan (its real value is encrypted; the plan never decrypts)."""


@dataclass(frozen=True)
class Registration:
    """One resource registration, as the engine would receive it.

    Attributes:
        type: The Pulumi type token, for example ``cloudflare:index/aiGateway:AiGateway``.
        name: The logical name.
        inputs: The inputs, plain JSON values, secrets as ``"[secret]"``.
        protect: Whether ``protect`` is set.
        import_id: The ``import_`` id, when the resource is adopted.
        retain_on_delete: Whether ``retain_on_delete`` is set.
        ignore_changes: The ``ignore_changes`` property names.
        custom: False for component resources.
        parent: The URN of the parent resource (a component, or the stack), when given.
    """

    type: str
    name: str
    inputs: dict[str, Any]
    protect: bool
    import_id: str | None
    retain_on_delete: bool
    ignore_changes: tuple[str, ...]
    custom: bool
    parent: str | None = None

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's view of this resource."""
        return {
            "type": self.type,
            "name": self.name,
            "inputs": self.inputs,
            "protect": self.protect,
            "import": self.import_id,
        }


@dataclass(frozen=True)
class PlanResult:
    """The outcome of one offline plan.

    Attributes:
        stack: The stack planned.
        config: The stack's validated settings.
        registrations: Every custom resource registered, sorted by type and name.
        outputs: The stack outputs, resolved; a secret output is ``"[secret]"``.
    """

    stack: str
    config: StackConfig
    registrations: list[Registration]
    outputs: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        """The manifest (see the module docstring)."""
        return {
            "stack": self.stack,
            "resources": [r.manifest_entry() for r in self.registrations],
            "outputs": self.outputs,
        }

    def find(self, type_suffix: str) -> list[Registration]:
        """The registrations whose type token ends with ``type_suffix`` (for example ``:AiGateway``)."""
        return [r for r in self.registrations if r.type.endswith(type_suffix)]

    def named(self, name: str) -> Registration:
        """The registration with the logical name ``name`` (for example ``dataplane-script``).

        Raises:
            KeyError: no resource has that name; the message lists the names there are.
        """
        for registration in self.registrations:
            if registration.name == name:
                return registration
        raise KeyError(f"no resource named {name!r}; resources: {', '.join(r.name for r in self.registrations)}")


def _plain(value: Any) -> Any:
    """A protobuf value as the engine receives it, as plain JSON; secrets become ``"[secret]"``."""
    if isinstance(value, struct_pb2.Value):
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            return _plain(value.struct_value)
        if kind == "list_value":
            return _plain(value.list_value)
        if kind == "number_value":
            number = value.number_value
            return int(number) if number.is_integer() else number
        if kind == "null_value" or kind is None:
            return None
        return _plain(getattr(value, kind))
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(v) for v in value.values]
    if isinstance(value, struct_pb2.Struct):
        fields = value.fields
        if rpc._special_sig_key in fields:
            sig = fields[rpc._special_sig_key].string_value
            if sig == rpc._special_secret_sig:
                return SECRET
            if sig == rpc._special_output_value_sig:
                if "secret" in fields and fields["secret"].bool_value:
                    return SECRET
                return _plain(fields["value"]) if "value" in fields else UNKNOWN
            if sig == rpc._special_resource_sig:
                return {"urn": _plain(fields["urn"])}
            # Assets and archives: keep what identifies them.
            return {k: _plain(v) for k, v in sorted(fields.items()) if k != rpc._special_sig_key}
        return {k: _plain(v) for k, v in sorted(fields.items())}
    if isinstance(value, str) and value == rpc.UNKNOWN:
        return UNKNOWN
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """Pulumi's mock monitor, recording each registration from the wire format before handing it on."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        if request.type != "pulumi:pulumi:Stack":
            registration = Registration(
                type=request.type,
                name=request.name,
                inputs=_plain(request.object),
                protect=bool(request.protect) if request.HasField("protect") else False,
                import_id=request.importId or None,
                retain_on_delete=bool(request.retainOnDelete) if request.HasField("retainOnDelete") else False,
                ignore_changes=tuple(request.ignoreChanges),
                custom=bool(request.custom),
                parent=request.parent or None,
            )
            with self._lock:
                self.registrations.append(registration)
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]


class _PlanMocks(pulumi_mocks.Mocks):
    """Ids and outputs of the mocked resources.

    Namespace ids are :meth:`StackConfig.offline_namespace_id` (what the local emulator uses too); an
    adopted namespace keeps the id from its import id.
    """

    def __init__(self, project_dir: Path, stack: str) -> None:
        self._project_dir = project_dir
        self._stack = stack
        self._ids: dict[str, str] | None = None

    def _id_for_title(self, title: object) -> str:
        if self._ids is None:
            # Loaded on first use: by then the program's own config reader has validated the same values,
            # so a bad stack file is reported by infra/config.py, as in a real run.
            config = load_stack_config(self._project_dir, self._stack)
            self._ids = {config.namespace_title(b): config.offline_namespace_id(b) for b in Namespace}
        if not isinstance(title, str) or title not in self._ids:
            raise ValueError(f"offline plan: unexpected namespace title {title!r}")
        return self._ids[title]

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        inputs = dict(args.inputs)
        token = args.typ
        if token == "cloudflare:index/workersKvNamespace:WorkersKvNamespace":
            if args.resource_id:
                return args.resource_id.split("/", 1)[-1], inputs
            return self._id_for_title(inputs.get("title")), inputs
        if token == "cloudflare:index/aiGateway:AiGateway":
            return str(inputs["aiGatewayId"]), inputs
        if token == "cloudflare:index/workersScript:WorkersScript":
            return str(inputs["scriptName"]), inputs
        digest = hashlib.sha256(f"{token}/{args.name}".encode()).hexdigest()[:32]
        return digest, inputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        raise NotImplementedError(f"offline plan: the program made an unexpected provider call {args.token!r}")


def _pulumi_config(project_dir: Path, stack: str) -> tuple[str, dict[str, str], list[str]]:
    """The stack file's config as the language host hands it over: strings, objects as JSON, secret keys.

    Secret (``secure:``) values are not decrypted: they get a placeholder and are marked secret.
    """
    check_stack_name(stack)
    project_file = project_dir / "Pulumi.yaml"
    project = project_name(_read_yaml(project_file), source=str(project_file))
    stack_file = project_dir / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        load_stack_config(project_dir, stack)  # raises ConfigError naming the stacks that exist
    entries = _read_yaml(stack_file).get("config") or {}
    if not isinstance(entries, Mapping):
        raise ConfigError(f"{stack_file}: 'config' must be a mapping")
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in entries.items():
        split_config_key(str(key), source=str(stack_file), project=project)  # Pulumi rejects `accountId: ...`
        full_key = str(key)
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            config[full_key] = SECRET_PLACEHOLDER.format(key=full_key)
            secret_keys.append(full_key)
        elif isinstance(value, str):
            config[full_key] = value
        else:
            config[full_key] = json.dumps(value)
    return project, config, secret_keys


class _LoopPerCallExecutor(ThreadPoolExecutor):
    """The executor the runtime sends monitor calls to; each call gets an event loop, closed afterwards.

    The mock monitor needs an event loop in its thread; left to itself it would create one per worker
    thread and never close it (a ResourceWarning once the thread ends).
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(_with_own_loop, fn, *args, **kwargs)


def _with_own_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return fn(*args, **kwargs)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _run_in_fresh_runtime(stack: str, project_dir: Path) -> PlanResult:
    project, values, secret_keys = _pulumi_config(project_dir, stack)
    loop = asyncio.new_event_loop()
    executor = _LoopPerCallExecutor(max_workers=1, thread_name_prefix="dualcache-plan")
    loop.set_default_executor(executor)
    asyncio.set_event_loop(loop)
    try:
        pulumi.runtime.set_all_config(values, secret_keys)
        mocks = _PlanMocks(project_dir, stack)
        monitor = _RecordingMonitor(mocks)
        pulumi_mocks.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)

        from infra.program import main

        try:
            loop.run_until_complete(run_pulumi_func(lambda: main(project_dir)))
        except Exception as exc:
            # The runtime wraps an error raised while a resource registers ("While processing input ...");
            # a ConfigError anywhere in the chain is what the user needs to read, without the wrapping.
            config_error = _find_config_error(exc)
            if config_error is not None and config_error is not exc:
                raise config_error from None
            raise
        root = pulumi.runtime.get_root_resource()
        exported: dict[str, Any] = dict(getattr(root, "outputs", {}))
        outputs = {name: loop.run_until_complete(_resolve(value)) for name, value in sorted(exported.items())}
    finally:
        _cancel_pending(loop)
        asyncio.set_event_loop(None)
        executor.shutdown(wait=True)
        loop.close()
    registrations = sorted((r for r in monitor.registrations if r.custom), key=lambda r: (r.type, r.name))
    config = load_stack_config(project_dir, stack)
    return PlanResult(stack=stack, config=config, registrations=registrations, outputs=outputs)


def _find_config_error(exc: BaseException) -> ConfigError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what a failed program left running, so closing the loop does not log "Task was destroyed"."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


async def _resolve(value: Any) -> Any:
    output = pulumi.Output.from_input(value)
    if await output.is_secret():
        return SECRET
    return json.loads(json.dumps(await output.future()))


def run_plan(stack: str, project_dir: Path) -> PlanResult:
    """Run the program offline for ``stack`` with ``project_dir/Pulumi.<stack>.yaml``.

    Raises:
        ConfigError: the stack file is missing or its config is invalid; the message names the key.
    """
    project_dir = Path(project_dir)
    result: list[PlanResult] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(_run_in_fresh_runtime(stack, project_dir))
        except BaseException as exc:  # noqa: BLE001 re-raised in the calling thread
            error.append(exc)

    thread = threading.Thread(target=target, name=f"dualcache-plan-{stack}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def plan_manifest(stack: str, project_dir: Path) -> dict[str, Any]:
    """The manifest of ``stack`` (see the module docstring)."""
    return run_plan(stack, project_dir).manifest()


def manifest_json(manifest: Mapping[str, Any]) -> str:
    """The manifest as committed in ``infra/snapshots/<stack>.json``: sorted keys, indented, newline-terminated."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def snapshot_path(project_dir: Path, stack: str) -> Path:
    """Where the snapshot of ``stack`` is committed."""
    return Path(project_dir) / "infra" / "snapshots" / f"{stack}.json"
