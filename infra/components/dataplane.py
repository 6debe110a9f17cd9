"""dualcache's data-plane Worker: ``infra/worker/dataplane.js`` over the six KV bindings, and where it answers.

The runtime's KV path in production (infra/worker/DATAPLANE.md): services call this Worker, which reads
and writes KV through its bindings, instead of the Cloudflare REST API and its account-wide rate limit.
The API Worker (:mod:`infra.components.worker`) stays the user's own app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare

from dualcache import Namespace
from dualcache._stackconfig import DataPlaneSettings
from infra.components.reach import declare_reach

__all__ = ["DATA_PLANE_MAIN_MODULE", "DataPlaneWorker", "DataPlaneWorkerArgs", "data_plane_bindings"]

DATA_PLANE_MAIN_MODULE = "dataplane.js"
"""The module name the Worker's code is uploaded as (ES module syntax)."""
TOKEN_BINDING = "DUALCACHE_TOKEN"
"""The secret binding the Worker compares the bearer token with."""


@dataclass(frozen=True)
class DataPlaneWorkerArgs:
    """Arguments of :class:`DataPlaneWorker`.

    Attributes:
        account_id: The Cloudflare account id (also bound as ``CLOUDFLARE_ACCOUNT_ID``, for ``/health``).
        script_name: The Worker's script name (``<project>-dualcache-<stack>`` unless configured).
        settings: The validated data-plane settings (compatibility date, route, custom domain, workers.dev).
        content: The ES module source (``infra/worker/dataplane.js``).
        namespace_ids: The namespace id of each of the six bindings.
        gateway_id: The AI Gateway id, bound as ``AI_GATEWAY_SLUG`` (the ``/health`` gateway probe).
        token: The bearer token, bound as secret text ``DUALCACHE_TOKEN``; it stays a Pulumi secret.
    """

    account_id: str
    script_name: str
    settings: DataPlaneSettings
    content: str
    namespace_ids: Mapping[Namespace, pulumi.Input[str]]
    gateway_id: pulumi.Input[str]
    token: pulumi.Output[str]


def data_plane_bindings(args: DataPlaneWorkerArgs) -> list[cloudflare.WorkersScriptBindingArgs]:
    """The Worker's bindings: the six namespaces, ``DUALCACHE_TOKEN``, what ``GET /health`` reads, and the
    Workers Rate Limiting bindings of ``dataPlane.rateLimits`` (none unless the stack declares some).

    ``/health`` is the health Worker's (infra/worker/health.js): Workers AI as ``AI`` and the plain-text
    ``AI_GATEWAY_SLUG`` and ``CLOUDFLARE_ACCOUNT_ID``.
    """
    result = [
        cloudflare.WorkersScriptBindingArgs(
            name=binding.value, type="kv_namespace", namespace_id=args.namespace_ids[binding]
        )
        for binding in Namespace
    ]
    token: pulumi.Output[str] = pulumi.Output.secret(args.token)
    result.append(cloudflare.WorkersScriptBindingArgs(name=TOKEN_BINDING, type="secret_text", text=token))
    result.append(cloudflare.WorkersScriptBindingArgs(name="AI", type="ai"))
    result.append(cloudflare.WorkersScriptBindingArgs(name="AI_GATEWAY_SLUG", type="plain_text", text=args.gateway_id))
    result.append(
        cloudflare.WorkersScriptBindingArgs(name="CLOUDFLARE_ACCOUNT_ID", type="plain_text", text=args.account_id)
    )
    # Workers Rate Limiting bindings (`POST /ratelimit/{NAME}`), when the stack's dataPlane.rateLimits declares any:
    # pulumi-cloudflare's binding type "ratelimit" with namespace_id and simple {limit, period} (period 10 or 60).
    for name, limiter in args.settings.rate_limits.items():
        result.append(
            cloudflare.WorkersScriptBindingArgs(
                name=name,
                type="ratelimit",
                namespace_id=limiter.namespace_id,
                simple=cloudflare.WorkersScriptBindingSimpleArgs(limit=limiter.limit, period=limiter.period),
            )
        )
    return result


class DataPlaneWorker(pulumi.ComponentResource):
    """The data-plane Worker, its ``workers.dev`` switch, and an optional route and custom domain.

    The ``workers.dev`` switch (``cloudflare.WorkersScriptSubdomain``) is always declared, so whether the
    Worker answers there does not depend on what the account or the API does by default for new scripts.

    Attributes:
        script: The ``cloudflare.WorkersScript`` resource.
        script_name: The script name, as the provider reports it.
        subdomain: The ``cloudflare.WorkersScriptSubdomain`` (enabled per ``dataPlane.workersDev``).
        route: The ``cloudflare.WorkersRoute``, when ``dataPlane.route`` is configured.
        custom_domain: The ``cloudflare.WorkersCustomDomain``, when ``dataPlane.customDomain`` is configured.
    """

    script: cloudflare.WorkersScript
    script_name: pulumi.Output[str]
    subdomain: cloudflare.WorkersScriptSubdomain
    route: cloudflare.WorkersRoute | None
    custom_domain: cloudflare.WorkersCustomDomain | None

    def __init__(self, name: str, args: DataPlaneWorkerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dualcache:infra:DataPlaneWorker", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        # main_module makes the upload an ES module (pulumi-cloudflare's WorkersScript), as for the API Worker.
        self.script = cloudflare.WorkersScript(
            f"{name}-script",
            account_id=args.account_id,
            script_name=args.script_name,
            main_module=DATA_PLANE_MAIN_MODULE,
            content=args.content,
            compatibility_date=s.compatibility_date,
            bindings=data_plane_bindings(args),
            opts=child,
        )
        self.script_name = self.script.script_name
        reach = declare_reach(
            name,
            account_id=args.account_id,
            script_name=self.script_name,
            workers_dev=s.on_workers_dev,
            route=s.route,
            custom_domain=s.custom_domain,
            opts=child,
        )
        assert reach.subdomain is not None  # always declared for the data plane: workers_dev is a bool here
        self.subdomain, self.route, self.custom_domain = reach.subdomain, reach.route, reach.custom_domain
        self.register_outputs({"script_name": self.script_name})
