"""One ComponentResource per concern: the AI Gateway, the KV namespaces, the API Worker, the data-plane Worker."""

from __future__ import annotations

from infra.components.dataplane import DataPlaneWorker, DataPlaneWorkerArgs
from infra.components.gateway import Gateway, GatewayArgs
from infra.components.kv import KvNamespaces, KvNamespacesArgs
from infra.components.worker import ApiWorker, ApiWorkerArgs

__all__ = [
    "ApiWorker",
    "ApiWorkerArgs",
    "DataPlaneWorker",
    "DataPlaneWorkerArgs",
    "Gateway",
    "GatewayArgs",
    "KvNamespaces",
    "KvNamespacesArgs",
]
