"""The stack's AI Gateway (``cloudflare.AiGateway``), every setting from config."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare

from dualcache._stackconfig import GatewaySettings

__all__ = ["Gateway", "GatewayArgs"]


@dataclass(frozen=True)
class GatewayArgs:
    """Arguments of :class:`Gateway`.

    Attributes:
        account_id: The Cloudflare account id.
        gateway_id: The gateway id (its slug in ``gateway.ai.cloudflare.com`` URLs).
        settings: The validated gateway settings of the stack.
    """

    account_id: str
    gateway_id: str
    settings: GatewaySettings


class Gateway(pulumi.ComponentResource):
    """One AI Gateway.

    Attributes:
        gateway: The ``cloudflare.AiGateway`` resource.
        gateway_id: The gateway id, as the provider reports it.
    """

    gateway: cloudflare.AiGateway
    gateway_id: pulumi.Output[str]

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("dualcache:infra:Gateway", name, None, opts)
        s = args.settings
        limit = s.rate_limiting
        self.gateway = cloudflare.AiGateway(
            f"{name}-gateway",
            account_id=args.account_id,
            ai_gateway_id=args.gateway_id,
            cache_ttl=s.cache_ttl,
            cache_invalidate_on_update=s.cache_invalidate_on_update,
            collect_logs=s.collect_logs,
            authentication=s.authentication,
            # 0 and 0 is "no limit" (the gateway management API accepts integers >= 0).
            rate_limiting_limit=limit.limit,
            rate_limiting_interval=limit.interval,
            rate_limiting_technique=limit.technique,
            log_management=s.log_management,
            log_management_strategy=s.log_management_strategy,
            # The gateway's retry defaults, declared so they are not dashboard state. dualcache's runtime
            # overrides them per request (cf-aig-max-attempts etc., see dualcache._gateway.plan_gateway_retries);
            # they apply to every other caller (pulumi-cloudflare >= 6.15: retry_max_attempts 1..5,
            # retry_delay in ms, retry_backoff constant|linear|exponential).
            retry_max_attempts=s.retry.max_attempts,
            retry_delay=s.retry.delay,
            retry_backoff=s.retry.backoff,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.gateway_id = self.gateway.ai_gateway_id
        self.register_outputs({"gateway_id": self.gateway_id})
