"""One ComponentResource per concern: the AI Gateway, the KV namespaces, the API Worker."""

from __future__ import annotations

from infra.components.gateway import Gateway, GatewayArgs
from infra.components.kv import KvNamespaces, KvNamespacesArgs
from infra.components.worker import ApiWorker, ApiWorkerArgs

__all__ = ["ApiWorker", "ApiWorkerArgs", "Gateway", "GatewayArgs", "KvNamespaces", "KvNamespacesArgs"]
