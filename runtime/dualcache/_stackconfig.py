"""A stack's settings (``Pulumi.<stack>.yaml``) as one frozen, validated model.

infra reads the values through ``pulumi.Config`` (infra/config.py is the only place that does) and
validates them here; the emulator and ``dualcache wrangler`` read the same stack file without Pulumi
through :func:`load_stack_config`. One model, so the plan and the emulator cannot disagree.

Secret values (``secure:`` entries) are never decrypted here: only *whether* a secret is set is known.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from dualcache._exceptions import ConfigError
from dualcache._names import (
    GATEWAY_APIS,
    GATEWAY_ID_PATTERN,
    WORKER_NAME_RE,
    GatewayApi,
    is_valid_gateway_id,
    is_valid_worker_name,
)
from dualcache._policy import GATEWAY_MAX_TTL, GATEWAY_MIN_TTL, Namespace, OperationPolicy, Policies
from dualcache._untrusted import STACK_FILE_MAX_BYTES, one_line, quote, read_yaml_file

__all__ = [
    "CLOUDFLARE_PROVIDER_KEYS",
    "DATA_PLANE_RESERVED_BINDINGS",
    "DATA_PLANE_TOKEN_KEY",
    "DEFAULT_PROJECT",
    "DEFAULT_GATEWAY_ID",
    "GATEWAY_APIS",
    "GATEWAY_ID_PATTERN",
    "PULUMI_ENGINE_KEYS",
    "PLACEHOLDER_ACCOUNT_ID",
    "PLACEHOLDER_NAMESPACE_ID",
    "SECRET_KEYS",
    "STACK_FILE_MAX_BYTES",
    "CustomDomainSettings",
    "DataPlaneSettings",
    "GatewayApi",
    "GatewayRetrySettings",
    "GatewaySettings",
    "NamespaceSettings",
    "RateLimitSettings",
    "RouteSettings",
    "StackConfig",
    "WorkerRateLimitSettings",
    "WorkerSettings",
    "check_stack_name",
    "check_config_keys",
    "is_valid_gateway_id",
    "is_valid_worker_name",
    "load_stack_config",
    "project_name",
    "secret_placement_error",
    "split_config_key",
]

DEFAULT_PROJECT = "jobmatch-ai"
PLACEHOLDER_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
"""The account id the committed stack files carry until the user puts theirs in.

Fine for the offline plan and the emulator; a real deployment (``pulumi preview`` / ``up``) refuses it.
"""
PLACEHOLDER_NAMESPACE_ID = "fedcba9876543210fedcba9876543210"
"""The id of the existing namespace ``Pulumi.prod.yaml`` adopts until the user puts theirs in (refused likewise)."""
DATA_PLANE_TOKEN_KEY = "dataPlaneToken"
"""The config key of the data-plane Worker's bearer token (bound as ``DUALCACHE_TOKEN``); a secret only."""
SECRET_KEYS = frozenset({"openaiApiKey", "gatewayToken", DATA_PLANE_TOKEN_KEY})
"""Config keys that may only be set as Pulumi secrets (``pulumi config set --secret``)."""
PLAIN_KEYS = frozenset({"accountId", "gateway", "namespaces", "worker", "dataPlane", "workersDevSubdomain", "policies"})
"""Config keys that must not be secrets: their values end up in plain-text bindings and the stack output."""
PROVIDER_CREDENTIAL_KEYS = frozenset({"cloudflare:apiToken", "cloudflare:apiKey", "cloudflare:apiUserServiceKey"})
"""The Cloudflare provider's credentials (provider configuration): secrets only, never plain text in a stack file."""
CLOUDFLARE_PROVIDER_KEYS = frozenset(
    {"apiToken", "apiKey", "email", "apiUserServiceKey", "baseUrl", "userAgentOperatorSuffix"}
)
"""The ``cloudflare:`` keys the provider reads: exactly the settings of pulumi-cloudflare 6.23.1's
``pulumi_cloudflare/config/vars.py`` (``api_key``, ``api_token``, ``api_user_service_key``, ``base_url``,
``email``, ``user_agent_operator_suffix``). Any other ``cloudflare:`` key is a typo."""
PULUMI_ENGINE_KEYS = frozenset({"disable-default-providers", "autonaming"})
"""The ``pulumi:`` keys the Pulumi engine reads from a stack file: the two it documents for stack config
(``pulumi:disable-default-providers``, ``pulumi:autonaming``). The program reads none itself; others are
refused as typos (Pulumi may add engine keys later: add them here when it does)."""
DEFAULT_GATEWAY_ID = "default"
"""The gateway id Cloudflare creates on its own (an authenticated request to ``default`` auto-creates a gateway
with caching off): a stack may use it only with ``gateway.allowDefaultId: true``."""

