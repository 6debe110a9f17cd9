"""dualcache: dual-layer caching of AI calls on Cloudflare (Workers KV in front of AI Gateway).

The public surface is exactly ``__all__``; everything else lives in private modules.
"""

from __future__ import annotations

from dualcache._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    BadResponseError,
    ConfigError,
    DualCacheError,
    InvalidInputError,
    RateLimitedError,
    UsageError,
)
from dualcache._outputs import StackOutputs
from dualcache._policy import GatewayMode, Namespace, Operation, OperationPolicy, Policies
from dualcache._stackconfig import StackConfig, load_stack_config

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendUnavailableError",
    "BadResponseError",
    "ConfigError",
    "DualCacheError",
    "GatewayMode",
    "InvalidInputError",
    "Namespace",
    "Operation",
    "OperationPolicy",
    "Policies",
    "RateLimitedError",
    "StackConfig",
    "StackOutputs",
    "UsageError",
    "__version__",
    "load_stack_config",
]
