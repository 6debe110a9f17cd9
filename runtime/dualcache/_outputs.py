"""The outputs contract: the one thing passed from infra (a Pulumi stack output) to the runtime.

Tokens go where the outputs point, so the outputs are checked before anything is sent (see
:func:`check_base_url`): base URLs are ``https://`` (plain ``http://`` on loopback only, for the
emulator), the Cloudflare API and the AI Gateway must be Cloudflare's own hosts unless another host is
trusted explicitly (:data:`TRUSTED_HOSTS_ENV_VAR`, or ``trusted_hosts=`` when loading), and every id that
goes into a URL path has Cloudflare's format.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dualcache._exceptions import ConfigError
from dualcache._names import GATEWAY_APIS, GATEWAY_ID_PATTERN, GatewayApi, is_valid_worker_name
from dualcache._policy import Namespace, Policies
from dualcache._untrusted import one_line, parse_json, quote, read_json_file, redact_url

__all__ = [
    "API_HOSTS",
    "DEFAULT_API_BASE_URL",
    "DEFAULT_GATEWAY_BASE_URL",
    "GATEWAY_APIS",
    "GATEWAY_HOSTS",
    "OUTPUTS_ENV_VAR",
    "OUTPUTS_MAX_BYTES",
    "OUTPUT_NAME",
    "TRUSTED_HOSTS_ENV_VAR",
    "GatewayApi",
    "StackOutputs",
    "check_base_url",
    "is_loopback_host",
    "trusted_hosts_from_env",
]

DEFAULT_API_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_GATEWAY_BASE_URL = "https://gateway.ai.cloudflare.com/v1"
OUTPUT_NAME = "dualcache"
"""Name of the structured stack output infra exports."""
OUTPUTS_ENV_VAR = "DUALCACHE_OUTPUTS"
"""Environment variable holding a path to an outputs file, or the JSON itself."""

OUTPUTS_MAX_BYTES = 1024 * 1024
"""Largest outputs file (or ``DUALCACHE_OUTPUTS`` JSON) read: 1 MiB; a real one is about 3 KB."""
TRUSTED_HOSTS_ENV_VAR = "DUALCACHE_TRUSTED_HOSTS"
"""Comma-separated hosts trusted beyond the defaults: ``host``, ``*.domain`` (any subdomain), or
``http://host`` to allow plain http to that host too. Set by whoever runs the service, never by the outputs."""
API_HOSTS = ("api.cloudflare.com",)
"""Hosts ``api_base_url`` may name without an opt-in (besides loopback)."""
GATEWAY_HOSTS = ("gateway.ai.cloudflare.com",)
"""Hosts ``gateway_base_url`` may name without an opt-in (besides loopback)."""

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_STACK = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# Base URLs are parsed with one strict pattern, so that no two URL parsers can disagree on the host: a
# host name or an IP literal, an optional port, a path of plain segments; no userinfo, query or fragment.
_BASE_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>(?:/[A-Za-z0-9._~-]*)*)$"
)
# DNS labels of 1..63 characters; '_' too, since a Worker name may hold one and names its workers.dev host.
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
Role = Literal["api_base_url", "gateway_base_url", "data_plane_url"]
_ALLOWED: dict[str, tuple[str, ...]] = {"api_base_url": API_HOSTS, "gateway_base_url": GATEWAY_HOSTS}


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's host, IPv6 in brackets or not) is loopback: ``localhost``, 127.0.0.0/8, ``::1``."""
    name = host.lower().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def trusted_hosts_from_env(var: str = TRUSTED_HOSTS_ENV_VAR) -> tuple[str, ...]:
    """The hosts trusted by the environment variable ``var`` (see :data:`TRUSTED_HOSTS_ENV_VAR`)."""
    return tuple(entry for entry in re.split(r"[,\s]+", os.environ.get(var, "")) if entry)


def _host_trusted(host: str, scheme: str, trusted: Iterable[str]) -> bool:
    for entry in trusted:
        entry = entry.strip().lower()
        allow_http = entry.startswith("http://")
        pattern = entry.removeprefix("http://").removeprefix("https://").rstrip("/").strip("[]")
        if scheme == "http" and not allow_http:
            continue
        if pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern)):
            return True
    return False


