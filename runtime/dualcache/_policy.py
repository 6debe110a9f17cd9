"""Per-operation cache policies: data shared by infra (validated, exported) and the runtime (obeyed).

Defaults: the policies table of docs/runtime.md. A stack may override any field of any operation, and declare custom
operations (any ``snake_case`` name) next to the five built in; the result is validated against
Cloudflare's bounds (KV ``expiration_ttl`` >= 60 s; AI Gateway cache TTL 60 s .. one month,
as Cloudflare documents them).

An operation is named by an :class:`Operation`: a validated string, with the five built-in names as
constants (``Operation.JOB_ANALYSIS == "job_analysis"``), so custom names flow through policies, keys
and stats like the built-in ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from dualcache._exceptions import ConfigError, InvalidInputError

__all__ = [
    "RESERVED_NAMES",
    "GATEWAY_MAX_TTL",
    "GATEWAY_MIN_TTL",
    "KV_MAX_TTL",
    "KV_MIN_TTL",
    "OPERATION_NAME_MAX",
    "VERSION_MAX",
    "GatewayMode",
    "Namespace",
    "Operation",
    "OperationPolicy",
    "Policies",
    "Scope",
]

KV_MIN_TTL = 60
"""Smallest KV ``expiration_ttl`` Cloudflare accepts, in seconds."""
KV_MAX_TTL = 31_536_000
"""Largest KV ``expiration_ttl`` dualcache accepts, in seconds (365 days).