_HEX32 = r"^[0-9a-f]{32}$"
# Worker names and gateway ids: Cloudflare's rules live in dualcache._names (no pydantic, no YAML), which the
# outputs contract shares; re-exported here.
_WORKER_NAME = WORKER_NAME_RE
_GATEWAY_ID_RULE = (
    f"1..64 characters matching {GATEWAY_ID_PATTERN} (lowercase letters, digits and '_', single '-' between)"
)
# The account's workers.dev subdomain is one DNS label (`<subdomain>.workers.dev`).
_DNS_LABEL = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# A route the data plane can be addressed by: a whole hostname, every path (the Worker serves its API at `/`).
_HOST_ROUTE = re.compile(
    r"^(?P<host>(?=[^/]{1,253}/)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+)/\*$"
)
_DATE = r"^\d{4}-\d{2}-\d{2}$"
# A custom domain's host name: lowercase DNS labels of 1..63 characters, at least two of them.
_HOSTNAME = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
# Pulumi's rule for project and stack names: alphanumerics, '-', '_' and '.', at most 100 characters.
_PULUMI_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# Policy overrides are a mapping of operation names to mappings of scalar fields (see _policy_problems).
_POLICY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_POLICY_STRING_MAX = 64
_POLICY_FIELDS = frozenset(OperationPolicy.model_fields)
_POLICY_NUMBER_FIELDS = frozenset(
    name
    for name, field in OperationPolicy.model_fields.items()
    if field.annotation in (int, float) or {int, float} & set(typing.get_args(field.annotation))
)


def _check_worker_name(value: str | None) -> str | None:
    if value is not None and not is_valid_worker_name(value):
        raise ValueError(
            "must be 1..63 characters of lowercase letters, digits, '_' and '-', not starting or ending with '-'"
        )
    return value


def _check_hex32(value: str) -> str:
    if not re.match(_HEX32, value):
        raise ValueError("must be 32 lowercase hex characters (0-9, a-f), as Cloudflare shows ids")
    return value


Hex32 = Annotated[str, AfterValidator(_check_hex32)]


def _check_calendar_date(value: str) -> str:
    # The pattern (checked first) fixes the shape; fromisoformat checks that the day exists (no 2025-13-11, no
    # 2025-02-30). Python >= 3.11 also accepts other ISO forms (20250311), which the pattern has already refused.
    try:
        datetime.date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"is not a calendar date ({exc}); use YYYY-MM-DD, for example 2025-03-11") from None
    return value


CalendarDate = Annotated[str, Field(pattern=_DATE), AfterValidator(_check_calendar_date)]


def _refuse_bool(value: Any) -> Any:
    # YAML `true` is a bool, and pydantic's int would read it as 1 (`cacheTtl: true` = a 1 s TTL). Numbers only;
    # digit strings stay accepted (that is how `pulumi config set --path` may store them).
    if isinstance(value, bool):
        raise ValueError("a boolean where a whole number is expected; write a number")
    return value


StrictInt = Annotated[int, BeforeValidator(_refuse_bool)]
"""An int that a YAML boolean is not (pydantic alone reads ``true`` as 1)."""


def _refuse_number(value: Any) -> Any:
    # The other way round: pydantic's bool reads 1 and 0 as true and false (`collectLogs: 0`). Booleans only, or
    # the strings `pulumi config set --path` may store ("true", "false").
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("a number where a boolean is expected; write true or false")
    return value


StrictBool = Annotated[bool, BeforeValidator(_refuse_number)]
"""A bool that a number is not (pydantic alone reads 1 as true)."""


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class RateLimitSettings(_Settings):
    """The gateway's rate limit: ``limit`` requests per ``interval`` seconds; 0 and 0 means off."""

    limit: StrictInt = Field(default=0, ge=0)
    interval: StrictInt = Field(default=0, ge=0)
    technique: Literal["fixed", "sliding"] = "fixed"

    @field_validator("interval")
    @classmethod
    def _check_interval(cls, value: int, info: ValidationInfo) -> int:
        limit = info.data.get("limit")
        if isinstance(limit, int) and limit > 0 and value == 0:
            raise ValueError(
                f"a limit of {limit} requests per 0 seconds is no rate; set interval to the window in seconds "
                "(for example 60), or limit: 0 and interval: 0 to turn rate limiting off"
            )
        return value

    @property
    def enabled(self) -> bool:
        """Whether a limit is set."""
        return self.limit > 0 and self.interval > 0


class GatewayRetrySettings(_Settings):
    """The gateway's own retry defaults (``cloudflare.AiGateway`` ``retry_max_attempts`` / ``retry_delay`` /
    ``retry_backoff``), for requests that do not say otherwise.

    dualcache's runtime sends ``cf-aig-max-attempts`` and the other retry headers on every request, which
    override these; they are declared so the gateway's behaviour for every other caller (the API Worker) is
    in the stack file, not in dashboard state. The default is one attempt (no gateway retries): a caller that
    retries on its own and sends no headers then never has its retries multiplied by the gateway's. (The
    provider's schema calls the field "maximum number of retry attempts (1-5)"; its minimum of 1 reads as
    attempts, the first included, since 0 retries could not be declared otherwise.) Bounds: attempts 1..5,
    delay in milliseconds 0..5000 (the provider takes 0..60000, the docs say "maximum of 5 seconds").
    """

    max_attempts: StrictInt = Field(default=1, ge=1, le=5)
    delay: StrictInt = Field(default=500, ge=0, le=5_000)
    backoff: Literal["constant", "linear", "exponential"] = "constant"