def check_base_url(url: str, *, role: Role, trusted_hosts: Iterable[str] = ()) -> str:
    """Check a base URL that tokens will be sent to; return it without a trailing slash.

    The rules: ``https://`` (plain ``http://`` only to a loopback host, or to a host trusted as
    ``http://host``); no user, password, query or fragment; a path of plain segments without ``.`` or
    ``..``. The host must be loopback, or trusted (``trusted_hosts`` and :data:`TRUSTED_HOSTS_ENV_VAR`),
    or for ``api_base_url`` one of :data:`API_HOSTS`, for ``gateway_base_url`` one of
    :data:`GATEWAY_HOSTS`; ``data_plane_url`` may name any https host, since the data plane is the stack's
    own Worker, often on the stack's own domain, and only its own token is sent there.

    Raises:
        ConfigError: a rule is broken; the message names ``role``, the URL without credentials and the opt-in.
    """
    if not isinstance(url, str):
        raise ConfigError(f"{role} must be a URL string, got {type(url).__name__}")
    shown = quote(redact_url(url), 120)
    match = _BASE_URL.match(url.rstrip("/") if url.endswith("/") and url.count("/") > 2 else url)
    if match is None:
        raise ConfigError(
            f"{role} {shown} is not a plain https:// base URL (scheme://host[:port]/path, without user, password, "
            "query, fragment or special characters)"
        )
    scheme = match["scheme"].lower()
    host = match["host"].lower()
    path = match["path"]
    if scheme not in ("https", "http"):
        raise ConfigError(f"{role} {shown} is not an http(s) URL; use https://")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ConfigError(f"{role} {shown} has a '.' or '..' path segment")
    if match["port"] is not None and not 0 < int(match["port"]) <= 65535:
        raise ConfigError(f"{role} {shown} has no valid port (1..65535)")
    if not host.startswith("[") and not _HOST_NAME.match(host):
        raise ConfigError(f"{role} {shown} has no valid host name")
    trusted = (*trusted_hosts, *trusted_hosts_from_env())
    loopback = is_loopback_host(host)
    bare = host.strip("[]")
    if scheme == "http" and not loopback and not _host_trusted(bare, "http", trusted):
        raise ConfigError(
            f"{role} {shown} is plain http to a host that is not loopback: tokens would travel in cleartext; use "
            f"https://, or trust the host with {TRUSTED_HOSTS_ENV_VAR}=http://{bare} (an emulator on another machine)"
        )
    allowed = _ALLOWED.get(role)
    if allowed is not None and not loopback and bare not in allowed and not _host_trusted(bare, scheme, trusted):
        raise ConfigError(
            f"{role} {shown} names host {quote(bare)}, which is not {' or '.join(allowed)}: its token would be "
            f"sent there; to trust that host, set {TRUSTED_HOSTS_ENV_VAR}={bare} where the service runs (or pass "
            "trusted_hosts=[...] when loading the outputs)"
        )
    return url.rstrip("/")


