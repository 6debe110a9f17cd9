"""The only reader of ``pulumi.Config``: the stack's config, read once, validated, frozen.

Every config key the Pulumi runtime holds is checked first: only the project's namespace
(``jobmatch-ai:*``), the provider's known ``cloudflare:`` keys and the engine's ``pulumi:`` keys are allowed,
so a misspelt namespace or key fails loudly instead of being ignored. Values of the project's namespace are
gathered from the runtime, including keys this program does not know, and validated with
:meth:`dualcache.StackConfig.from_values` — the same model the emulator and ``dualcache wrangler`` use.
Secrets are read with ``get_secret`` and stay :class:`pulumi.Output` secrets; only whether they are set
enters the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel, ConfigDict

from dualcache import ConfigError, StackConfig
from dualcache._stackconfig import (
    DATA_PLANE_TOKEN_KEY,
    PLACEHOLDER_ACCOUNT_ID,
    PLACEHOLDER_NAMESPACE_ID,
    PROVIDER_CREDENTIAL_KEYS,
    SECRET_KEYS,
    check_config_keys,
    secret_placement_error,
)
from dualcache._untrusted import quote

__all__ = ["InfraConfig", "read_config"]

OBJECT_KEYS = frozenset({"gateway", "namespaces", "worker", "dataPlane", "policies"})
"""Keys whose values are structured (YAML mappings, which Pulumi hands over as JSON)."""
MIN_DATA_PLANE_TOKEN_LENGTH = 32
"""Shortest ``dataPlaneToken`` a real deployment accepts (``openssl rand -hex 32`` gives 64 characters)."""
OFFLINE_DATA_PLANE_TOKEN = "offline-plan-stand-in-for-the-data-plane-token"
"""The token the offline plan binds (as a secret, shown ``[secret]``) when the stack sets none."""


class InfraConfig(BaseModel):
    """What the program needs: the validated stack settings and the secret values as Pulumi secrets.

    Attributes:
        stack: The validated settings of the stack.
        project_dir: The directory holding ``Pulumi.yaml`` (bundles are resolved against it).
        openai_api_key: ``<project>:openaiApiKey`` as a secret output, when set.
        gateway_token: ``<project>:gatewayToken`` (sent as ``cf-aig-authorization``) as a secret output, when set.
        data_plane_token: ``<project>:dataPlaneToken`` (the data-plane Worker's ``DUALCACHE_TOKEN``) as a secret
            output. Always present: when the stack sets none, the offline plan gets a secret stand-in (a real
            deployment refuses to run instead).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    stack: StackConfig
    project_dir: Path
    openai_api_key: pulumi.Output[str] | None = None
    gateway_token: pulumi.Output[str] | None = None
    data_plane_token: pulumi.Output[str]

    def bundle_path(self) -> Path | None:
        """The app bundle named by ``worker.bundle``, resolved against the project directory; None = none named."""
        if self.stack.worker.bundle is None:
            return None
        return (self.project_dir / self.stack.worker.bundle).resolve()


def _project_values(project: str) -> dict[str, str]:
    """Every raw config value of ``project``'s namespace, keyed without the ``<project>:`` prefix.

    ``pulumi.Config`` can only look keys up, so the full set comes from the runtime: the language host
    passes all config in ``PULUMI_CONFIG`` and installs it with ``set_all_config`` (tests and the offline
    plan call ``set_all_config`` directly). Both are read; explicitly set values win.
    """
    merged: dict[str, Any] = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    prefix = f"{project}:"
    return {key.removeprefix(prefix): str(value) for key, value in merged.items() if key.startswith(prefix)}


def _all_keys() -> set[str]:
    """Every config key of every namespace the runtime holds (see :func:`_project_values`)."""
    return set(runtime_config.get_config_env()) | set(runtime_config.CONFIG.get())


def _is_secret(full_key: str) -> bool:
    return pulumi.runtime.is_config_secret(full_key) or full_key in runtime_config.get_config_secret_keys_env()


def read_config(project_dir: Path, *, deploying: bool = False) -> InfraConfig:
    """Read and validate the current stack's config.

    Args:
        project_dir: The directory holding ``Pulumi.yaml``.
        deploying: True when the Pulumi CLI runs the program against Cloudflare (``preview``, ``up``): the
            committed placeholder account and namespace ids are then refused. The offline plan leaves it False.

    Raises:
        ConfigError: an unknown namespace or key at any depth (with the closest valid one), a value out of
            bounds or of the wrong type (a boolean where a number is expected, a date that is not in the
            calendar), a secret set in plain text (ours or the
            provider's ``cloudflare:apiToken``), a plain key set as a secret, a bundle file that does not
            exist; when ``deploying``, also a placeholder account or namespace id, a missing or short
            ``dataPlaneToken`` and a data plane on workers.dev without ``workersDevSubdomain``. The message
            names ``<project>:<key>``, the bad value (never a secret's) and what is allowed.
    """
    project = pulumi.get_project()
    stack = pulumi.get_stack()
    source = f"stack {stack!r}"
    raw = _project_values(project)
    config = pulumi.Config(project)

    present = _all_keys()
    # A namespace nothing reads (`jobmatch-ia:gateway`) or a key its namespace lacks (`cloudflare:apiTokn`)
    # would be ignored without a word; refused first, before any value is looked at.
    check_config_keys(present, project=project, file=str(project_dir / f"Pulumi.{stack}.yaml"), source=source)
    for full_key in sorted(PROVIDER_CREDENTIAL_KEYS & present):
        problem = secret_placement_error(
            full_key, is_secret=_is_secret(full_key), project=project, stack=stack, source=source
        )
        if problem is not None:
            raise ConfigError(problem)

    values: dict[str, Any] = {}
    secrets_set: set[str] = set()
    for key, text in sorted(raw.items()):
        problem = secret_placement_error(
            f"{project}:{key}", is_secret=_is_secret(f"{project}:{key}"), project=project, stack=stack, source=source
        )
        if problem is not None:
            raise ConfigError(problem)
        if key in SECRET_KEYS:
            secrets_set.add(key)
        elif key in OBJECT_KEYS:
            values[key] = _parse_object(project, key, text, source)
        else:  # accountId, and unknown keys, which from_values rejects with the list of valid keys
            values[key] = config.get(key)

    settings = StackConfig.from_values(
        values, project=project, stack=stack, secrets_set=frozenset(secrets_set), source=source
    )
    if deploying and settings.account_id == PLACEHOLDER_ACCOUNT_ID:
        raise ConfigError(
            f"{source}: {project}:accountId is still the placeholder {PLACEHOLDER_ACCOUNT_ID!r} of the committed stack "
            f"file; set your Cloudflare account id (dashboard → Workers & Pages → Account ID) with "
            f"`pulumi config set accountId <32-hex id> -s {stack}`"
        )
    if deploying:
        for binding, namespace_id in settings.namespaces.adopt.items():
            if namespace_id == PLACEHOLDER_NAMESPACE_ID:
                raise ConfigError(
                    f"{source}: {project}:namespaces.adopt.{binding.value} is still the placeholder "
                    f"{PLACEHOLDER_NAMESPACE_ID!r}; set the id of your existing namespace (dashboard → Storage & "
                    "Databases → KV, or `wrangler kv namespace list`), or drop the entry to create a new namespace"
                )
    if deploying:
        _check_data_plane_for_deploy(settings, raw, project=project, stack=stack, source=source)
    if DATA_PLANE_TOKEN_KEY in secrets_set:
        data_plane_token = config.require_secret(DATA_PLANE_TOKEN_KEY)
    else:  # only offline: a deployment was refused above
        data_plane_token = pulumi.Output.secret(OFFLINE_DATA_PLANE_TOKEN)
    result = InfraConfig(
        stack=settings,
        project_dir=project_dir,
        openai_api_key=config.get_secret("openaiApiKey") if "openaiApiKey" in secrets_set else None,
        gateway_token=config.get_secret("gatewayToken") if "gatewayToken" in secrets_set else None,
        data_plane_token=data_plane_token,
    )
    bundle = result.bundle_path()
    if bundle is not None and not bundle.is_file():
        raise ConfigError(
            f"{source}: {project}:worker.bundle = {settings.worker.bundle!r}: no such file {str(bundle)!r}; "
            "name the app's built ES module bundle relative to the project directory, or drop the key to deploy "
            "the bundled health Worker"
        )
    return result


def _check_data_plane_for_deploy(
    settings: StackConfig, raw: dict[str, str], *, project: str, stack: str, source: str
) -> None:
    """What a real deployment needs of the data plane: a strong enough token and a known URL.

    ``raw`` holds the decrypted token in a real run (the language host passes secrets decrypted); only its
    length is looked at, and no message contains it.
    """
    key = f"{project}:{DATA_PLANE_TOKEN_KEY}"
    set_token = f'`pulumi config set --secret {key} "$(openssl rand -hex 32)" -s {stack}`'
    token = raw.get(DATA_PLANE_TOKEN_KEY)
    if token is None:
        raise ConfigError(
            f"{source}: {key} is not set; the data-plane Worker needs it as its DUALCACHE_TOKEN (services send it "
            f"as DUALCACHE_DATA_PLANE_TOKEN). Set it with {set_token}"
        )
    if len(token) < MIN_DATA_PLANE_TOKEN_LENGTH:
        raise ConfigError(
            f"{source}: {key} is shorter than {MIN_DATA_PLANE_TOKEN_LENGTH} characters; it guards every cache "
            f"read and write, so set a random one with {set_token}"
        )
    if settings.data_plane_url is None:
        raise ConfigError(
            f"{source}: the data-plane Worker {settings.data_plane_name!r} is served on workers.dev, but "
            f"{project}:workersDevSubdomain is not set, so its URL (the data_plane_url output) is unknown; set your "
            "account's subdomain (the `<subdomain>` of `<subdomain>.workers.dev`, shown under Workers & Pages → "
            f"Overview) with `pulumi config set workersDevSubdomain <subdomain> -s {stack}`, or give it a "
            f"{project}:dataPlane.customDomain or dataPlane.route"
        )


def _parse_object(project: str, key: str, text: str, source: str) -> Any:
    # Pulumi hands structured values over as JSON text; a plain string here means the YAML held a scalar.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{source}: {project}:{key} = {quote(text)}: expected a mapping") from None
