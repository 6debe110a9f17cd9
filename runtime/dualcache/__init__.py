"""dualcache: dual-layer caching of AI calls on Cloudflare (Workers KV in front of AI Gateway).

The public surface is exactly ``__all__``; everything else lives in private modules.
"""

from __future__ import annotations

from dualcache._answers import AnswerSchemas, JobAnalysisAnswer, SpamVerdictAnswer
from dualcache._breaker import BreakerPolicy, BreakerState, CircuitBreaker
from dualcache._budget import RequestBudget
from dualcache._budgets import LayerLimits, PoolLimits, Timeouts
from dualcache._cache import DualCache, KVBackendFactory, Models
from dualcache._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    BadResponseError,
    ConfigError,
    DualCacheError,
    InvalidInputError,
    RateLimitedError,
    SkippedError,
    UsageError,
)
from dualcache._gateway import RetryPolicy
from dualcache._kv import (
    CloudflareKVBackend,
    DataPlaneKVBackend,
    KVBackend,
    KVBatchRead,
    KVEntry,
    KVKey,
    KVPage,
    KVStore,
    MemoryKVBackend,
    SQLiteKVBackend,
)
from dualcache._outputs import StackOutputs
from dualcache._policy import GatewayMode, Namespace, Operation, OperationPolicy, Policies, Scope
from dualcache._stackconfig import StackConfig, load_stack_config
from dualcache._stats import Outcome, PriceTable, Stats
from dualcache._writebehind import WriteBehindPolicy

__version__ = "0.1.0"

__all__ = [
    "AnswerSchemas",
    "AuthenticationError",
    "BackendError",
    "BackendUnavailableError",
    "BadResponseError",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "CloudflareKVBackend",
    "ConfigError",
    "DataPlaneKVBackend",
    "DualCache",
    "DualCacheError",
    "GatewayMode",
    "InvalidInputError",
    "JobAnalysisAnswer",
    "KVBackend",
    "KVBackendFactory",
    "KVBatchRead",
    "KVEntry",
    "KVKey",
    "KVPage",
    "KVStore",
    "LayerLimits",
    "MemoryKVBackend",
    "Models",
    "Namespace",
    "Operation",
    "OperationPolicy",
    "Outcome",
    "Policies",
    "PoolLimits",
    "PriceTable",
    "RateLimitedError",
    "RequestBudget",
    "RetryPolicy",
    "SQLiteKVBackend",
    "Scope",
    "SkippedError",
    "SpamVerdictAnswer",
    "StackConfig",
    "StackOutputs",
    "Stats",
    "Timeouts",
    "UsageError",
    "WriteBehindPolicy",
    "__version__",
    "load_stack_config",
]