class StackOutputs(BaseModel):
    """What a service needs to reach one stack's resources. Holds no secrets.

    Produced by infra as the stack output ``dualcache``; ``pulumi stack output dualcache --json`` prints
    a file :meth:`load` reads. Pointing the two base URLs at the local emulator is all it takes to run
    a service locally.

    Attributes:
        stack: The Pulumi stack name (``dev``, ``staging``, ``prod``, ...).
        account_id: The Cloudflare account id (32 lowercase hex characters).
        gateway_id: The AI Gateway id (its slug in gateway URLs).
        api_base_url: Cloudflare REST API base, without a trailing slash.
        gateway_base_url: AI Gateway base, without a trailing slash.
        namespaces: Namespace id of each of the six bindings.
        worker_name: The API Worker's script name.
        data_plane_url: Base URL of dualcache's data-plane Worker (the KV path in production), without a
            trailing slash; ``None`` when the stack has none (the runtime then uses the REST API).
        data_plane_worker_name: The data-plane Worker's script name, or ``None``.
        policies: The per-operation cache policies of this stack.
        gateway_api: Which URL shape the runtime reaches the gateway by: ``"legacy"`` (the default:
            ``{gateway_base_url}/{account}/{gateway}/...``) or ``"rest"`` (``{api_base_url}/accounts/{account}/ai/...``
            with ``cf-aig-gateway-id: {gateway_id}``). From the stack's ``gateway.api``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stack: str = Field(min_length=1)
    account_id: str
    # Any id Cloudflare accepts, `default` included: the outputs are written by the program after the stack file
    # was checked, and a stack may name the auto-created `default` gateway on purpose (`gateway.allowDefaultId`).
    # The refusal of an accidental `default` belongs where the id is chosen (StackConfig), not here.
    gateway_id: str = Field(min_length=1, max_length=64, pattern=GATEWAY_ID_PATTERN)
    api_base_url: str = DEFAULT_API_BASE_URL
    gateway_base_url: str = DEFAULT_GATEWAY_BASE_URL
    namespaces: dict[Namespace, str]
    worker_name: str = Field(min_length=1)
    data_plane_url: str | None = None
    data_plane_worker_name: str | None = None
    policies: Policies = Policies()
    gateway_api: GatewayApi = "legacy"

    @field_validator("stack")
    @classmethod
    def _check_stack(cls, value: str) -> str:
        if not _STACK.match(value):
            raise ValueError(f"{quote(value)} is not a stack name (1..100 letters, digits, '-', '_' or '.')")
        return value

    @field_validator("account_id")
    @classmethod
    def _check_account_id(cls, value: str) -> str:
        if not _HEX32.match(value):
            raise ValueError(f"account_id {quote(value)} is not 32 lowercase hex characters")
        return value

    @field_validator("worker_name", "data_plane_worker_name")
    @classmethod
    def _check_worker_name(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_worker_name(value):
            raise ValueError(
                f"{quote(value)} is not a Worker name (1..63 lowercase letters, digits, '_' and '-', not starting or "
                "ending with '-')"
            )
        return value

    @field_validator("namespaces")
    @classmethod
    def _check_namespaces(cls, value: dict[Namespace, str]) -> dict[Namespace, str]:
        missing = [n.value for n in Namespace if n not in value]
        if missing:
            raise ValueError(f"namespaces is missing {', '.join(missing)}; all six bindings are required")
        bad = [f"{n.value} = {quote(ns_id)}" for n, ns_id in value.items() if not _HEX32.match(ns_id)]
        if bad:
            raise ValueError(
                f"namespace ids are 32 lowercase hex characters, as Cloudflare makes them: {', '.join(bad)}"
            )
        return {n: value[n] for n in Namespace}

    @field_validator("api_base_url", "gateway_base_url", "data_plane_url")
    @classmethod
    def _check_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Tokens are sent to these URLs: see check_base_url. `trusted_hosts` comes from the caller (the
        # validation context), never from the outputs themselves, which may come from anywhere.
        if value is None:
            return None
        context = info.context if isinstance(info.context, dict) else {}
        trusted = tuple(context.get("trusted_hosts") or ())
        try:
            return check_base_url(value, role=info.field_name, trusted_hosts=trusted)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def model_copy(self, *, update: Any = None, deep: bool = False) -> Self:
        """A copy; with ``update``, validated again (a copy must not carry an untrusted URL past the checks)."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            checked = type(self).from_data(copied.model_dump(mode="json"), source="StackOutputs.model_copy")
            return cast(Self, checked)
        return copied

    def namespace_id(self, binding: Namespace | str) -> str:
        """Return the namespace id bound to ``binding``.

        Raises:
            ConfigError: ``binding`` is not one of the six binding names.
        """
        try:
            return self.namespaces[Namespace(binding)]
        except ValueError:
            valid = ", ".join(n.value for n in Namespace)
            raise ConfigError(f"unknown namespace binding {binding!r}; valid bindings: {valid}") from None

    @classmethod
    def from_data(cls, data: Any, *, source: str = "outputs", trusted_hosts: Iterable[str] = ()) -> StackOutputs:
        """Validate already-parsed JSON data.

        Args:
            data: The parsed outputs.
            source: Where they came from, for messages.
            trusted_hosts: Hosts trusted beyond the defaults, as in :data:`TRUSTED_HOSTS_ENV_VAR` (which is
                read too); see :func:`check_base_url`.

        Raises:
            ConfigError: the data is not a valid outputs object; the message names the field.
        """
        try:
            return cls.model_validate(data, context={"trusted_hosts": tuple(trusted_hosts)})
        except ValidationError as exc:
            raise ConfigError(f"{source} is not a valid dualcache StackOutputs: {_problems(exc)}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "outputs", trusted_hosts: Iterable[str] = ()) -> StackOutputs:
        """Parse and validate a JSON document (at most :data:`OUTPUTS_MAX_BYTES`, no duplicate keys).

        Raises:
            ConfigError: the text is too long, not JSON, or not a valid outputs object.
        """
        if len(text) > OUTPUTS_MAX_BYTES:
            raise ConfigError(f"{source} is {len(text):,} characters long; the limit is {OUTPUTS_MAX_BYTES:,}")
        return cls.from_data(parse_json(text, source=source), source=source, trusted_hosts=trusted_hosts)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, trusted_hosts: Iterable[str] = ()) -> StackOutputs:
        """Read what ``pulumi stack output dualcache --json`` printed into ``path``.

        Only a regular file of at most :data:`OUTPUTS_MAX_BYTES` is read (``/dev/zero`` or a FIFO fails at once).

        Raises:
            ConfigError: the file is missing, unreadable, too large, or not a valid outputs object.
        """
        p = Path(path)
        data = read_json_file(p, limit=OUTPUTS_MAX_BYTES, what="outputs file")
        return cls.from_data(data, source=str(p), trusted_hosts=trusted_hosts)

    @classmethod
    def from_env(cls, var: str = OUTPUTS_ENV_VAR, *, trusted_hosts: Iterable[str] = ()) -> StackOutputs:
        """Read the outputs named by the environment variable ``var`` (a path, or the JSON itself).

        Raises:
            ConfigError: the variable is unset or empty, or what it names is not valid outputs.
        """
        value = os.environ.get(var, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {var} is not set; set it to the path of an outputs file "
                "(written by `dualcache outputs`) or to the JSON itself"
            )
        if value.startswith("{"):
            return cls.from_json(value, source=f"${var}", trusted_hosts=trusted_hosts)
        return cls.load(value, trusted_hosts=trusted_hosts)

    def to_json(self) -> str:
        """Serialize as the stack output is serialized (stable key order, indented)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically.

        The text goes to a temporary file in the same folder, then replaces ``path`` in one step, so a
        service (or a script polling for ``dualcache dev``'s outputs file) never reads half a file.
        """
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_json(), encoding="utf-8")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _problems(exc: ValidationError) -> str:
    """The errors of ``exc``, one line: ``field: message`` each, values quoted short."""
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p)[:60] for p in error["loc"]) or "(root)"
        parts.append(f"{where}: {one_line(str(error['msg']).removeprefix('Value error, '))}")
    more = len(exc.errors()) - 10
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
