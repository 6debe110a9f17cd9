"""Compare two plan manifests and render the difference as a bounded, secret-free Markdown summary.

``dualcache plan --stack S --diff BASE.json`` and ``dualcache plan --stack S --against GIT_REF`` end
here (:func:`run_diff`). The comparison itself is pure: :func:`diff_manifests` turns two manifests (the
format ``dualcache plan --json`` prints) into a :class:`PlanDiff`, :func:`render_markdown` turns that
into Markdown, and :func:`exit_status` into the exit status (0 no change, 2 changes; errors are 1,
reported by the command line).

What is compared, and how:

* Resources are keyed by ``(type, name)``. One only in the new plan is *added*, one only in the base
  is *removed*; for one in both, every input is compared by its path
  (``bindings[name=API_CACHE].namespaceId``). Lists whose items are objects with distinct ``name``
  fields (Worker bindings) are matched by name, so reordering them is not a change; an item present on
  one side only (an added or removed binding) is one change holding all its fields.
* A resource is *replaced* when an input that forces replacement changed (:data:`REPLACE_ON_CHANGE`,
  from the Terraform provider schema the Pulumi provider is built on); an input where that is not
  certain is marked "may force replacement" (:data:`MAY_REPLACE_ON_CHANGE`). ``protect`` and
  ``import`` changes are shown as such; setting or changing ``import`` on a resource in both plans is
  a replacement (the engine's import-replacement adopts the existing resource and deletes the old one).
* Policies (``outputs.dualcache.policies``) are compared per operation and field; the other outputs
  by path.

Secrets never appear, not even their length: a value equal to ``"[secret]"`` (how the plan writes
secret inputs), a value under a key that names a secret (token, password, ...), the ``text`` of a
``secret_text`` binding and Pulumi's own secret envelope are all secrets, shown only as "added
(secret)", "removed (secret)" or "changed (secret)".

The Markdown is bounded (:data:`DEFAULT_MAX_CHARS`, below GitHub's 65,536-character comment limit);
past the bound it is cut at a line boundary and a last line says how much was left out.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dualcache._exceptions import ConfigError, InvalidInputError
from dualcache._untrusted import quote, read_json_file

__all__ = [
    "DEFAULT_MAX_CHARS",
    "MANIFEST_MAX_BYTES",
    "MAY_REPLACE_ON_CHANGE",
    "MIN_MAX_CHARS",
    "MISSING",
    "REPLACE_ON_CHANGE",
    "SECRET",
    "ChangeKind",
    "InputChange",
    "PlanDiff",
    "Replacement",
    "ResourceChange",
    "ValueChange",
    "base_manifest_from_git",
    "diff_manifests",
    "empty_manifest",
    "exit_status",
    "load_manifest",
    "render_markdown",
    "run_diff",
    "truncate_markdown",
    "validate_manifest",
]

SECRET: Final = "[secret]"
"""How a plan manifest writes a secret value, and how a secret is shown."""

MANIFEST_MAX_BYTES: Final = 32 * 1024 * 1024
"""Largest base manifest ``--diff`` reads (32 MiB): far above a real one (~14 KB; a Worker bundle is inlined, and
Cloudflare caps a Worker at 10 MB compressed)."""

DEFAULT_MAX_CHARS: Final = 60_000
"""Default bound of the Markdown: GitHub rejects comments over 65,536 characters."""

MIN_MAX_CHARS: Final = 1_000
"""Smallest bound accepted: room for the heading, the summary line and the truncation note."""

EXIT_NO_CHANGES: Final = 0
EXIT_CHANGES: Final = 2

_CLOUDFLARE_TYPES = "cloudflare:"
REPLACE_ON_CHANGE: Final[Mapping[str, frozenset[str]]] = {
    # `account_id` carries `RequiresReplace` on every account-scoped resource of the Terraform provider
    # (TF schema.go of ai_gateway, workers_kv_namespace, workers_script).
    "*": frozenset({"account_id"}),
    # TF `id` (Pulumi `ai_gateway_id`) is replace-on-change (TF schema.go of ai_gateway).
    "cloudflare:index/aiGateway:AiGateway": frozenset({"account_id", "ai_gateway_id"}),
    # TF schema.go of workers_script: `script_name` has `RequiresReplace`.
    "cloudflare:index/workersScript:WorkersScript": frozenset({"account_id", "script_name"}),
    # TF schema.go of workers_kv_namespace: only `account_id` forces replacement; `title` is updated in
    # place (a rename), so a title change is a plain change.
    "cloudflare:index/workersKvNamespace:WorkersKvNamespace": frozenset({"account_id"}),
    # TF schema.go of workers_script_subdomain: `account_id` and `script_name` have `RequiresReplace`
    # (renaming the Worker replaces its workers.dev subdomain resource too).
    "cloudflare:index/workersScriptSubdomain:WorkersScriptSubdomain": frozenset({"account_id", "script_name"}),
    # TF schema.go of workers_route: zone-scoped (no `account_id`); `zone_id` and `route_id` have
    # `RequiresReplace`, `pattern` and `script` are updated in place.
    "cloudflare:index/workersRoute:WorkersRoute": frozenset({"zone_id", "route_id"}),
    # TF schema.go of workers_custom_domain: `account_id` has `RequiresReplace` in every version read.
    "cloudflare:index/workersCustomDomain:WorkersCustomDomain": frozenset({"account_id"}),
}
"""Inputs whose change makes the engine delete and re-create the resource, per type token.

