"""Cloudflare's rules for the names dualcache puts in URLs and configuration: pure checks, no dependencies.

Kept apart from the stack configuration (which needs pydantic and a YAML parser) so that the runtime's
outputs contract can check the same names without importing either.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "GATEWAY_APIS",
    "GATEWAY_ID_PATTERN",
    "GatewayApi",
    "WORKER_NAME_RE",
    "is_valid_gateway_id",
    "is_valid_worker_name",
]

# Script names: the API schema's pattern `^[a-z0-9_][a-z0-9-_]*$` (workers_script_name), and at most
# 63 characters, not ending in '-' (the Workers script naming conventions; a workers.dev DNS label).
WORKER_NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,62}$")
"""A Workers script name's characters and length (one not ending in ``-`` is valid: :func:`is_valid_worker_name`)."""
# Gateway ids: 1..64 characters of the API schema's pattern for `id` (aig-config
# create): lowercase letters, digits and '_', in groups joined by single '-' (no leading, trailing or double '-').
GATEWAY_ID_PATTERN = r"^[a-z0-9_]+(?:-[a-z0-9_]+)*$"
"""The pattern Cloudflare's API schema gives AI Gateway ids (with a length of 1..64)."""
_GATEWAY_ID_RE = re.compile(GATEWAY_ID_PATTERN)


def is_valid_gateway_id(value: str) -> bool:
    """Whether ``value`` is an id Cloudflare accepts for an AI Gateway (:data:`GATEWAY_ID_PATTERN`, 1..64)."""
    return 1 <= len(value) <= 64 and _GATEWAY_ID_RE.match(value) is not None


def is_valid_worker_name(value: str) -> bool:
    """Whether ``value`` is a Workers script name: 1..63 of ``a-z0-9_-``, not starting or ending with ``-``."""
    return isinstance(value, str) and WORKER_NAME_RE.match(value) is not None and not value.endswith("-")


GatewayApi = Literal["legacy", "rest"]
"""The gateway's URL shape the runtime uses: ``legacy`` (``gateway.ai.cloudflare.com/v1/{account}/{gateway}/...``)
or ``rest`` (``api.cloudflare.com/client/v4/accounts/{account}/ai/...`` with a ``cf-aig-gateway-id`` header)."""
GATEWAY_APIS: tuple[GatewayApi, ...] = ("legacy", "rest")