Cloudflare documents no maximum TTL; the data-plane Worker refuses an ``expiration_ttl`` above 2^31 - 1 (its
integer range, ``infra/worker/DATAPLANE.md``) and an ``expiration`` (unix seconds) above 2^31 - 1. A year keeps
now + TTL inside that range until 2037 and is far above any cache lifetime (the longest default is 30 days); a
larger value is almost surely a unit mistake (milliseconds) and would make every write fail."""
GATEWAY_MIN_TTL = 60
"""Smallest ``cf-aig-cache-ttl``, in seconds."""
GATEWAY_MAX_TTL = 2_592_000
"""Largest ``cf-aig-cache-ttl`` (one month, 30 days), in seconds."""


class Namespace(StrEnum):
    """The six KV namespace binding names. These names are the contract with the Worker."""

    SESSIONS = "SESSIONS"
    RATE_LIMITS = "RATE_LIMITS"
    OAUTH_STATES = "OAUTH_STATES"
    JOB_ANALYSIS_CACHE = "JOB_ANALYSIS_CACHE"
    EMBEDDINGS_CACHE = "EMBEDDINGS_CACHE"
    API_CACHE = "API_CACHE"


OPERATION_NAME_MAX = 48
"""Longest operation name, in characters (the name is the key prefix of a custom operation)."""
VERSION_MAX = 16
"""Longest policy ``version``, in characters."""

_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_BUILTIN_NAMES = ("application_generation", "job_analysis", "resume_parsing", "embeddings", "spam_detection")

RESERVED_NAMES = frozenset({"analysis", "spam", "embed", "generation", "resume"})
"""Names a custom operation cannot take: the key prefixes of the built-in operations (a custom
operation's name is its key prefix, so these would share keys with a built-in one)."""


class _OperationType(type):
    """Iterating :class:`Operation` yields the five built-in operations (as iterating the enum did)."""

    def __iter__(cls) -> Iterator[Operation]:
        return iter(Operation.BUILTIN)

    def __len__(cls) -> int:
        return len(Operation.BUILTIN)

    def __getitem__(cls, name: str) -> Operation:
        """``Operation["JOB_ANALYSIS"]``, as with the enum: a built-in operation by its constant's name."""
        found = getattr(Operation, name, None) if name.isupper() else None
        if not isinstance(found, Operation):
            raise KeyError(name)
        return found


class Operation(str, metaclass=_OperationType):
    """The name of an AI operation: one of the five built in, or a custom ``snake_case`` name.

    An ``Operation`` is a ``str`` (``Operation.JOB_ANALYSIS == "job_analysis"``), validated when built:
    lower-case letters, digits and single underscores, starting with a letter, at most
    :data:`OPERATION_NAME_MAX` characters. ``op.value`` is the plain name (as with the enum it replaces),
    and iterating the class yields the built-in five.

    Raises:
        InvalidInputError: on construction, when the name is not ``snake_case``; the message names it.
    """

    __slots__ = ()

    APPLICATION_GENERATION: ClassVar[Operation]
    JOB_ANALYSIS: ClassVar[Operation]
    RESUME_PARSING: ClassVar[Operation]
    EMBEDDINGS: ClassVar[Operation]
    SPAM_DETECTION: ClassVar[Operation]
    BUILTIN: ClassVar[tuple[Operation, ...]]
    _interned: ClassVar[dict[str, Operation]] = {}

    def __new__(cls, value: object) -> Operation:
        if isinstance(value, Operation):
            return value
        if isinstance(value, str) and (known := cls._interned.get(value)) is not None:
            return known
        if not isinstance(value, str) or len(value) > OPERATION_NAME_MAX or not _NAME.fullmatch(value):
            raise InvalidInputError(
                f"operation name {value!r} is not valid: use snake_case (lower-case letters, digits and single "
                f"underscores, starting with a letter), at most {OPERATION_NAME_MAX} characters, e.g. 'summarize_job'"
            )
        return super().__new__(cls, value)

    @property
    def value(self) -> str:
        """The plain name."""
        return str.__str__(self)

    @property
    def name(self) -> str:
        """The constant's name, as an enum member's: ``"JOB_ANALYSIS"``."""
        return self.value.upper()

    @property
    def builtin(self) -> bool:
        """Whether this is one of the five built-in operations."""
        return self.value in _BUILTIN_NAMES

    def __repr__(self) -> str:
        return f"Operation({self.value!r})"

    @classmethod
    def parse(cls, value: object) -> Operation:
        """Return ``value`` as an operation name (any valid ``snake_case`` name, built in or custom).

        Whether a policy exists for it is :meth:`Policies.for_operation`'s question.

        Raises:
            InvalidInputError: ``value`` is not a valid operation name; the message says what is.
        """
        return cls(value)


for _name in _BUILTIN_NAMES:
    _op = str.__new__(Operation, _name)
    Operation._interned[_name] = _op
    setattr(Operation, _name.upper(), _op)
Operation.BUILTIN = tuple(Operation._interned[n] for n in _BUILTIN_NAMES)


class Scope(StrEnum):
    """Whether a user id is part of an operation's cache keys."""

    USER = "user"
    """Records are per user: ``{prefix}:{user}:{key}``; calls must pass a ``user_id``."""
    GLOBAL = "global"
    """Records are shared by every user: ``{prefix}:{key}``; calls pass no ``user_id``."""


class GatewayMode(StrEnum):
    """What the request tells the AI Gateway's cache."""

    CACHE = "cache"
    """Send ``cf-aig-cache-ttl`` so the gateway caches the answer."""
    SKIP = "skip"
    """Send ``cf-aig-skip-cache: true`` so the gateway neither reads nor writes its cache."""


class OperationPolicy(BaseModel):
    """How one operation is cached.

    Attributes:
        kv: Whether the application cache (Workers KV) is read and written.
        kv_ttl: KV ``expiration_ttl`` in seconds (>= 60) when ``kv`` is on, else ``None``.
        kv_namespace: The namespace binding that holds this operation's records when ``kv`` is on.
        gateway: Whether the AI Gateway caches this operation's requests.
        gateway_ttl: ``cf-aig-cache-ttl`` in seconds (60 .. 2,592,000) when ``gateway`` is ``cache``.
        direct_fallback: When the gateway itself fails, whether the call may go straight to the provider.
        collect_log: Per-request ``cf-aig-collect-log``; ``None`` leaves the gateway's setting alone.
        scope: ``user``: a user id is part of every key (records are per user, and :meth:`DualCache.forget_user`
            removes them); ``global``: records are shared by all users.
        version: A short string (1..16 of ``A-Z a-z 0-9 . _ -``, e.g. ``"2"`` or ``"2027-01"``) that goes into
            every key (KV and gateway) of the operation: changing it makes every old record a miss (they
            expire by their TTL). ``None`` (the default) keeps the unversioned keys the existing Worker writes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    kv: bool
    kv_ttl: int | None = None
    kv_namespace: Namespace | None = None
    gateway: GatewayMode
    gateway_ttl: int | None = None
    direct_fallback: bool = True
    collect_log: bool | None = None
    scope: Scope = Scope.USER
    version: str | None = None

    @field_validator("kv_ttl", "gateway_ttl", mode="before")
    @classmethod
    def _no_bool_ttl(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read True as 1 second
            raise ValueError(f"{value!r} is a boolean; a TTL is a whole number of seconds (e.g. 86400) or null")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _check_version(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `version: 2` in a YAML stack file
        if value is not None and (
            not isinstance(value, str) or len(value) > VERSION_MAX or not _VERSION.fullmatch(value)
        ):
            raise ValueError(
                f"must be a short string of 1..{VERSION_MAX} characters from A-Z a-z 0-9 . _ -, starting with a "
                "letter or digit (e.g. '2'), or null"
            )
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> OperationPolicy:
        if self.kv:
            if self.kv_ttl is None or not KV_MIN_TTL <= self.kv_ttl <= KV_MAX_TTL:
                raise ValueError(
                    f"kv_ttl={self.kv_ttl!r}: with kv on it must be an integer >= {KV_MIN_TTL} "
                    f"and <= {KV_MAX_TTL} seconds (KV_MAX_TTL, 365 days)"
                )
            if self.kv_namespace is None:
                valid = ", ".join(n.value for n in Namespace)
                raise ValueError(f"kv_namespace is required when kv is on; one of {valid}")
        elif self.kv_ttl is not None:
            raise ValueError(f"kv_ttl={self.kv_ttl!r} is set but kv is off; set kv: true or drop kv_ttl")
        if self.gateway is GatewayMode.CACHE:
            if self.gateway_ttl is None or not GATEWAY_MIN_TTL <= self.gateway_ttl <= GATEWAY_MAX_TTL:
                raise ValueError(
                    f"gateway_ttl={self.gateway_ttl!r}: with gateway 'cache' it must be "
                    f"{GATEWAY_MIN_TTL}..{GATEWAY_MAX_TTL} seconds"
                )
        elif self.gateway_ttl is not None:
            raise ValueError(
                f"gateway_ttl={self.gateway_ttl!r} is set but gateway is 'skip'; set gateway: cache or drop gateway_ttl"
            )
        return self


_DAY = 86_400

_DEFAULTS: dict[Operation, OperationPolicy] = {
    Operation.APPLICATION_GENERATION: OperationPolicy(kv=False, gateway=GatewayMode.SKIP),
    Operation.JOB_ANALYSIS: OperationPolicy(
        kv=True, kv_ttl=7 * _DAY, kv_namespace=Namespace.JOB_ANALYSIS_CACHE, gateway=GatewayMode.SKIP
    ),
    Operation.RESUME_PARSING: OperationPolicy(kv=False, gateway=GatewayMode.SKIP, collect_log=True),
    Operation.EMBEDDINGS: OperationPolicy(
        kv=True,
        kv_ttl=30 * _DAY,
        kv_namespace=Namespace.EMBEDDINGS_CACHE,
        gateway=GatewayMode.CACHE,
        gateway_ttl=3_600,
        scope=Scope.GLOBAL,
    ),
    Operation.SPAM_DETECTION: OperationPolicy(
        kv=True,
        kv_ttl=7 * _DAY,
        kv_namespace=Namespace.API_CACHE,
        gateway=GatewayMode.CACHE,
        gateway_ttl=_DAY,
        scope=Scope.GLOBAL,
    ),
}

# Built-in operations whose calls fix the scope: a job analysis is per user, an embedding and a spam verdict are not.
_FIXED_SCOPE = {
    Operation.JOB_ANALYSIS: Scope.USER,
    Operation.EMBEDDINGS: Scope.GLOBAL,
    Operation.SPAM_DETECTION: Scope.GLOBAL,
}


class Policies(BaseModel):
    """One :class:`OperationPolicy` per operation: the five built in (defaults: docs/runtime.md's table) and any
    custom operations, held as extra fields named after them.

    ``Policies(summarize_job=OperationPolicy(...))`` and :meth:`with_overrides` declare custom operations;
    they are exported with the built-in ones (``model_dump()`` is flat: one entry per operation).
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    __pydantic_extra__: dict[str, OperationPolicy] = Field(init=False)

    application_generation: OperationPolicy = _DEFAULTS[Operation.APPLICATION_GENERATION]
    job_analysis: OperationPolicy = _DEFAULTS[Operation.JOB_ANALYSIS]
    resume_parsing: OperationPolicy = _DEFAULTS[Operation.RESUME_PARSING]
    embeddings: OperationPolicy = _DEFAULTS[Operation.EMBEDDINGS]
    spam_detection: OperationPolicy = _DEFAULTS[Operation.SPAM_DETECTION]

    @model_validator(mode="after")
    def _check_operations(self) -> Policies:
        for name in self.__pydantic_extra__ or {}:
            try:
                Operation.parse(name)
            except InvalidInputError as exc:
                raise ValueError(str(exc)) from None
            problem = _custom_name_problem(name) or _custom_policy_problem(name, self.__pydantic_extra__[name])
            if problem:
                raise ValueError(problem)
        for op, scope in _FIXED_SCOPE.items():
            if getattr(self, op.value).scope is not scope:
                raise ValueError(f"{op.value}.scope must be {scope.value!r}: {_SCOPE_WHY[op]}")
        return self

    @property
    def custom(self) -> dict[str, OperationPolicy]:
        """The custom operations' policies, by name, in declaration order."""
        return dict(self.__pydantic_extra__ or {})

    @property
    def operations(self) -> tuple[Operation, ...]:
        """Every operation these policies cover: the five built in, then the custom ones."""
        return (*Operation.BUILTIN, *(Operation(n) for n in self.__pydantic_extra__ or {}))

    def for_operation(self, operation: Operation | str) -> OperationPolicy:
        """Return the policy of ``operation``.

        Raises:
            InvalidInputError: ``operation`` is not a valid name, or names no operation of these policies
                (the message lists those that exist).
        """
        if type(operation) is Operation:  # already validated: a built-in one is a field (every call asks)
            found: OperationPolicy | None = self.__dict__.get(operation)
            if found is not None:
                return found
        op = Operation.parse(operation)
        if op.builtin:
            builtin: OperationPolicy = getattr(self, op.value)
            return builtin
        policy = (self.__pydantic_extra__ or {}).get(op.value)
        if policy is None:
            valid = ", ".join(self.operations)
            raise InvalidInputError(
                f"unknown operation {op.value!r}; operations in these policies: {valid}. Declare a custom one with "
                f"Policies.with_overrides({{{op.value!r}: {{'kv': ..., 'gateway': ...}}}}) or in the stack file "
                f"(<project>:policies.{op.value}.*)"
            )
        return policy

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Mapping[str, Any]] | None) -> Policies:
        """Return the defaults with ``overrides`` applied field by field.

        ``overrides`` maps an operation name to the fields to change, for example
        ``{"embeddings": {"kv_ttl": 86400}}``; fields not named keep their default. Turning a layer off
        (``kv: false``, ``gateway: skip``) also drops that layer's default TTL, so it need not be unset too.

        A name that is not one of the five built-in operations declares a custom operation, for example
        ``{"summarize_job": {"kv": True, "kv_ttl": 86400, "kv_namespace": "API_CACHE", "gateway": "skip"}}``:
        it must set ``kv`` and ``gateway``; the other fields have :class:`OperationPolicy`'s defaults
        (``scope: user``).

        Raises:
            ConfigError: an invalid operation name or an unknown field, a custom operation without ``kv``
                or ``gateway``, or a result outside Cloudflare's bounds. The message names
                ``policies.<operation>.<field>`` and what is allowed.
        """
        return cls().override(overrides)

    def override(self, overrides: Mapping[str, Mapping[str, Any]] | None) -> Policies:
        """Return these policies with ``overrides`` applied field by field (as :meth:`with_overrides` does to
        the defaults), e.g. a service adding its custom operations to the policies of its stack's outputs:
        ``outputs.policies.override({"summarize_job": {...}})``. An operation already here keeps the fields
        not named; a new custom one must set ``kv`` and ``gateway``.

        Raises:
            ConfigError: as :meth:`with_overrides`.
        """
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"policies: expected a mapping of operation names to fields, got {overrides!r}")
        current: dict[str, OperationPolicy] = {op.value: self.for_operation(op) for op in self.operations}
        merged: dict[str, Any] = {}
        valid_fields = sorted(OperationPolicy.model_fields)
        for name, fields in overrides.items():
            try:
                op = Operation.parse(name)
            except InvalidInputError as exc:
                raise ConfigError(f"policies.{name}: {exc}") from None
            if not op.builtin and (problem := _custom_name_problem(op.value)):
                raise ConfigError(f"policies.{name}: {problem}")
            if not isinstance(fields, Mapping):
                raise ConfigError(f"policies.{name}: expected a mapping of fields, got {fields!r}")
            unknown = sorted(set(fields) - set(valid_fields))
            if unknown:
                raise ConfigError(
                    f"policies.{name}: unknown field(s) {', '.join(map(str, unknown))}; "
                    f"valid fields: {', '.join(valid_fields)}"
                )
            if op.value in current:
                base = current[op.value].model_dump(mode="json")
            else:
                missing = [f for f in ("kv", "gateway") if f not in fields]
                if missing:
                    builtins = ", ".join(Operation.BUILTIN)
                    raise ConfigError(
                        f"policies.{name}: {name!r} is not a built-in operation ({builtins}); a custom operation "
                        f"must set kv and gateway (missing: {', '.join(f'policies.{name}.{f}' for f in missing)})"
                    )
                base = {}
            base.update(fields)
            # A TTL belongs to the layer setting it came with: switching the layer off drops it, unless the
            # override names a TTL too (then the validator says the two do not fit together).
            if op.value in current and _lax_bool(base["kv"]) is False and "kv_ttl" not in fields:
                base["kv_ttl"] = None
            if op.value in current and base["gateway"] == GatewayMode.SKIP.value and "gateway_ttl" not in fields:
                base["gateway_ttl"] = None
            try:
                merged[op.value] = OperationPolicy.model_validate(base)
            except ValidationError as exc:
                raise ConfigError(f"policies.{name}: {_first_error(exc)}") from None
            if not op.builtin and (problem := _custom_policy_problem(op.value, merged[op.value])):
                raise ConfigError(problem)
            if op in _FIXED_SCOPE and merged[op.value].scope is not _FIXED_SCOPE[op]:
                raise ConfigError(
                    f"policies.{name}.scope={merged[op.value].scope.value!r}: must be "
                    f"{_FIXED_SCOPE[op].value!r}: {_SCOPE_WHY[op]}"
                )
        try:
            return type(self)(**(current | merged))
        except ValidationError as exc:  # every rule is checked above with its key; this is a safety net
            raise ConfigError(f"policies: {_first_error(exc)}") from None