``"*"`` applies to every ``cloudflare:`` resource type not listed. Component resources (other
packages) are never replaced by an input change, so nothing applies to them. Names are the Python
(snake_case) ones; manifest inputs in the engine's camelCase (``aiGatewayId``) are matched to them.
"""

MAY_REPLACE_ON_CHANGE: Final[Mapping[str, frozenset[str]]] = {
    # pulumi-cloudflare's WorkersKvNamespace: newer wheels add `jurisdiction` ("creation-time only") and `mode` (KV
    # Instant). The TF schema read (a96c5fa) predates both, so their plan modifiers are unknown: a change
    # may be a replacement or a rejected update. The diff says "may force replacement" rather than guess.
    "cloudflare:index/workersKvNamespace:WorkersKvNamespace": frozenset({"jurisdiction", "mode"}),
    # TF schema.go of workers_custom_domain: `hostname` carries `RequiresReplace` in one provider version
    # read and not in another, so which one the installed pulumi-cloudflare is built on decides.
    "cloudflare:index/workersCustomDomain:WorkersCustomDomain": frozenset({"hostname"}),
}
"""Inputs whose change may force replacement; where the sources are not certain the diff says so."""

# Key names that hold secrets wherever they appear (compared in snake_case: `apiToken` is `api_token`).
_SECRET_KEY_PARTS = ("secret", "token", "password", "passwd", "authorization", "api_key", "apikey", "private_key")
_SECRET_KEYS_EXACT = frozenset({"key_base64", "key_jwk", "credentials", "passphrase"})
# Fields that are secret inside an object of a given `type` (Worker bindings).
_SECRET_FIELDS_BY_TYPE: Mapping[str, frozenset[str]] = {"secret_text": frozenset({"text"})}
# Pulumi's wire marker for a secret value: {"4dabf18193072939515e22adb298388d": "1b47...", "value": ...}.
_PULUMI_SECRET_SIG = "4dabf18193072939515e22adb298388d"

_MAX_INLINE_VALUE = 160
"""Longer strings (and any multi-line string) are summarised by line count and a short hash."""


@dataclass(frozen=True)
class _Secret:
    """A secret leaf. It keeps only a fingerprint, to tell a changed secret from an unchanged one.

    A value the plan already redacted (``"[secret]"``) has no fingerprint: two of those compare equal,
    since the manifests cannot tell whether the secret behind them changed. The fingerprint is never
    rendered; the repr is the marker.
    """

    fingerprint: str = ""

    def __repr__(self) -> str:
        return SECRET


def _secret(raw: object) -> _Secret:
    if raw == SECRET:
        return _Secret()
    return _Secret(hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest())


class _Missing:
    """Marks a path absent on one side of a change."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
"""The ``old`` or ``new`` of a :class:`ValueChange` for a value absent on that side."""


class ChangeKind(enum.Enum):
    """What happens to one resource."""

    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"
    UPDATE = "update"


class Replacement(enum.Enum):
    """Whether changing an input forces the resource to be replaced."""

    NO = "no"
    YES = "yes"
    MAYBE = "maybe"


@dataclass(frozen=True)
class ValueChange:
    """One value that changed, by path. ``old``/``new`` are :data:`MISSING` when absent on that side.

    Attributes:
        path: Dotted path with ``[i]`` / ``[name=X]`` list parts.
        old: The base value (a JSON value, ``MISSING``, or the secret marker).
        new: The new value (same kinds).
    """

    path: str
    old: object
    new: object

    @property
    def secret(self) -> bool:
        """True when either side is a secret: the change is then shown without values."""
        return isinstance(self.old, _Secret) or isinstance(self.new, _Secret)