class GatewaySettings(_Settings):
    """Settings of the stack's AI Gateway (``cloudflare.AiGateway`` arguments), and the URL shape (``api``)
    the runtime reaches it by (exported in the stack output as ``gateway_api``)."""

    id: str | None = None
    allow_default_id: StrictBool = False
    """Set (``allowDefaultId: true``) to let ``id`` be ``default``, the gateway Cloudflare auto-creates."""
    api: GatewayApi = "legacy"
    retry: GatewayRetrySettings = GatewayRetrySettings()
    cache_ttl: StrictInt = 0
    cache_invalidate_on_update: StrictBool = True
    collect_logs: StrictBool = True
    authentication: StrictBool = False
    rate_limiting: RateLimitSettings = RateLimitSettings()
    log_management: StrictInt | None = Field(default=None, ge=10_000, le=10_000_000)
    log_management_strategy: Literal["STOP_INSERTING", "DELETE_OLDEST"] | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_gateway_id(value):
            raise ValueError(f"is not a valid gateway id; use {_GATEWAY_ID_RULE}")
        return value

    @field_validator("cache_ttl")
    @classmethod
    def _check_cache_ttl(cls, value: int) -> int:
        if value != 0 and not GATEWAY_MIN_TTL <= value <= GATEWAY_MAX_TTL:
            raise ValueError(f"must be 0 (cache off) or {GATEWAY_MIN_TTL}..{GATEWAY_MAX_TTL} seconds")
        return value


class NamespaceSettings(_Settings):
    """KV namespace settings: protection, and existing namespaces to adopt (Pulumi ``import_``)."""

    protect: StrictBool = False
    adopt: dict[Namespace, Hex32] = Field(default_factory=dict)


class RouteSettings(_Settings):
    """A Workers route (``cloudflare.WorkersRoute``)."""

    pattern: str = Field(min_length=1)
    zone_id: Hex32


class CustomDomainSettings(_Settings):
    """A Workers custom domain (``cloudflare.WorkersCustomDomain``)."""

    hostname: str = Field(min_length=1, max_length=253, pattern=_HOSTNAME)
    """A DNS host name (lowercase labels joined by dots): it becomes the Worker's ``https://`` base URL."""
    zone_id: Hex32 | None = None