_SCOPE_WHY = {
    Operation.JOB_ANALYSIS: "an analysis is of a job for one user (analyze_job takes user_id)",
    Operation.EMBEDDINGS: "an embedding is keyed by its text alone and shared",
    Operation.SPAM_DETECTION: "a spam verdict is of a job posting, shared by every user (detect_spam takes no user_id)",
}

_POLICIES_ATTRIBUTES = frozenset(dir(BaseModel)) | {
    "custom",
    "operations",
    "for_operation",
    "override",
    "with_overrides",
}


_CACHE_NAMESPACES = (Namespace.JOB_ANALYSIS_CACHE, Namespace.EMBEDDINGS_CACHE, Namespace.API_CACHE)


def _custom_policy_problem(name: str, policy: OperationPolicy) -> str | None:
    """Why ``policy`` cannot be custom operation ``name``'s, or ``None``: its records go in a cache namespace,
    never in SESSIONS, RATE_LIMITS or OAUTH_STATES, which hold the application's own keys."""
    if policy.kv_namespace is not None and policy.kv_namespace not in _CACHE_NAMESPACES:
        valid = ", ".join(n.value for n in _CACHE_NAMESPACES)
        return (
            f"policies.{name}.kv_namespace={policy.kv_namespace.value!r}: a custom operation's records go in a "
            f"cache namespace ({valid}); {policy.kv_namespace.value} holds the application's own keys"
        )
    return None


def _custom_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a custom operation's name (it is valid ``snake_case`` already), or ``None``."""
    if name in RESERVED_NAMES:
        return (
            f"operation name {name!r} is reserved: it is the key prefix of a built-in operation "
            f"({', '.join(sorted(RESERVED_NAMES))} are); choose another name"
        )
    if name in _POLICIES_ATTRIBUTES or name.startswith("model_"):
        return f"operation name {name!r} is reserved (a Policies attribute, or model_*); choose another name"
    return None


_BOOL: TypeAdapter[bool] | None = None  # built on first use: only overrides need it, not every import


def _lax_bool(value: Any) -> bool | None:
    """``value`` read as pydantic reads a bool (``"false"`` from ``pulumi config set --path`` too); None if not one."""
    global _BOOL
    if _BOOL is None:
        _BOOL = TypeAdapter(bool)
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    # A field error names the field and the bad value; a model error (bounds) already names both.
    return f"{where}={err.get('input')!r}: {msg}" if where else msg