@dataclass(frozen=True)
class InputChange(ValueChange):
    """A changed resource input (or the ``protect`` / ``import`` option).

    Attributes:
        replacement: Whether this change forces the resource to be replaced.
    """

    replacement: Replacement = Replacement.NO


@dataclass(frozen=True)
class ResourceChange:
    """What happens to one resource, keyed by ``(type, name)``.

    Attributes:
        type: The Pulumi type token.
        name: The resource name.
        kind: Added, removed, replaced or updated.
        changes: For updates and replacements, the inputs (and options) that changed, by path.
        protected: For an addition, whether the new plan protects it; otherwise whether the base does
            (``pulumi up`` refuses to delete or replace a resource protected in its state).
        import_id: For an addition, the id of the existing cloud resource it adopts (``import``).
    """

    type: str
    name: str
    kind: ChangeKind
    changes: tuple[InputChange, ...] = ()
    protected: bool = False
    import_id: str | None = None

    @property
    def may_be_replaced(self) -> bool:
        """True for an update whose changes include one that may force replacement."""
        return self.kind is ChangeKind.UPDATE and any(c.replacement is Replacement.MAYBE for c in self.changes)


@dataclass(frozen=True)
class PlanDiff:
    """The difference between a base plan manifest and a new one.

    Attributes:
        stack: The stack of the new plan.
        base_stack: The stack of the base plan (usually the same).
        resources: Changed resources, sorted by kind (replace, remove, add, update), then type and name.
        policies: Changed policy fields, ``operation.field``.
        outputs: Changed outputs other than the policies.
        base_label: Where the base came from (a file name or a git revision), for the heading.
        notes: Remarks shown under the heading (for example "stack file absent at REF").
    """

    stack: str
    base_stack: str
    resources: tuple[ResourceChange, ...] = ()
    policies: tuple[ValueChange, ...] = ()
    outputs: tuple[ValueChange, ...] = ()
    base_label: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def has_changes(self) -> bool:
        """True when anything differs."""
        return bool(self.resources or self.policies or self.outputs)

    def count(self, kind: ChangeKind) -> int:
        """Number of resources with this kind of change."""
        return sum(1 for r in self.resources if r.kind is kind)


# --------------------------------------------------------------------------------------------------
# Manifests


def validate_manifest(data: object, *, source: str) -> dict[str, Any]:
    """Check that ``data`` has the shape of a plan manifest and return it.

    Args:
        data: Parsed JSON.
        source: Where it came from, for error messages.

    Raises:
        ConfigError: not a manifest; the message names the bad field and what is expected.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a plan manifest is a JSON object, got {type(data).__name__}")
    stack = data.get("stack")
    if not isinstance(stack, str) or not stack:
        raise ConfigError(f"{source}: 'stack' must be a non-empty string, got {quote(stack)}")
    resources = data.get("resources")
    if not isinstance(resources, list):
        raise ConfigError(f"{source}: 'resources' must be a list, got {type(resources).__name__}")
    seen: set[tuple[str, str]] = set()
    for index, resource in enumerate(resources):
        where = f"{source}: resources[{index}]"
        if not isinstance(resource, dict):
            raise ConfigError(f"{where} must be an object, got {type(resource).__name__}")
        rtype, rname = resource.get("type"), resource.get("name")
        if not isinstance(rtype, str) or not rtype or not isinstance(rname, str) or not rname:
            raise ConfigError(f"{where} needs a non-empty string 'type' and 'name', got {quote(rtype)}, {quote(rname)}")
        if (rtype, rname) in seen:
            raise ConfigError(
                f"{where}: resource ({quote(rtype)}, {quote(rname)}) appears twice; (type, name) must be unique"
            )
        seen.add((rtype, rname))
        if not isinstance(resource.get("inputs", {}), dict):
            raise ConfigError(f"{where} ({quote(rname)}): 'inputs' must be an object")
        if not isinstance(resource.get("protect", False), bool):
            raise ConfigError(f"{where} ({quote(rname)}): 'protect' must be true or false")
        if not isinstance(resource.get("import"), str | None):
            raise ConfigError(f"{where} ({quote(rname)}): 'import' must be a string or null")
    outputs = data.get("outputs", {})
    if not isinstance(outputs, dict):
        raise ConfigError(f"{source}: 'outputs' must be an object, got {type(outputs).__name__}")
    return data


def empty_manifest(stack: str) -> dict[str, Any]:
    """A manifest with nothing in it: the base when the stack does not exist there."""
    return {"stack": stack, "resources": [], "outputs": {}}


def load_manifest(path: Path) -> dict[str, Any]:
    """Read and validate a manifest file (``dualcache plan --json`` output, or a snapshot).

    Raises:
        ConfigError: the file is missing, unreadable, not JSON, or not a manifest.
    """
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"base manifest {str(path)!r} does not exist; pass a file from `dualcache plan --json`")
    # Bounded: a regular file of at most MANIFEST_MAX_BYTES, depth- and size-checked JSON, no duplicate keys.
    data = read_json_file(path, limit=MANIFEST_MAX_BYTES, what="base manifest")
    return validate_manifest(data, source=str(path))


# --------------------------------------------------------------------------------------------------
# Flattening: nested inputs -> {path: leaf}


def _snake(key: str) -> str:
    """``aiGatewayId`` → ``ai_gateway_id``: manifests carry inputs as the engine receives them (camelCase)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower().replace("-", "_")


