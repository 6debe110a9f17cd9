"""The outputs contract: the one thing passed from infra (a Pulumi stack output) to the runtime."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dualcache._exceptions import ConfigError
from dualcache._policy import Namespace, Policies
from dualcache._stackconfig import GATEWAY_ID_PATTERN

__all__ = [
    "DEFAULT_API_BASE_URL",
    "DEFAULT_GATEWAY_BASE_URL",
    "OUTPUTS_ENV_VAR",
    "OUTPUT_NAME",
    "StackOutputs",
]

DEFAULT_API_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_GATEWAY_BASE_URL = "https://gateway.ai.cloudflare.com/v1"
OUTPUT_NAME = "dualcache"
"""Name of the structured stack output infra exports."""
OUTPUTS_ENV_VAR = "DUALCACHE_OUTPUTS"
"""Environment variable holding a path to an outputs file, or the JSON itself."""

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


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
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stack: str = Field(min_length=1)
    account_id: str
    gateway_id: str = Field(min_length=1, max_length=64, pattern=GATEWAY_ID_PATTERN)
    api_base_url: str = DEFAULT_API_BASE_URL
    gateway_base_url: str = DEFAULT_GATEWAY_BASE_URL
    namespaces: dict[Namespace, str]
    worker_name: str = Field(min_length=1)
    data_plane_url: str | None = None
    data_plane_worker_name: str | None = None
    policies: Policies = Policies()

    @field_validator("account_id")
    @classmethod
    def _check_account_id(cls, value: str) -> str:
        if not _HEX32.match(value):
            raise ValueError(f"account_id {value!r} is not 32 lowercase hex characters")
        return value

    @field_validator("api_base_url", "gateway_base_url", "data_plane_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("namespaces")
    @classmethod
    def _check_namespaces(cls, value: dict[Namespace, str]) -> dict[Namespace, str]:
        missing = [n.value for n in Namespace if n not in value]
        if missing:
            raise ValueError(f"namespaces is missing {', '.join(missing)}; all six bindings are required")
        empty = [n.value for n, ns_id in value.items() if not ns_id]
        if empty:
            raise ValueError(f"namespaces has an empty id for {', '.join(empty)}")
        return {n: value[n] for n in Namespace}

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
    def from_data(cls, data: Any, *, source: str = "outputs") -> StackOutputs:
        """Validate already-parsed JSON data.

        Raises:
            ConfigError: the data is not a valid outputs object; the message names the field.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise ConfigError(f"{source} is not a valid dualcache StackOutputs: {problems}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "outputs") -> StackOutputs:
        """Parse and validate a JSON document.

        Raises:
            ConfigError: the text is not JSON or not a valid outputs object.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not JSON: {exc}") from None
        return cls.from_data(data, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StackOutputs:
        """Read what ``pulumi stack output dualcache --json`` printed into ``path``.

        Raises:
            ConfigError: the file is missing, unreadable, or not a valid outputs object.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read outputs file {str(p)!r}: {exc.strerror or exc}") from None
        return cls.from_json(text, source=str(p))

    @classmethod
    def from_env(cls, var: str = OUTPUTS_ENV_VAR) -> StackOutputs:
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
            return cls.from_json(value, source=f"${var}")
        return cls.load(value)

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
