"""Per-operation cache policies: data shared by infra (validated, exported) and the runtime (obeyed).

The defaults are SPEC.md's table. A stack may override any field of any operation; the result is
validated against Cloudflare's bounds (KV ``expiration_ttl`` >= 60 s; AI Gateway cache TTL 60 s .. one
month, cloudflare-facts §1.3 and §2.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator

from dualcache._exceptions import ConfigError, InvalidInputError

__all__ = [
    "GATEWAY_MAX_TTL",
    "GATEWAY_MIN_TTL",
    "KV_MAX_TTL",
    "KV_MIN_TTL",
    "GatewayMode",
    "Namespace",
    "Operation",
    "OperationPolicy",
    "Policies",
]

KV_MIN_TTL = 60
"""Smallest KV ``expiration_ttl`` Cloudflare accepts, in seconds."""
KV_MAX_TTL = 31_536_000
"""Largest KV ``expiration_ttl`` dualcache accepts, in seconds (365 days).

Cloudflare documents no maximum TTL; the data-plane Worker refuses an ``expiration_ttl`` above 2^31 - 1 (its
integer range, ``infra/worker/DATAPLANE.md``) and an ``expiration`` (unix seconds) above 2^31 - 1. A year keeps
now + TTL inside that range until 2037 and is far above any cache lifetime (SPEC's longest is 30 days); a
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


class Operation(StrEnum):
    """The AI operations the runtime caches, one policy each."""

    APPLICATION_GENERATION = "application_generation"
    JOB_ANALYSIS = "job_analysis"
    RESUME_PARSING = "resume_parsing"
    EMBEDDINGS = "embeddings"
    SPAM_DETECTION = "spam_detection"

    @classmethod
    def parse(cls, value: str) -> Operation:
        """Return the operation named ``value``.

        Raises:
            InvalidInputError: ``value`` names no operation; the message lists the valid names.
        """
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(op.value for op in cls)
            raise InvalidInputError(f"unknown operation {value!r}; valid operations: {valid}") from None


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
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    kv: bool
    kv_ttl: int | None = None
    kv_namespace: Namespace | None = None
    gateway: GatewayMode
    gateway_ttl: int | None = None
    direct_fallback: bool = True
    collect_log: bool | None = None

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
    ),
    Operation.SPAM_DETECTION: OperationPolicy(
        kv=True,
        kv_ttl=7 * _DAY,
        kv_namespace=Namespace.API_CACHE,
        gateway=GatewayMode.CACHE,
        gateway_ttl=_DAY,
    ),
}


class Policies(BaseModel):
    """One :class:`OperationPolicy` per :class:`Operation`; defaults are SPEC.md's table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    application_generation: OperationPolicy = _DEFAULTS[Operation.APPLICATION_GENERATION]
    job_analysis: OperationPolicy = _DEFAULTS[Operation.JOB_ANALYSIS]
    resume_parsing: OperationPolicy = _DEFAULTS[Operation.RESUME_PARSING]
    embeddings: OperationPolicy = _DEFAULTS[Operation.EMBEDDINGS]
    spam_detection: OperationPolicy = _DEFAULTS[Operation.SPAM_DETECTION]

    def for_operation(self, operation: Operation | str) -> OperationPolicy:
        """Return the policy of ``operation``.

        Raises:
            InvalidInputError: ``operation`` names no operation.
        """
        op = operation if isinstance(operation, Operation) else Operation.parse(operation)
        policy: OperationPolicy = getattr(self, op.value)
        return policy

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Mapping[str, Any]] | None) -> Policies:
        """Return the defaults with ``overrides`` applied field by field.

        ``overrides`` maps an operation name to the fields to change, for example
        ``{"embeddings": {"kv_ttl": 86400}}``; fields not named keep their default. Turning a layer off
        (``kv: false``, ``gateway: skip``) also drops that layer's default TTL, so it need not be unset too.

        Raises:
            ConfigError: an unknown operation or field, or a result outside Cloudflare's bounds. The
                message names ``policies.<operation>.<field>`` and what is allowed.
        """
        if not overrides:
            return cls()
        merged: dict[str, Any] = {}
        for name, fields in overrides.items():
            try:
                op = Operation.parse(name)
            except InvalidInputError as exc:
                raise ConfigError(f"policies.{name}: {exc}") from None
            if not isinstance(fields, Mapping):
                raise ConfigError(f"policies.{name}: expected a mapping of fields, got {fields!r}")
            base = _DEFAULTS[op].model_dump(mode="json")
            unknown = sorted(set(fields) - set(base))
            if unknown:
                raise ConfigError(
                    f"policies.{name}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(base))}"
                )
            base.update(fields)
            # A default TTL belongs to the default layer setting: switching the layer off drops it, unless the
            # override names a TTL too (then the validator says the two do not fit together).
            if _lax_bool(base["kv"]) is False and "kv_ttl" not in fields:
                base["kv_ttl"] = None
            if base["gateway"] == GatewayMode.SKIP.value and "gateway_ttl" not in fields:
                base["gateway_ttl"] = None
            try:
                merged[op.value] = OperationPolicy.model_validate(base)
            except ValidationError as exc:
                raise ConfigError(f"policies.{name}: {_first_error(exc)}") from None
        return cls(**merged)


_BOOL = TypeAdapter(bool)


def _lax_bool(value: Any) -> bool | None:
    """``value`` read as pydantic reads a bool (``"false"`` from ``pulumi config set --path`` too); None if not one."""
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
