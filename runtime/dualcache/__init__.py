"""dualcache: dual-layer caching of AI calls on Cloudflare (Workers KV in front of AI Gateway).

The public surface is exactly ``__all__``; everything else lives in private modules.

``import dualcache`` is cheap: the exceptions are defined at once, and every other public name is imported
from its module on first use (a module ``__getattr__``, PEP 562), so a process pays for httpx, pydantic and
the rest only when it touches them, and a CLI command or an ``except dualcache.DualCacheError`` never does.
``from dualcache import DualCache`` works as always and imports what ``DualCache`` needs.
"""

from __future__ import annotations

import importlib

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
    UserLimitExceededError,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers treat the name alike)
if TYPE_CHECKING:  # what type checkers see; at run time these come from __getattr__ below
    from typing import Any

    from dualcache._answers import AnswerSchemas, JobAnalysisAnswer, SpamVerdictAnswer
    from dualcache._breaker import BreakerPolicy, BreakerState, CircuitBreaker
    from dualcache._budget import RequestBudget
    from dualcache._budgets import LayerLimits, PoolLimits, Timeouts
    from dualcache._cache import DualCache, KVBackendFactory, Models
    from dualcache._gateway import RetryPolicy, UpstreamResult
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
    from dualcache._limits import UserLimiter, UserLimits
    from dualcache._metrics import PrometheusCollector, register_metrics
    from dualcache._outputs import StackOutputs
    from dualcache._policy import GatewayMode, Namespace, Operation, OperationPolicy, Policies, Scope
    from dualcache._pricing import Prices, TokenPrices, Usage
    from dualcache._stackconfig import StackConfig, load_stack_config
    from dualcache._stats import LatencyHistogram, Outcome, PriceTable, Stats
    from dualcache._writebehind import WriteBehindPolicy

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "AnswerSchemas": "dualcache._answers",
    "JobAnalysisAnswer": "dualcache._answers",
    "SpamVerdictAnswer": "dualcache._answers",
    "BreakerPolicy": "dualcache._breaker",
    "BreakerState": "dualcache._breaker",
    "CircuitBreaker": "dualcache._breaker",
    "RequestBudget": "dualcache._budget",
    "LayerLimits": "dualcache._budgets",
    "PoolLimits": "dualcache._budgets",
    "Timeouts": "dualcache._budgets",
    "DualCache": "dualcache._cache",
    "KVBackendFactory": "dualcache._cache",
    "Models": "dualcache._cache",
    "RetryPolicy": "dualcache._gateway",
    "UpstreamResult": "dualcache._gateway",
    "CloudflareKVBackend": "dualcache._kv",
    "DataPlaneKVBackend": "dualcache._kv",
    "KVBackend": "dualcache._kv",
    "KVBatchRead": "dualcache._kv",
    "KVEntry": "dualcache._kv",
    "KVKey": "dualcache._kv",
    "KVPage": "dualcache._kv",
    "KVStore": "dualcache._kv",
    "MemoryKVBackend": "dualcache._kv",
    "SQLiteKVBackend": "dualcache._kv",
    "PrometheusCollector": "dualcache._metrics",
    "register_metrics": "dualcache._metrics",
    "UserLimiter": "dualcache._limits",
    "UserLimits": "dualcache._limits",
    "StackOutputs": "dualcache._outputs",
    "GatewayMode": "dualcache._policy",
    "Namespace": "dualcache._policy",
    "Operation": "dualcache._policy",
    "OperationPolicy": "dualcache._policy",
    "Policies": "dualcache._policy",
    "Scope": "dualcache._policy",
    "Prices": "dualcache._pricing",
    "TokenPrices": "dualcache._pricing",
    "Usage": "dualcache._pricing",
    "StackConfig": "dualcache._stackconfig",
    "load_stack_config": "dualcache._stackconfig",
    "LatencyHistogram": "dualcache._stats",
    "Outcome": "dualcache._stats",
    "PriceTable": "dualcache._stats",
    "Stats": "dualcache._stats",
    "WriteBehindPolicy": "dualcache._writebehind",
}
"""Public name -> the private module defining it, imported on first access."""


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt name stays an error there (not Any)

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'dualcache' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later accesses are plain attribute lookups
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_LAZY))


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
    "LatencyHistogram",
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
    "PrometheusCollector",
    "Prices",
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
    "TokenPrices",
    "UpstreamResult",
    "Usage",
    "UsageError",
    "UserLimitExceededError",
    "UserLimiter",
    "UserLimits",
    "WriteBehindPolicy",
    "__version__",
    "load_stack_config",
    "register_metrics",
]