def _is_secret_key(key: str) -> bool:
    snake = _snake(key)
    return snake in _SECRET_KEYS_EXACT or any(part in snake for part in _SECRET_KEY_PARTS)


def _contains_secret_marker(value: object) -> bool:
    if isinstance(value, str):
        return value == SECRET
    if isinstance(value, dict):
        return _PULUMI_SECRET_SIG in value or any(_contains_secret_marker(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_secret_marker(v) for v in value)
    return False


def _list_keys(items: list[Any]) -> list[str] | None:
    """``[name=X]`` keys when every item is an object with a distinct string ``name``, else ``None``."""
    names: list[str] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        names.append(item["name"])
    if len(set(names)) != len(names):
        return None
    return [f"[name={n}]" for n in names]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _flatten(value: object, prefix: str, out: dict[str, object]) -> None:
    """Write the leaves of ``value`` under ``prefix`` into ``out``; secrets become :class:`_Secret` leaves."""
    if isinstance(value, dict):
        if _PULUMI_SECRET_SIG in value:
            out[prefix] = _secret(value.get("value", value))
            return
        if not value:
            out[prefix] = {}
            return
        secret_fields = _SECRET_FIELDS_BY_TYPE.get(str(value.get("type")), frozenset())
        for key in sorted(value, key=str):
            child = value[key]
            path = _join(prefix, str(key))
            if key in secret_fields or _is_secret_key(str(key)):
                out[path] = _secret(child)
            else:
                _flatten(child, path, out)
        return
    if isinstance(value, list):
        if not value or all(not isinstance(v, dict | list) for v in value):
            # A list of scalars is one value (compatibility flags, ...); any secret in it hides it all.
            out[prefix] = _secret(value) if _contains_secret_marker(value) else value
            return
        keys = _list_keys(value) or [f"[{i}]" for i in range(len(value))]
        for key, item in zip(keys, value, strict=True):
            _flatten(item, f"{prefix}{key}", out)
        return
    out[prefix] = _secret(value) if value == SECRET else value


def _flat(value: object) -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(value, dict) and value:
        _flatten(value, "", out)
    return out


def _same(old: object, new: object) -> bool:
    if isinstance(old, _Secret) or isinstance(new, _Secret):
        return old == new  # a secret that became plain (or the reverse) is a change
    return type(old) is type(new) and old == new


# The end of a list item in a path: `bindings[name=API_CACHE]` in `bindings[name=API_CACHE].namespaceId`.
_ITEM_END = re.compile(r"\](?=[.\[]|$)")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((f"{prefix}.", f"{prefix}["))


def _whole_item(path: str, other: Mapping[str, object]) -> str | None:
    """The outermost list item holding ``path`` of which ``other`` has nothing (an added or removed item)."""
    for match in _ITEM_END.finditer(path):
        prefix = path[: match.end()]
        if prefix == path:
            return None
        if not any(_under(p, prefix) for p in other):
            return prefix
    return None


def _changes(old: Mapping[str, object], new: Mapping[str, object]) -> list[ValueChange]:
    """Changed leaves by path. A list item present on one side only (a new binding) is one change."""
    result: list[ValueChange] = []
    items: dict[tuple[str, bool], dict[str, object]] = {}
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path, MISSING), new.get(path, MISSING)
        if before is not MISSING and after is not MISSING and _same(before, after):
            continue
        if before is MISSING or after is MISSING:
            added = before is MISSING
            item = _whole_item(path, old if added else new)
            if item is not None:
                items.setdefault((item, added), {})[path[len(item) :].lstrip(".")] = after if added else before
                continue
        result.append(ValueChange(path, before, after))
    for (item, added), fields in items.items():
        whole = dict(sorted(fields.items()))
        result.append(ValueChange(item, MISSING, whole) if added else ValueChange(item, whole, MISSING))
    result.sort(key=lambda change: change.path)
    return result


