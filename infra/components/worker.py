"""The API Worker (``cloudflare.WorkersScript``, ES module) with its bindings, and where it is reachable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare

from dualcache import Namespace
from dualcache._stackconfig import WorkerSettings
from infra.components.reach import declare_reach

__all__ = ["ApiWorker", "ApiWorkerArgs"]


@dataclass(frozen=True)
class ApiWorkerArgs:
    """Arguments of :class:`ApiWorker`.

    Attributes:
        account_id: The Cloudflare account id (also bound as ``CLOUDFLARE_ACCOUNT_ID``).
        script_name: The Worker's script name.
        settings: The validated worker settings (compatibility date, main module, route, custom domain).
        content: The ES module source uploaded as ``settings.main_module``.
        namespace_ids: The namespace id of each of the six bindings.
        gateway_id: The AI Gateway id, bound as ``AI_GATEWAY_SLUG``.
        openai_api_key: Bound as secret text ``OPENAI_API_KEY`` when given.
        gateway_token: Bound as secret text ``CF_AIG_TOKEN`` when given.
    """

    account_id: str
    script_name: str
    settings: WorkerSettings
    content: str
    namespace_ids: Mapping[Namespace, pulumi.Input[str]]
    gateway_id: pulumi.Input[str]
    openai_api_key: pulumi.Output[str] | None = None
    gateway_token: pulumi.Output[str] | None = None


def bindings(args: ApiWorkerArgs) -> list[cloudflare.WorkersScriptBindingArgs]:
    """The Worker's bindings: six KV namespaces, Workers AI as ``AI``, two plain-text vars, the set secrets.

    Secrets are bound as ``secret_text`` only when they are set, and their values stay Pulumi secrets.
    """
    result = [
        cloudflare.WorkersScriptBindingArgs(
            name=binding.value, type="kv_namespace", namespace_id=args.namespace_ids[binding]
        )
        for binding in Namespace
    ]
    result.append(cloudflare.WorkersScriptBindingArgs(name="AI", type="ai"))
    result.append(cloudflare.WorkersScriptBindingArgs(name="AI_GATEWAY_SLUG", type="plain_text", text=args.gateway_id))
    result.append(
        cloudflare.WorkersScriptBindingArgs(name="CLOUDFLARE_ACCOUNT_ID", type="plain_text", text=args.account_id)
    )
    for name, secret in (("OPENAI_API_KEY", args.openai_api_key), ("CF_AIG_TOKEN", args.gateway_token)):
        if secret is not None:
            result.append(
                cloudflare.WorkersScriptBindingArgs(name=name, type="secret_text", text=pulumi.Output.secret(secret))
            )
    return result


class ApiWorker(pulumi.ComponentResource):
    """The API Worker, plus an optional route, custom domain and ``workers.dev`` switch.

    Attributes:
        script: The ``cloudflare.WorkersScript`` resource.
        script_name: The script name, as the provider reports it.
        route: The ``cloudflare.WorkersRoute``, when ``worker.route`` is configured.
        custom_domain: The ``cloudflare.WorkersCustomDomain``, when ``worker.customDomain`` is configured.
        subdomain: The ``cloudflare.WorkersScriptSubdomain``, when ``worker.workersDev`` is set (true or false).
    """

    script: cloudflare.WorkersScript
    script_name: pulumi.Output[str]
    route: cloudflare.WorkersRoute | None
    custom_domain: cloudflare.WorkersCustomDomain | None
    subdomain: cloudflare.WorkersScriptSubdomain | None

    def __init__(self, name: str, args: ApiWorkerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dualcache:infra:ApiWorker", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        # main_module makes the upload an ES module; without it the code would go up as a service worker
        # and `export default` would fail (pulumi-cloudflare's WorkersScript).
        self.script = cloudflare.WorkersScript(
            f"{name}-script",
            account_id=args.account_id,
            script_name=args.script_name,
            main_module=s.main_module,
            content=args.content,
            compatibility_date=s.compatibility_date,
            bindings=bindings(args),
            opts=child,
        )
        self.script_name = self.script.script_name
        reach = declare_reach(
            name,
            account_id=args.account_id,
            script_name=self.script_name,
            workers_dev=s.workers_dev,
            route=s.route,
            custom_domain=s.custom_domain,
            opts=child,
        )
        self.subdomain, self.route, self.custom_domain = reach.subdomain, reach.route, reach.custom_domain
        self.register_outputs({"script_name": self.script_name})
