"""The exception tree of dualcache.

Every error the library raises on purpose is a :class:`DualCacheError`::

    DualCacheError
    ├── ConfigError (ValueError)            bad stack config, outputs file or constructor argument
    ├── InvalidInputError (ValueError)      bad call input, raised before any I/O
    ├── BackendError                        a backend (KV, gateway, provider) failed
    │   ├── BackendUnavailableError         connection refused, timeout, 5xx after retries
    │   ├── RateLimitedError                429 after retries; ``retry_after`` in seconds when known
    │   ├── AuthenticationError             401/403: a missing or wrong token
    │   ├── BadResponseError                an answer that does not have the documented shape
    ├── UserLimitExceededError              a user is over a per-user limit; raised before any I/O
    └── UsageError (RuntimeError)           programmer mistakes (use after ``aclose()``, ...)

Foreign exceptions (httpx, pydantic) are mapped at one boundary with ``raise ... from exc``.
A missing KV key is ``None``, never an exception.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendUnavailableError",
    "BadResponseError",
    "ConfigError",
    "DualCacheError",
    "InvalidInputError",
    "RateLimitedError",
    "SkippedError",
    "UsageError",
    "UserLimitExceededError",
]


class DualCacheError(Exception):
    """Root of every error dualcache raises on purpose."""


class ConfigError(DualCacheError, ValueError):
    """Configuration is invalid: stack config, an outputs file, or a constructor argument.

    The message names the offending key and value and says what would be valid.
    """


class InvalidInputError(DualCacheError, ValueError):
    """A call's input is invalid (empty text, oversized key, unknown operation, ...).

    Always raised before any request is sent.
    """


class BackendError(DualCacheError):
    """A backend (KV, AI Gateway or AI provider) failed.

    Attributes:
        backend: Which backend failed, for example ``"kv"``, ``"gateway"`` or ``"workers-ai"``.
        status_code: The HTTP status when there was a response, else ``None``.
    """

    def __init__(self, message: str, *, backend: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.status_code = status_code


class BackendUnavailableError(BackendError):
    """The backend could not be reached, timed out, or kept answering 5xx."""


class RateLimitedError(BackendError):
    """The backend answered 429 (after any retries).

    Attributes:
        retry_after: Seconds the backend asked us to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        backend: str,
        status_code: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, backend=backend, status_code=status_code)
        self.retry_after = retry_after


class AuthenticationError(BackendError):
    """The backend refused our credentials (401/403)."""


class BadResponseError(BackendError):
    """The backend answered, but not in the documented shape."""


class SkippedError(BackendError):
    """The request was not sent: its layer is blocked for now.

    Raised when a rate-limit block is in force (after a 429, until ``retry-after`` ends), the request
    budget is spent, or a circuit breaker is open. Nothing reached the backend, so callers count it
    as *skipped*, not as an error.

    Attributes:
        reason: Why it was skipped: ``"rate_limited"``, ``"budget"`` or ``"circuit_open"``.
        retry_after: Seconds until the layer may be tried again, when known.
    """

    def __init__(self, message: str, *, backend: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(message, backend=backend)
        self.reason = reason
        self.retry_after = retry_after


class UserLimitExceededError(DualCacheError):
    """A user is over one of an operation's per-user limits (``DualCache(user_limits=...)``).

    Raised before any I/O for the call, and counted in ``limited``. The message names the user by a hash
    of the id (``user#`` and 12 hex digits), never the id itself.

    Attributes:
        operation: The operation's name.
        limit: Which limit: ``"requests"`` (requests per window) or ``"dollars"`` (dollars per window).
        retry_after: Seconds until the call would be admitted; ``math.inf`` when one call alone needs more
            than the whole limit (a batch larger than the request limit, a price above the dollar limit).
        user: The hashed label of the user (see above).
    """

    def __init__(self, message: str, *, operation: str, limit: str, retry_after: float, user: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.limit = limit
        self.retry_after = retry_after
        self.user = user


class UsageError(DualCacheError, RuntimeError):
    """The library was used wrongly (for example a call after ``aclose()``)."""
