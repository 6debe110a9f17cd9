"""The program: read config, declare the components, export the ``dualcache`` outputs contract."""

from __future__ import annotations

from pathlib import Path

import pulumi

from dualcache import Namespace, StackOutputs
from dualcache._outputs import OUTPUT_NAME
from infra.components import (
    ApiWorker,
    ApiWorkerArgs,
    DataPlaneWorker,
    DataPlaneWorkerArgs,
    Gateway,
    GatewayArgs,
    KvNamespaces,
    KvNamespacesArgs,
)
from infra.config import InfraConfig, read_config

__all__ = ["DATA_PLANE_WORKER", "HEALTH_WORKER", "PROJECT_DIR", "data_plane_source", "main", "worker_source"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
"""The directory holding ``Pulumi.yaml`` when the program runs from this checkout."""
HEALTH_WORKER = Path(__file__).resolve().parent / "worker" / "health.js"
"""The bundled health Worker, deployed when no app bundle is configured."""
DATA_PLANE_WORKER = Path(__file__).resolve().parent / "worker" / "dataplane.js"
"""dualcache's data-plane Worker (the KV API of infra/worker/DATAPLANE.md), deployed in every stack."""


def worker_source(cfg: InfraConfig) -> str:
    """The Worker's ES module source: the configured bundle, else the bundled health Worker."""
    bundle = cfg.bundle_path()
    return (bundle or HEALTH_WORKER).read_text(encoding="utf-8")


def data_plane_source() -> str:
    """The data-plane Worker's ES module: health.js, a newline, then dataplane.js (see the end of health.js).

    dataplane.js reuses health.js's names and replaces its router, so the two files make one module; this
    is what ``infra/worker/dev.mjs`` runs in workerd for the tests, byte for byte.
    """
    return HEALTH_WORKER.read_text(encoding="utf-8") + "\n" + DATA_PLANE_WORKER.read_text(encoding="utf-8")


def main(project_dir: Path | None = None, *, deploying: bool = False) -> None:
    """Declare the stack's resources and export the ``dualcache`` output.

    Args:
        project_dir: The directory holding ``Pulumi.yaml`` and the stack files; default: this checkout.
        deploying: True when run by the Pulumi CLI (see :func:`infra.config.read_config`); the offline plan
            leaves it False.

    Raises:
        ConfigError: the stack's config is invalid (see :func:`infra.config.read_config`).
    """
    cfg = read_config(project_dir or PROJECT_DIR, deploying=deploying)
    stack = cfg.stack

    gateway = Gateway(
        "ai", GatewayArgs(account_id=stack.account_id, gateway_id=stack.gateway_id, settings=stack.gateway)
    )
    kv = KvNamespaces("kv", KvNamespacesArgs(stack=stack))
    worker = ApiWorker(
        "api",
        ApiWorkerArgs(
            account_id=stack.account_id,
            script_name=stack.worker_name,
            settings=stack.worker,
            content=worker_source(cfg),
            namespace_ids=kv.ids,
            gateway_id=gateway.gateway_id,
            openai_api_key=cfg.openai_api_key,
            gateway_token=cfg.gateway_token,
        ),
    )

    data_plane = DataPlaneWorker(
        "dataplane",
        DataPlaneWorkerArgs(
            account_id=stack.account_id,
            script_name=stack.data_plane_name,
            settings=stack.data_plane,
            content=data_plane_source(),
            namespace_ids=kv.ids,
            gateway_id=gateway.gateway_id,
            token=cfg.data_plane_token,
        ),
    )

    bindings = list(Namespace)

    def contract(args: list[str]) -> dict[str, object]:
        gateway_id, worker_name, data_plane_name, *ids = args
        outputs = StackOutputs(
            stack=stack.stack,
            account_id=stack.account_id,
            gateway_id=gateway_id,
            namespaces=dict(zip(bindings, ids, strict=True)),
            worker_name=worker_name,
            # From config, not from a resource (pulumi-cloudflare has no lookup of the account's workers.dev
            # subdomain); None when the data plane is on workers.dev and `workersDevSubdomain` is not set.
            data_plane_url=stack.data_plane_url,
            data_plane_worker_name=data_plane_name,
            policies=stack.policies,
            gateway_api=stack.gateway.api,
        )
        return outputs.model_dump(mode="json")

    # Built only from non-secret values, so the output is never a secret and never holds the data-plane
    # token (tests check both).
    pulumi.export(
        OUTPUT_NAME,
        pulumi.Output.all(
            gateway.gateway_id, worker.script_name, data_plane.script_name, *(kv.ids[b] for b in bindings)
        ).apply(contract),
    )