class WorkerSettings(_Settings):
    """The API Worker: name, code bundle and where it is reachable."""

    name: str | None = None
    compatibility_date: CalendarDate = "2025-03-11"
    bundle: str | None = None
    """Path (relative to the project directory) of the app's ES module bundle; None = the health Worker."""
    main_module: str = Field(default="worker.js", pattern=r"^[A-Za-z0-9_.-]+\.m?js$")
    """Module name the code is uploaded as (ES module syntax), for example ``worker.js``."""
    route: RouteSettings | None = None
    custom_domain: CustomDomainSettings | None = None
    workers_dev: StrictBool | None = None
    """Whether the Worker answers on its ``workers.dev`` subdomain; None leaves the account's setting alone."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return _check_worker_name(value)

    @field_validator("bundle")
    @classmethod
    def _check_bundle(cls, value: str | None) -> str | None:
        # The bundle's text goes into the plan manifest (and its diff, posted on pull requests): a stack
        # file must not be able to name a file outside the project, such as /proc/self/environ.
        if value is not None:
            path = PurePosixPath(value.replace("\\", "/"))
            if not value or path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", value):
                raise ValueError("must be a path inside the project directory, relative to it, without '..'")
        return value


DATA_PLANE_RESERVED_BINDINGS = frozenset(
    {n.value for n in Namespace} | {"DUALCACHE_TOKEN", "AI", "AI_GATEWAY_SLUG", "CLOUDFLARE_ACCOUNT_ID"}
)
"""Binding names the data-plane Worker already uses: a rate limiter cannot take one."""

_RATE_LIMITER_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


class WorkerRateLimitSettings(_Settings):
    """A Workers Rate Limiting binding of the data-plane Worker (``ratelimit``): ``limit`` calls of
    ``env.NAME.limit({key})`` per key every ``period`` seconds (10 or 60), counted per Cloudflare location.

    ``namespace_id`` is the account-wide identifier of the counters (Cloudflare: "an integer, unique to your
    account"; bindings sharing it share counters): given as an integer or a string of digits, kept as the
    string the API takes.
    """

    namespace_id: str
    limit: StrictInt = Field(ge=1)
    period: Literal[10, 60]

    @field_validator("namespace_id", mode="before")
    @classmethod
    def _check_namespace_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not re.fullmatch(r"[1-9][0-9]{0,17}", value):
            raise ValueError("must be a positive integer (or a string of its digits), e.g. 1001")
        return value


class DataPlaneSettings(_Settings):
    """dualcache's own data-plane Worker (``infra/worker/dataplane.js``): name and where it is reachable.

    Reachable on its ``workers.dev`` subdomain by default; on a custom domain or a route when one is
    configured (then ``workers.dev`` is off unless ``workersDev: true`` says otherwise). The Worker serves
    its API at the root path, so a route must cover a whole hostname (``data.example.com/*``).
    """

    name: str | None = None
    compatibility_date: CalendarDate = "2025-03-11"
    route: RouteSettings | None = None
    custom_domain: CustomDomainSettings | None = None
    workers_dev: StrictBool | None = None
    """Whether the Worker answers on ``workers.dev``; None = yes unless a route or custom domain is set."""
    rate_limits: dict[str, WorkerRateLimitSettings] = Field(default_factory=dict)
    """Workers Rate Limiting bindings of the Worker by binding name (``POST /ratelimit/{NAME}``)."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return _check_worker_name(value)

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: dict[str, WorkerRateLimitSettings]) -> dict[str, WorkerRateLimitSettings]:
        for name in value:
            if not _RATE_LIMITER_NAME.fullmatch(name):
                raise ValueError(f"binding name {name!r}: use 1..64 of A-Z 0-9 _, starting with a letter")
            if name in DATA_PLANE_RESERVED_BINDINGS:
                raise ValueError(f"binding name {name!r} is already a binding of the data-plane Worker")
        return value

    @field_validator("route")
    @classmethod
    def _check_route(cls, value: RouteSettings | None) -> RouteSettings | None:
        if value is not None and not _HOST_ROUTE.match(value.pattern):
            raise ValueError(
                "must cover one whole hostname, `<hostname>/*` (for example `kv.example.com/*`): the data-plane "
                "Worker serves its API at the root path, so a path prefix or a wildcard host gives it no base URL"
            )
        return value

    @property
    def on_workers_dev(self) -> bool:
        """Whether the Worker answers on its ``workers.dev`` subdomain (see :attr:`workers_dev`)."""
        if self.workers_dev is not None:
            return self.workers_dev
        return self.route is None and self.custom_domain is None


class StackConfig(_Settings):
    """Everything a stack file says, validated. The names derived from it live here too.

    Attributes:
        project: The Pulumi project name (``Pulumi.yaml`` ``name``).
        stack: The stack name.
        account_id: The Cloudflare account id.
        gateway: AI Gateway settings.
        namespaces: KV namespace settings.
        worker: Worker settings (the API Worker, the user's app).
        data_plane: dualcache's data-plane Worker settings.
        workers_dev_subdomain: The account's ``workers.dev`` subdomain (``<subdomain>.workers.dev``), when set.
        policies: Per-operation cache policies (defaults with the stack's overrides applied).
        secrets_set: Which of :data:`SECRET_KEYS` are set (as secrets); values are never held here.
    """

    project: str = DEFAULT_PROJECT
    stack: str = Field(min_length=1)
    account_id: Hex32
    gateway: GatewaySettings = GatewaySettings()
    namespaces: NamespaceSettings = NamespaceSettings()
    worker: WorkerSettings = WorkerSettings()
    data_plane: DataPlaneSettings = DataPlaneSettings()
    workers_dev_subdomain: str | None = Field(default=None, pattern=_DNS_LABEL)
    policies: Policies = Policies()
    secrets_set: frozenset[str] = frozenset()

    @property
    def gateway_id(self) -> str:
        """The gateway id: the configured one, else ``<project>-<stack>``."""
        return self.gateway.id or f"{self.project}-{self.stack}"

    @property
    def worker_name(self) -> str:
        """The Worker's script name: the configured one, else ``<project>-api-<stack>``."""
        return self.worker.name or f"{self.project}-api-{self.stack}"

    @property
    def data_plane_name(self) -> str:
        """The data-plane Worker's script name: the configured one, else ``<project>-dualcache-<stack>``."""
        return self.data_plane.name or f"{self.project}-dualcache-{self.stack}"

    @property
    def data_plane_url(self) -> str | None:
        """The data plane's base URL, derived from config; None when it cannot be known offline.

        A custom domain gives ``https://<hostname>``, else a route ``https://<hostname>``, else (on
        ``workers.dev``) ``https://<script>.<workersDevSubdomain>.workers.dev``. Without
        ``workersDevSubdomain`` the account's subdomain is unknown here (pulumi-cloudflare has no lookup of
        it), so the URL is None; a real deployment refuses that (see infra/config.py).
        """
        dp = self.data_plane
        if dp.custom_domain is not None:
            return f"https://{dp.custom_domain.hostname}"
        if dp.route is not None:
            match = _HOST_ROUTE.match(dp.route.pattern)
            assert match is not None  # checked by DataPlaneSettings
            return f"https://{match.group('host')}"
        if self.workers_dev_subdomain is not None:
            return f"https://{self.data_plane_name}.{self.workers_dev_subdomain}.workers.dev"
        return None

    def namespace_title(self, binding: Namespace) -> str:
        """The title of a namespace: ``<project>-<stack>-<BINDING>``."""
        return f"{self.project}-{self.stack}-{binding.value}"

    def offline_namespace_id(self, binding: Namespace) -> str:
        """The namespace id used where Cloudflare does not assign one (the offline plan, the emulator).

        An adopted namespace keeps its real id; any other gets a stable id derived from the account and
        title, so the plan and the emulator agree without talking to each other.
        """
        adopted = self.namespaces.adopt.get(binding)
        if adopted is not None:
            return adopted
        return hashlib.sha256(f"{self.account_id}/{self.namespace_title(binding)}".encode()).hexdigest()[:32]

    @classmethod
    def from_values(
        cls,
        values: Mapping[str, Any],
        *,
        project: str,
        stack: str,
        secrets_set: frozenset[str] = frozenset(),
        source: str = "stack config",
    ) -> StackConfig:
        """Validate the project's config values (keys without the ``<project>:`` prefix).

        Raises:
            ConfigError: an unknown key, a missing ``accountId`` or a value out of bounds; the message
                names ``<project>:<key>``, the bad value and what is allowed.
        """
        allowed = PLAIN_KEYS | SECRET_KEYS
        unknown = sorted(str(k) for k in set(values) - allowed)
        if unknown:
            raise ConfigError(
                _join_problems(
                    source,
                    [_unknown_key(f"{project}:{key}", key, sorted(allowed), level=f"{project}:") for key in unknown],
                )
            )
        data = {k: v for k, v in values.items() if k not in SECRET_KEYS}
        for key, value in data.items():
            where = _secure_path(value, f"{project}:{key}")
            if where is not None:
                raise ConfigError(
                    f"{source}: {where} is a secure (encrypted) value, which only "
                    f"{', '.join(f'{project}:{k}' for k in sorted(SECRET_KEYS))} may be; set {project}:{key} in plain "
                    "text (the value is not shown)"
                )
        overrides = data.pop("policies", None)
        problems = _policy_problems(overrides, project=project, source=source) if overrides is not None else []
        policies = Policies()
        if not problems:
            try:
                policies = Policies.with_overrides(overrides)
            except ConfigError as exc:  # the message starts with policies.<operation>
                problems.append(f"{project}:{exc}")
        data.update(project=project, stack=stack, secretsSet=frozenset(secrets_set), policies=policies)
        # Every problem of the file at once: the settings' and the policies'.
        config: StackConfig | None = None
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            problems = _describe(exc, project=project) + problems
        if problems or config is None:
            raise ConfigError(_join_problems(source, problems))
        config._check_derived_names(source)
        return config

    def _check_derived_names(self, source: str) -> None:
        # The defaults are built from the project and stack names, which are not validated here: a stack
        # named "Prod_EU" would yield an invalid script name. Say which key to set instead.
        if self.worker.name is None and (not _WORKER_NAME.match(self.worker_name) or self.worker_name.endswith("-")):
            raise ConfigError(
                f"{source}: the default {self.project}:worker.name {self.worker_name!r} (from the project and stack "
                f"names) is not a valid Worker name; set {self.project}:worker.name to 1..63 characters of lowercase "
                "letters, digits, '_' and '-'"
            )
        if self.gateway.id == DEFAULT_GATEWAY_ID and not self.gateway.allow_default_id:
            raise ConfigError(
                f"{source}: {self.project}:gateway.id = {DEFAULT_GATEWAY_ID!r}: that is the gateway Cloudflare creates "
                "on its own (caching and rate limiting off), so naming it by accident leaves caching to whatever that "
                "gateway is set to in the dashboard; drop gateway.id to use the stack's own "
                f"{self.project}-{self.stack}, pick another id, or set gateway.allowDefaultId: true if the default "
                "gateway is meant"
            )
        if self.gateway.id is None and not is_valid_gateway_id(self.gateway_id):
            raise ConfigError(
                f"{source}: the default {self.project}:gateway.id {self.gateway_id!r} (from the project and stack "
                f"names) is not a valid gateway id; set {self.project}:gateway.id to {_GATEWAY_ID_RULE}"
            )
        if self.data_plane.name is None and (
            not _WORKER_NAME.match(self.data_plane_name) or self.data_plane_name.endswith("-")
        ):
            raise ConfigError(
                f"{source}: the default {self.project}:dataPlane.name {self.data_plane_name!r} (from the project and "
                f"stack names) is not a valid Worker name; set {self.project}:dataPlane.name to 1..63 characters of "
                "lowercase letters, digits, '_' and '-'"
            )
        if self.data_plane_name == self.worker_name:
            raise ConfigError(
                f"{source}: {self.project}:dataPlane.name and the API Worker's name are both {self.worker_name!r}; "
                "the data plane is a Worker of its own, give it another name"
            )
        dp = self.data_plane
        if dp.workers_dev is False and dp.route is None and dp.custom_domain is None:
            raise ConfigError(
                f"{source}: {self.project}:dataPlane.workersDev is false and no dataPlane.route or "
                "dataPlane.customDomain is set, so the data-plane Worker would be reachable nowhere; set a route or "
                "custom domain, or drop workersDev to serve it on workers.dev"
            )


def _secure_path(value: Any, path: str, depth: int = 0) -> str | None:
    """The dotted path of the first ``secure:`` mapping inside ``value``, or None."""
    if depth > 64:
        return None
    if isinstance(value, Mapping):
        if "secure" in value:
            return path
        for key, item in value.items():
            found = _secure_path(item, f"{path}.{quote(key, 40) if not isinstance(key, str) else key[:40]}", depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _secure_path(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


def _policy_problems(overrides: Any, *, project: str, source: str) -> list[str]:
    """Policy overrides are ``{operation: {field: scalar}}``, with short names and strings.

    Checked before :meth:`Policies.with_overrides`, whose messages show names and values: this way they
    show short ones only.

    Returns:
        One line per unknown field (with the closest valid one) and per boolean where a number of seconds
        is expected.

    Raises:
        ConfigError: the overrides are not of that shape (a name or a value that cannot be shown in a line).
    """
    key = f"{project}:policies"
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{source}: {key} = {quote(overrides)}: expected a mapping of operation names")
    problems: list[str] = []
    for name, fields in overrides.items():
        if not isinstance(name, str) or not _POLICY_NAME.match(name):
            raise ConfigError(f"{source}: {key}: {quote(name)} is not an operation name")
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{source}: {key}.{name} = {quote(fields)}: expected a mapping of fields")
        for field, value in fields.items():
            if not isinstance(field, str) or not _POLICY_NAME.match(field):
                raise ConfigError(f"{source}: {key}.{name}: {quote(field)} is not a field name")
            if isinstance(value, str) and len(value) > _POLICY_STRING_MAX:
                raise ConfigError(
                    f"{source}: {key}.{name}.{field} = {quote(value)}: too long for a policy value "
                    f"(at most {_POLICY_STRING_MAX} characters)"
                )
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ConfigError(f"{source}: {key}.{name}.{field} = {quote(value)}: expected a single value")
            if field not in _POLICY_FIELDS:
                problems.append(
                    _unknown_key(
                        f"{key}.{name}.{field}", field, sorted(_POLICY_FIELDS), level=f"{key}.{name}", value=value
                    )
                )
            elif field in _POLICY_NUMBER_FIELDS and isinstance(value, bool):
                off = "kv: false" if field.startswith("kv") else "gateway: skip"
                problems.append(
                    f"{key}.{name}.{field} = {str(value).lower()}: a boolean where a number of seconds is expected; "
                    f"set a whole number (for example {field}: 86400), or turn the layer off with {off}"
                )
    return problems


_MAX_PROBLEMS = 20
"""At most this many problems are listed in one error (a hostile file cannot make a huge message)."""


def _join_problems(source: str | None, problems: Sequence[str]) -> str:
    """One line per problem, each naming ``source``; past :data:`_MAX_PROBLEMS`, how many more there are."""
    head = f"{source}: " if source is not None else ""
    lines = [f"{head}{p}" for p in problems[:_MAX_PROBLEMS]]
    more = len(problems) - _MAX_PROBLEMS
    if more > 0:
        lines.append(f"{head}and {more} more")
    return "\n".join(lines)


def _did_you_mean(word: str, valid: Iterable[str]) -> str | None:
    """The valid word closest to ``word`` (case aside first: ``cacheTTL`` is ``cacheTtl``), or None."""
    options = list(valid)
    folded = {v.lower(): v for v in options}
    if word.lower() in folded:
        return folded[word.lower()]
    found = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return found[0] if found else None


def _unknown_key(shown: str, key: str, valid: Sequence[str], *, level: str, value: Any = ...) -> str:
    """``<shown> = <value>: unknown key; did you mean '<level>.<closest>'? Valid keys of <level>: ...``.

    ``value`` is left out when not given (a top-level key: a misspelt secret key may hold a token).
    """
    guess = _did_you_mean(key, valid)
    joint = ":" if level.endswith(":") or ":" not in level else "."
    where = level.rstrip(":")
    hint = f"; did you mean {where + joint + guess!r}?" if guess is not None else "."
    head = quote(shown, 80) if value is ... else f"{shown} = {_shown(value)}"
    return f"{head}: unknown key{hint} Valid keys of {where}: {', '.join(valid)}"


def _field_for(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``, ``Annotated[X, ...]``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _keys_at(path: Sequence[str | int]) -> list[str] | None:
    """The valid keys (camelCase, as stack files write them) of the settings mapping at ``path``, or None."""
    model: type[BaseModel] = StackConfig
    for part in path:
        field = _field_for(model, str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _shown(value: Any) -> str:
    # Booleans as the stack file writes them (YAML `true`), not Python's True.
    return str(value).lower() if isinstance(value, bool) else quote(value)


def _describe(exc: ValidationError, *, project: str) -> list[str]:
    """One line per problem: ``<project>:<dotted.key> = <value>: <what is wrong and what would be valid>``.

    An unknown key (pydantic's ``extra_forbidden``) gets the valid keys of its level and the closest one.
    """
    lines = []
    for err in exc.errors():
        loc = [str(p)[:60] for p in err["loc"]]
        key = f"{project}:{'.'.join(loc)}" if loc else project
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            lines.append(f"{key} is required")
        elif err["type"] == "extra_forbidden" and (valid := _keys_at(err["loc"][:-1])) is not None:
            parent = f"{project}:{'.'.join(loc[:-1])}"
            lines.append(_unknown_key(key, loc[-1], valid, level=parent, value=err.get("input")))
        else:
            lines.append(f"{key} = {_shown(err.get('input'))}: {one_line(msg)}")
    return lines


def split_config_key(full_key: str, *, source: str, project: str) -> tuple[str, str]:
    """Split a stack file's config key into ``(namespace, name)`` the way Pulumi parses it.

    Pulumi rejects a stack-file key without a namespace ("configuration keys should be of the form
    `<namespace>:<name>`"); so do the readers here, instead of silently ignoring the key.

    Raises:
        ConfigError: ``full_key`` has no ``<namespace>:`` part; the message shows the prefixed form.
    """
    namespace, sep, name = str(full_key).partition(":")
    if not sep or not namespace or not name:
        example = full_key if len(str(full_key)) <= 40 else "key"
        raise ConfigError(
            f"{source}: config key {quote(full_key)} has no namespace; Pulumi needs `<namespace>:<name>`, "
            f"for example `{project}:{example}`"
        )
    return namespace, name


def secret_placement_error(full_key: str, *, is_secret: bool, project: str, stack: str, source: str) -> str | None:
    """Say what is wrong when a key is a secret and should not be, or is plain text and should be a secret.

    Secrets (``<project>:openaiApiKey``, ``<project>:gatewayToken``, ``<project>:dataPlaneToken``, the
    provider's credentials) must be set with ``pulumi config set --secret <namespace>:<key>``. The keys of
    :data:`PLAIN_KEYS` must not be secrets: their values go into plain-text Worker bindings and the
    ``dualcache`` stack output, which would expose them. The message never contains the value.

    Returns:
        The error message, or ``None`` when the key is placed right (or is none of these keys).
    """
    namespace, _, name = full_key.partition(":")
    must_be_secret = full_key in PROVIDER_CREDENTIAL_KEYS or (namespace == project and name in SECRET_KEYS)
    if must_be_secret and not is_secret:
        return (
            f"{source}: {full_key} is in plain text; set it with `pulumi config set --secret {full_key} ... "
            f"-s {stack}` (which replaces the plain value in the stack file)"
        )
    if is_secret and namespace == project and name in PLAIN_KEYS:
        return (
            f"{source}: {full_key} is set as a secret, but its value goes into plain-text Worker bindings and the "
            f"`dualcache` stack output; set it in plain text with `pulumi config set {name} ... -s {stack}`"
        )
    return None


def _known_config_keys(project: str) -> dict[str, frozenset[str]]:
    """The config keys a stack file may hold, per namespace: the program's, the provider's, the engine's."""
    known: dict[str, frozenset[str]] = {}
    for namespace, keys in ((project, PLAIN_KEYS | SECRET_KEYS), ("cloudflare", CLOUDFLARE_PROVIDER_KEYS)):
        known[namespace] = known.get(namespace, frozenset()) | keys
    known["pulumi"] = known.get("pulumi", frozenset()) | PULUMI_ENGINE_KEYS
    return known


def check_config_keys(full_keys: Iterable[str], *, project: str, file: str, source: str | None = None) -> None:
    """Refuse config keys of a namespace nothing reads, or keys a known namespace does not have.

    The program reads ``<project>:`` keys, the Cloudflare provider ``cloudflare:`` keys
    (:data:`CLOUDFLARE_PROVIDER_KEYS`) and the Pulumi engine ``pulumi:`` keys (:data:`PULUMI_ENGINE_KEYS`).
    Anything else would be ignored without a word: ``jobmatch-ia:gateway`` would drop the whole gateway block
    and ``cloudflare:apiTokn`` the token. Each bad key gets one line naming ``file``, the key, the closest
    valid namespace or key, and the valid ones. Values are not shown: a misspelt secret key may hold a token.

    Args:
        full_keys: ``<namespace>:<name>`` keys (as :func:`split_config_key` accepts them).
        project: The project name (the program's own namespace).
        file: The stack file the keys come from, named in every line.
        source: Put before every line (infra's ``stack 'dev'``); None = nothing.

    Raises:
        ConfigError: one line per unknown namespace or key, all of them.
    """
    known = _known_config_keys(project)
    namespaces = list(known)
    problems: list[str] = []
    for full_key in sorted(set(full_keys)):
        namespace, _, name = full_key.partition(":")
        if namespace in known and name in known[namespace]:
            continue
        shown = quote(full_key, 80)
        if namespace not in known:
            guess = _did_you_mean(namespace, namespaces)
            # No namespace like it, but a key of that name exists (`myapp:gateway`): say where it lives.
            owner = next((ns for ns in namespaces if name in known[ns]), None)
            if guess is not None:
                hint = f"; did you mean {guess + ':'!r}?"
            elif owner is not None:
                hint = f"; did you mean {owner + ':' + name!r}?"
            else:
                hint = "."
            problems.append(
                f"unknown config namespace {quote(namespace, 40)} in {file} (key {shown}){hint} "
                f"Valid namespaces: {', '.join(namespaces)}"
            )
            continue
        guess = _did_you_mean(name, known[namespace])
        owner = next((ns for ns in namespaces if ns != namespace and name in known[ns]), None)
        if guess is not None:
            hint = f"; did you mean {namespace + ':' + guess!r}?"
        elif owner is not None:  # `cloudflare:accountId` is the program's `jobmatch-ai:accountId`
            hint = f"; did you mean {owner + ':' + name!r}?"
        else:
            hint = "."
        problems.append(
            f"unknown config key {shown} in {file}{hint} Valid {namespace}: keys: {', '.join(sorted(known[namespace]))}"
        )
    if problems:
        raise ConfigError(_join_problems(source, problems))


def load_stack_config(project_dir: str | Path, stack: str) -> StackConfig:
    """Read ``Pulumi.yaml`` and ``Pulumi.<stack>.yaml`` from ``project_dir`` without Pulumi.

    Keys of the provider's and the engine's namespaces (``cloudflare:...``, ``pulumi:...``) are checked by
    name only (see :func:`check_config_keys`), and the provider's credentials must be secrets; secret values
    are not decrypted. Nothing but the two files is read.

    Raises:
        ConfigError: a file is missing or not YAML, a key has no namespace, an unknown namespace or key
            (with the closest valid one), a secret key is set in plain text (or a plain key as a secret), or
            a value is invalid (see :meth:`StackConfig.from_values`).
    """
    root = Path(project_dir)
    check_stack_name(stack)
    project_file = root / "Pulumi.yaml"
    stack_file = root / f"Pulumi.{stack}.yaml"
    project = project_name(_read_yaml(project_file), source=str(project_file))
    if not stack_file.exists():
        existing = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))
        raise ConfigError(f"no stack file {str(stack_file)!r} for stack {stack!r}; stacks here: {', '.join(existing)}")
    config = _read_yaml(stack_file).get("config") or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{stack_file}: 'config' must be a mapping")
    for full_key in config:
        split_config_key(str(full_key), source=str(stack_file), project=project)
    check_config_keys((str(k) for k in config), project=project, file=str(stack_file))
    values: dict[str, Any] = {}
    secrets: set[str] = set()
    for full_key, value in config.items():
        namespace, key = split_config_key(str(full_key), source=str(stack_file), project=project)
        is_secure = isinstance(value, Mapping) and set(value) == {"secure"}
        problem = secret_placement_error(
            str(full_key), is_secret=is_secure, project=project, stack=stack, source=str(stack_file)
        )
        if problem is not None:
            raise ConfigError(problem)
        if namespace != project:
            continue
        if key in SECRET_KEYS:
            secrets.add(key)
        else:
            values[key] = value
    return StackConfig.from_values(
        values, project=project, stack=stack, secrets_set=frozenset(secrets), source=str(stack_file)
    )


def check_stack_name(stack: str) -> str:
    """Validate a stack name as Pulumi does (it also names the file ``Pulumi.<stack>.yaml``); return it.

    Raises:
        ConfigError: not 1..100 characters of letters, digits, ``-``, ``_`` and ``.``.
    """
    if not isinstance(stack, str) or not _PULUMI_NAME.match(stack) or stack in (".", ".."):
        raise ConfigError(
            f"stack name {quote(stack)} is not valid; Pulumi stack names are 1..100 letters, digits, '-', '_' or '.'"
        )
    return stack


def project_name(project_doc: Mapping[str, Any], *, source: str) -> str:
    """The project name of a ``Pulumi.yaml`` document (its ``name``, default :data:`DEFAULT_PROJECT`), validated.

    Raises:
        ConfigError: not 1..100 characters of letters, digits, ``-``, ``_`` and ``.`` (Pulumi's rule).
    """
    name = project_doc.get("name") or DEFAULT_PROJECT
    if not isinstance(name, str) or not _PULUMI_NAME.match(name):
        raise ConfigError(
            f"{source}: name = {quote(name)} is not a valid project name; Pulumi project names are 1..100 "
            "letters, digits, '-', '_' or '.'"
        )
    return name


def _read_yaml(path: Path) -> Mapping[str, Any]:
    """Read a Pulumi YAML file with the limits of :mod:`dualcache._untrusted` (size, aliases, depth, duplicates).

    YAML as Pulumi reads it: a date-like scalar (``2025-03-11``) stays a string (Go's yaml keeps timestamps
    decoded into untyped values as strings; PyYAML's YAML 1.1 would make a ``datetime.date``). Files are
    limited to :data:`STACK_FILE_MAX_BYTES`.
    """
    doc = read_yaml_file(path, limit=STACK_FILE_MAX_BYTES, what="YAML file")
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{path} must hold a YAML mapping")
    return doc
