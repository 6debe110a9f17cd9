"""Where a Worker is reachable: workers.dev, a zone route and a custom domain, shared by both Workers."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare

from dualcache._stackconfig import CustomDomainSettings, RouteSettings

__all__ = ["Reach", "declare_reach"]


@dataclass(frozen=True)
class Reach:
    """The reachability resources of one Worker (``None`` where the stack declares none)."""

    subdomain: cloudflare.WorkersScriptSubdomain | None
    route: cloudflare.WorkersRoute | None
    custom_domain: cloudflare.WorkersCustomDomain | None


def declare_reach(
    name: str,
    *,
    account_id: str,
    script_name: pulumi.Output[str],
    workers_dev: bool | None,
    route: RouteSettings | None,
    custom_domain: CustomDomainSettings | None,
    opts: pulumi.ResourceOptions,
) -> Reach:
    """Declare ``{name}-subdomain`` (when ``workers_dev`` is not ``None``), ``{name}-route`` and
    ``{name}-domain`` for the script ``script_name``, as children given by ``opts``."""
    subdomain = None
    if workers_dev is not None:
        subdomain = cloudflare.WorkersScriptSubdomain(
            f"{name}-subdomain", account_id=account_id, script_name=script_name, enabled=workers_dev, opts=opts
        )
    zone_route = None
    if route is not None:
        zone_route = cloudflare.WorkersRoute(
            f"{name}-route", zone_id=route.zone_id, pattern=route.pattern, script=script_name, opts=opts
        )
    domain = None
    if custom_domain is not None:
        domain = cloudflare.WorkersCustomDomain(
            f"{name}-domain",
            account_id=account_id,
            hostname=custom_domain.hostname,
            service=script_name,
            zone_id=custom_domain.zone_id,
            opts=opts,
        )
    return Reach(subdomain, zone_route, domain)
