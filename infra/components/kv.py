"""The six Workers KV namespaces, titled ``<project>-<stack>-<BINDING>``; any of them may adopt an existing one."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare

from dualcache import Namespace, StackConfig

__all__ = ["KvNamespaces", "KvNamespacesArgs"]


@dataclass(frozen=True)
class KvNamespacesArgs:
    """Arguments of :class:`KvNamespaces`.

    Attributes:
        stack: The validated stack settings (account, titles, protection, namespaces to adopt).
    """

    stack: StackConfig


def resource_name(component: str, binding: Namespace) -> str:
    """The logical name of a binding's namespace, for example ``kv-job-analysis-cache``.

    Changing it makes Pulumi replace the namespace (protected namespaces refuse), so it is fixed here.
    """
    return f"{component}-{binding.value.lower().replace('_', '-')}"


class KvNamespaces(pulumi.ComponentResource):
    """The six namespaces of :class:`dualcache.Namespace`.

    With ``namespaces.protect`` (prod) every namespace is ``protect=True`` and ``retain_on_delete=True``: a
    mistaken ``pulumi destroy`` fails, and removing one from the program only drops it from the state, so no
    data is lost. A namespace listed under ``namespaces.adopt`` is imported by id (``import_``,
    ``<account_id>/<namespace_id>``, as pulumi-cloudflare's WorkersKvNamespace imports) instead of created.

    Attributes:
        namespaces: The ``cloudflare.WorkersKvNamespace`` of each binding.
        ids: The namespace id of each binding.
    """

    namespaces: dict[Namespace, cloudflare.WorkersKvNamespace]
    ids: dict[Namespace, pulumi.Output[str]]

    def __init__(self, name: str, args: KvNamespacesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dualcache:infra:KvNamespaces", name, None, opts)
        cfg = args.stack
        protect = cfg.namespaces.protect
        self.namespaces = {}
        for binding in Namespace:
            adopted = cfg.namespaces.adopt.get(binding)
            self.namespaces[binding] = cloudflare.WorkersKvNamespace(
                resource_name(name, binding),
                account_id=cfg.account_id,
                title=cfg.namespace_title(binding),
                opts=pulumi.ResourceOptions(
                    parent=self,
                    protect=protect,
                    retain_on_delete=protect,
                    import_=f"{cfg.account_id}/{adopted}" if adopted else None,
                    # An adopted namespace keeps whatever title it has: an import whose inputs differ from the
                    # real resource fails, and a title is only a label (bindings use the id).
                    ignore_changes=["title"] if adopted else None,
                ),
            )
        self.ids = {binding: ns.id for binding, ns in self.namespaces.items()}
        self.register_outputs({binding.value: ns_id for binding, ns_id in self.ids.items()})