# --------------------------------------------------------------------------------------------------
# Diffing


def _top_level_input(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _replacement(rtype: str, path: str) -> Replacement:
    if not rtype.startswith(_CLOUDFLARE_TYPES):
        return Replacement.NO
    top = _snake(_top_level_input(path))
    if top in REPLACE_ON_CHANGE.get(rtype, REPLACE_ON_CHANGE["*"]):
        return Replacement.YES
    if top in MAY_REPLACE_ON_CHANGE.get(rtype, frozenset()):
        return Replacement.MAYBE
    return Replacement.NO


_KIND_ORDER = {ChangeKind.REPLACE: 0, ChangeKind.REMOVE: 1, ChangeKind.ADD: 2, ChangeKind.UPDATE: 3}


def _diff_resource(rtype: str, name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> ResourceChange | None:
    changes = [
        InputChange(c.path, c.old, c.new, replacement=_replacement(rtype, c.path))
        for c in _changes(_flat(old.get("inputs", {})), _flat(new.get("inputs", {})))
    ]
    for option in ("protect", "import"):
        default: object = False if option == "protect" else None
        before, after = old.get(option, default), new.get(option, default)
        if before != after:
            # The engine imports whenever the `import` id differs from the one the resource in the state
            # was imported with (or its id): an *import-replacement* that adopts the existing cloud
            # resource and deletes the one in the state (pulumi step_generator: ImportReplacementStep,
            # then a ReplaceStep). Dropping `import` has no effect on a resource already in the state.
            forces = option == "import" and after is not None and rtype.startswith(_CLOUDFLARE_TYPES)
            changes.append(
                InputChange(f"({option})", before, after, replacement=Replacement.YES if forces else Replacement.NO)
            )
    if not changes:
        return None
    replaced = any(c.replacement is Replacement.YES for c in changes)
    return ResourceChange(
        rtype,
        name,
        ChangeKind.REPLACE if replaced else ChangeKind.UPDATE,
        tuple(changes),
        # The engine checks the protect flag of the resource as it is in the state, i.e. the base.
        protected=bool(old.get("protect", False)),
    )


def _policies(manifest: Mapping[str, Any]) -> object:
    dualcache = manifest.get("outputs", {}).get("dualcache")
    return dualcache.get("policies", {}) if isinstance(dualcache, dict) else {}


def _policy_changes(old: object, new: object) -> list[ValueChange]:
    """Field changes for operations in both; one whole-policy change for an operation added or removed."""
    old_ops = old if isinstance(old, dict) else {}
    new_ops = new if isinstance(new, dict) else {}
    result: list[ValueChange] = []
    for operation in sorted(set(old_ops) | set(new_ops), key=str):
        if operation in old_ops and operation in new_ops:
            result += _changes(_flat({operation: old_ops[operation]}), _flat({operation: new_ops[operation]}))
        else:
            before, after = old_ops.get(operation, MISSING), new_ops.get(operation, MISSING)
            result.append(ValueChange(str(operation), _whole(before), _whole(after)))
    return result


def _whole(value: object) -> object:
    """``value`` as one leaf: a secret if anything in it is."""
    if value is MISSING:
        return value
    return _secret(value) if any(isinstance(v, _Secret) for v in _flat({"v": value}).values()) else value


def _outputs_without_policies(manifest: Mapping[str, Any]) -> dict[str, object]:
    outputs = dict(manifest.get("outputs", {}))
    dualcache = outputs.get("dualcache")
    if isinstance(dualcache, dict):
        outputs["dualcache"] = {k: v for k, v in dualcache.items() if k != "policies"}
    return outputs


def diff_manifests(
    base: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    base_label: str = "",
    notes: Sequence[str] = (),
) -> PlanDiff:
    """Compare two validated manifests (see :func:`validate_manifest`).

    Args:
        base: The manifest to compare against (for example the base branch's plan).
        new: The manifest of the change under review.
        base_label: Where the base came from, shown in the heading.
        notes: Remarks shown under the heading.

    Returns:
        The difference; deterministic for the same inputs (sorted by kind, type, name and path).
    """
    old_res = {(r["type"], r["name"]): r for r in base.get("resources", [])}
    new_res = {(r["type"], r["name"]): r for r in new.get("resources", [])}
    resources: list[ResourceChange] = []
    for key in sorted(set(old_res) | set(new_res)):
        rtype, name = key
        if key not in old_res:
            added = new_res[key]
            resources.append(
                ResourceChange(
                    rtype, name, ChangeKind.ADD, protected=bool(added.get("protect")), import_id=added.get("import")
                )
            )
        elif key not in new_res:
            resources.append(
                ResourceChange(rtype, name, ChangeKind.REMOVE, protected=bool(old_res[key].get("protect")))
            )
        else:
            change = _diff_resource(rtype, name, old_res[key], new_res[key])
            if change is not None:
                resources.append(change)
    resources.sort(key=lambda r: (_KIND_ORDER[r.kind], r.type, r.name))
    policies = _policy_changes(_policies(base), _policies(new))
    outputs = _changes(_flat(_outputs_without_policies(base)), _flat(_outputs_without_policies(new)))
    return PlanDiff(
        stack=str(new.get("stack", "")),
        base_stack=str(base.get("stack", "")),
        resources=tuple(resources),
        policies=tuple(policies),
        outputs=tuple(outputs),
        base_label=base_label,
        notes=tuple(notes),
    )


def exit_status(diff: PlanDiff) -> int:
    """0 when nothing changed, 2 when something did (so CI can label the pull request)."""
    return EXIT_CHANGES if diff.has_changes else EXIT_NO_CHANGES


# --------------------------------------------------------------------------------------------------
# Rendering


def _code(text: str) -> str:
    """An inline code span that survives backticks in ``text``."""
    if "`" not in text:
        return f"`{text}`"
    return f"`` {text} ``"


def _show(value: object) -> str:
    if isinstance(value, _Secret):
        return SECRET
    if isinstance(value, str) and ("\n" in value or len(value) > _MAX_INLINE_VALUE):
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]
        lines = value.count("\n") + 1
        return f"<text: {lines} line{'s' if lines != 1 else ''}, sha256 {digest}>"
    # `default=repr`: a secret inside an added or removed list item shows as its marker, never its value.
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    if len(text) > _MAX_INLINE_VALUE:
        text = text[: _MAX_INLINE_VALUE - 1] + "…"
    return _code(text)


def _describe(change: ValueChange) -> str:
    path = _code(change.path)
    if change.secret:
        if change.old is MISSING:
            return f"{path}: added (secret)"
        if change.new is MISSING:
            return f"{path}: removed (secret)"
        return f"{path}: changed (secret)"
    if change.old is MISSING:
        return f"{path}: added {_show(change.new)}"
    if change.new is MISSING:
        return f"{path}: removed (was {_show(change.old)})"
    old, new = _show(change.old), _show(change.new)
    if old.startswith("<text") and new.startswith("<text"):
        return f"{path}: changed {old} → {new}"
    return f"{path}: {old} → {new}"


def _describe_input(change: InputChange) -> str:
    text = _describe(change)
    if change.path == "(import)" and change.replacement is Replacement.YES:
        return f"{text} (forces replacement: adopts the existing resource and deletes the one in the stack)"
    if change.path == "(import)" and change.new is None:
        return f"{text} (no effect on a resource already in the stack)"
    if change.replacement is Replacement.YES:
        return f"{text} (forces replacement)"
    if change.replacement is Replacement.MAYBE:
        return f"{text} (may force replacement)"
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _resource_line(resource: ResourceChange) -> str:
    line = f"- {_code(resource.type)} **{resource.name}**"
    if resource.protected and resource.kind in (ChangeKind.REMOVE, ChangeKind.REPLACE):
        line += " — protected: `pulumi up` will refuse until `protect` is turned off"
    elif resource.may_be_replaced:
        line += " — may be replaced"
    if resource.kind is ChangeKind.ADD and resource.import_id:
        line += f" — adopted: imports the existing {_code(resource.import_id)}"
    elif resource.kind is ChangeKind.ADD and resource.protected:
        line += " — protected"
    return line


def _render_lines(diff: PlanDiff) -> Iterator[str]:
    heading = f"### dualcache plan: stack `{diff.stack}`"
    yield heading
    yield ""
    against = f" ({diff.base_label})" if diff.base_label else ""
    if diff.base_stack != diff.stack:
        yield f"Compared with stack `{diff.base_stack}`{against}."
    else:
        yield f"Compared with the base plan{against}."
    for note in diff.notes:
        yield f"> {note}"
    yield ""
    if not diff.has_changes:
        yield "No changes."
        return
    yield (
        f"**{diff.count(ChangeKind.ADD)} to add, {diff.count(ChangeKind.UPDATE)} to change, "
        f"{diff.count(ChangeKind.REPLACE)} to replace, {diff.count(ChangeKind.REMOVE)} to remove**; "
        f"{_plural(len(diff.policies), 'policy change')}; {_plural(len(diff.outputs), 'output change')}."
    )
    sections = (
        (ChangeKind.REPLACE, "Replaced: deleted and created again"),
        (ChangeKind.REMOVE, "Removed"),
        (ChangeKind.ADD, "Added"),
        (ChangeKind.UPDATE, "Changed in place"),
    )
    for kind, title in sections:
        members = [r for r in diff.resources if r.kind is kind]
        if not members:
            continue
        yield ""
        yield f"#### {title} ({len(members)})"
        yield ""
        for resource in members:
            yield _resource_line(resource)
            for change in resource.changes:
                yield f"  - {_describe_input(change)}"
    for title, values in (("Policy changes", diff.policies), ("Output changes", diff.outputs)):
        if not values:
            continue
        yield ""
        yield f"#### {title} ({len(values)})"
        yield ""
        for value in values:
            yield f"- {_describe(value)}"


def truncate_markdown(text: str, max_chars: int) -> str:
    """Cut ``text`` at a line boundary so that it, with a closing note, is at most ``max_chars`` long.

    The note says how many lines and characters were left out. Text already short enough is returned
    unchanged. The result ends with a newline when it was cut.

    Raises:
        InvalidInputError: ``max_chars`` is below :data:`MIN_MAX_CHARS`.
    """
    if max_chars < MIN_MAX_CHARS:
        raise InvalidInputError(f"max_chars {max_chars} is too small; use at least {MIN_MAX_CHARS}")
    if len(text) <= max_chars:
        return text
    lines = text.rstrip("\n").split("\n")
    # Room for the blank line and the note with the largest numbers it could hold.
    budget = max_chars - len(_truncation_note(len(lines), len(text))) - 2
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    note = _truncation_note(len(lines) - len(kept), len(text) - used)
    result = "".join(f"{line}\n" for line in kept) + "\n" + note + "\n"
    assert len(result) <= max_chars, "the truncation budget is wrong"
    return result


def _truncation_note(lines: int, chars: int) -> str:
    return (
        f"_… truncated: {_plural(lines, 'more line')} ({chars:,} characters) left out. "
        "Run the same `dualcache plan` command locally for the full diff._"
    )


def render_markdown(diff: PlanDiff, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Render ``diff`` as Markdown of at most ``max_chars`` characters, ending with a newline.

    Raises:
        InvalidInputError: ``max_chars`` is below :data:`MIN_MAX_CHARS`.
    """
    return truncate_markdown("\n".join(_render_lines(diff)) + "\n", max_chars)


# --------------------------------------------------------------------------------------------------
# The base manifest from another git revision


_PLAN_TIMEOUT_S = 600


def _git(project_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=project_dir, capture_output=True, check=False)
    except FileNotFoundError:
        raise ConfigError("`git` is not installed or not on PATH; --against needs it") from None


def _export_revision(project_dir: Path, ref: str, dest: Path) -> bool:
    """Write the project directory as of ``ref`` into ``dest``; False when it did not exist there."""
    resolved = _git(project_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if resolved.returncode != 0:
        if _git(project_dir, "rev-parse", "--git-dir").returncode != 0:
            raise ConfigError(f"{str(project_dir)!r} is not inside a git repository; --against needs one")
        raise ConfigError(f"git revision {ref!r} not found; fetch it first (CI: checkout with fetch-depth: 0)")
    commit = resolved.stdout.decode().strip()
    prefix = _git(project_dir, "rev-parse", "--show-prefix").stdout.decode().strip().rstrip("/")
    tree = f"{commit}:{prefix}" if prefix else commit
    if prefix and _git(project_dir, "cat-file", "-e", tree).returncode != 0:
        return False  # the project directory did not exist at that revision
    archive = _git(project_dir, "archive", "--format=tar", tree)
    if archive.returncode != 0:
        message = archive.stderr.decode(errors="replace").strip()
        raise ConfigError(f"git archive of {ref!r} failed: {message}")
    archive_path = dest.parent / "base.tar"
    archive_path.write_bytes(archive.stdout)
    with tarfile.open(archive_path) as tar:
        tar.extractall(dest, filter="data")
    archive_path.unlink()
    return True


# Runs in a fresh interpreter with the other revision's tree first on sys.path: its `infra.plan` (and,
# through PYTHONPATH, its `dualcache`) is what plans. Only `infra.plan.plan_manifest(stack, project_dir)`
# is relied on, not the whole command line, so a broken unrelated command at that revision does not matter.
_PLAN_SCRIPT = """
import json, sys
from pathlib import Path
tree = Path(sys.argv[1])
sys.path.insert(0, str(tree))
from infra.plan import plan_manifest
json.dump(plan_manifest(sys.argv[2], tree), sys.stdout)
"""


def _plan_in_subprocess(tree: Path, stack: str, ref: str) -> dict[str, Any]:
    """Plan ``stack`` for the exported ``tree`` with that tree's own code, in a fresh interpreter."""
    if not (tree / "infra" / "plan.py").is_file():
        raise ConfigError(
            f"{ref!r} has a Pulumi program but no offline plan (infra/plan.py); "
            "compare with --diff against a manifest saved by `dualcache plan --json` instead"
        )
    env = dict(os.environ)
    runtime = tree / "runtime"
    if (runtime / "dualcache" / "__init__.py").is_file():
        # That revision's library first, so its outputs and policy models are the ones used.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(runtime), str(tree), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-c", _PLAN_SCRIPT, str(tree), stack]
    try:
        done = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, text=True, timeout=_PLAN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the plan of {ref!r} did not finish in {_PLAN_TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ConfigError(f"the plan of stack {stack!r} at {ref!r} failed (exit {done.returncode}):\n{tail}")
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the plan of {ref!r} did not print a JSON manifest: {exc.msg}") from None
    return validate_manifest(data, source=f"plan of {ref}")


def base_manifest_from_git(project_dir: Path, ref: str, stack: str) -> tuple[dict[str, Any], list[str]]:
    """Build the plan manifest of ``stack`` as of git revision ``ref``, leaving the working tree alone.

    The revision's files are exported with ``git archive`` into a temporary directory and planned there
    in a subprocess, so that revision's infra code (and library) is what runs.

    Returns:
        The manifest and notes for the heading. When the stack file (or the whole Pulumi program) does
        not exist at ``ref``, the manifest is empty, so every resource counts as added.

    Raises:
        ConfigError: not a git repository, unknown revision, or the plan at that revision failed.
    """
    with tempfile.TemporaryDirectory(prefix="dualcache-base-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        exists = _export_revision(project_dir, ref, tree)
        stack_file = f"Pulumi.{stack}.yaml"
        if not exists or not (tree / stack_file).is_file():
            return empty_manifest(stack), [f"`{stack_file}` does not exist at `{ref}`: every resource counts as added."]
        if not (tree / "infra" / "__main__.py").is_file():
            return empty_manifest(stack), [f"No Pulumi program (`infra/`) at `{ref}`: every resource counts as added."]
        return _plan_in_subprocess(tree, stack, ref), []


# --------------------------------------------------------------------------------------------------
# The command


def _current_manifest(stack: str, project_dir: Path) -> dict[str, Any]:
    from infra.plan import plan_manifest

    return validate_manifest(plan_manifest(stack, project_dir), source=f"plan of stack {stack!r}")


def run_diff(args: argparse.Namespace, project_dir: Path) -> int:
    """Print the Markdown diff of the current plan against ``--diff FILE`` or ``--against REF``.

    Reads ``args.stack``, ``args.diff`` (a path or ``None``), ``args.against`` (a git revision or
    ``None``) and, when present, ``args.max_chars`` and ``args.out`` (also write the Markdown there).

    Returns:
        0 when nothing changed, 2 when something did.

    Raises:
        ConfigError: a bad base file or revision, or a plan that failed (the CLI exits 1).
        InvalidInputError: both or neither of ``--diff``/``--against``, or a too small ``max_chars``.
    """
    stack: str = args.stack
    diff_path: Path | None = getattr(args, "diff", None)
    against: str | None = getattr(args, "against", None)
    max_chars: int = getattr(args, "max_chars", None) or DEFAULT_MAX_CHARS
    if (diff_path is None) == (against is None):
        raise InvalidInputError("give exactly one of --diff BASE.json and --against GIT_REF")
    if max_chars < MIN_MAX_CHARS:
        raise InvalidInputError(f"--max-chars {max_chars} is too small; use at least {MIN_MAX_CHARS}")
    notes: list[str] = []
    if diff_path is not None:
        base = load_manifest(Path(diff_path))
        label = f"`{Path(diff_path).name}`"
    else:
        assert against is not None
        base, notes = base_manifest_from_git(project_dir, against, stack)
        label = f"`{against}`"
    current = _current_manifest(stack, project_dir)
    diff = diff_manifests(base, current, base_label=label, notes=notes)
    markdown = render_markdown(diff, max_chars=max_chars)
    out: Path | None = getattr(args, "out", None)
    if out is not None:
        try:
            Path(out).write_text(markdown, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {str(out)!r}: could not write the summary: {exc.strerror or exc}") from None
    sys.stdout.write(markdown)
    sys.stdout.flush()
    return exit_status(diff)
