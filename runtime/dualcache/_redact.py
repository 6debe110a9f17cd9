"""Keeping credentials out of error objects, frame locals and messages.

Why: error trackers (Sentry, Rollbar, ``traceback.TracebackException(..., capture_locals=True)``) record
the ``repr`` of every frame's locals along the traceback *and* walk ``__cause__``/``__context__``. An
``httpx`` exception carries the ``httpx.Request`` (``exc.request.headers`` holds the bearer token), its
traceback runs through httpx/httpcore frames, and a plain ``dict`` of headers in one of our frames shows
the token in its ``repr``. So:

* :class:`SecretHeaders` is the one type request headers with credentials are built as: a ``dict`` (httpx
  takes it as is) whose ``repr`` masks the credential headers. It is built by :func:`auth_headers`, a
  small synchronous function, so the raw token is never a local of a frame that awaits (a frame that can
  be on a traceback). What measured as not enough: building the header dict inline (the ``dict`` is a
  local of the awaiting frame, ``repr`` shows the token), and ``raise ... from exc`` (the cause holds
  the request, and its traceback the httpx frames' locals).
* :func:`scrubbed` turns a foreign exception into a bare copy of the same type (``isinstance`` checks
  and :func:`~dualcache._transport.is_admission_timeout` still work) with a redacted message and no
  request, traceback, cause or context: it is what ``raise ... from`` gets at the mapping boundary.
* :func:`redact_url` / :func:`redact_text` mask the userinfo of URLs (``https://user:pw@host``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

__all__ = [
    "REDACTED",
    "SENSITIVE_HEADERS",
    "URL_REDACTED",
    "SecretHeaders",
    "auth_headers",
    "redact_text",
    "redact_url",
    "scrubbed",
]

REDACTED = "[redacted]"
"""What a masked value is shown as."""
URL_REDACTED = "***"
"""What stands for a URL's userinfo once redacted."""

SENSITIVE_HEADERS = frozenset({"authorization", "cf-aig-authorization", "proxy-authorization", "x-api-key"})
"""Header names (lower case) whose values are credentials."""

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s]*)@")
# Text that is not a URL with a scheme (``localhost:pw@host``): whatever precedes the last ``@`` before a path.
_BARE_USERINFO = re.compile(r"^(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*:)?)[^/?#\s]*@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")


class SecretHeaders(dict[str, str]):
    """Request headers whose ``repr``/``str`` mask the credential headers (:data:`SENSITIVE_HEADERS`).

    A plain ``dict`` for httpx; only its rendering differs, so a frame local holding it shows
    ``'Authorization': '[redacted]'`` in a traceback with locals.
    """

    def __repr__(self) -> str:
        shown = {k: (REDACTED if k.lower() in SENSITIVE_HEADERS else v) for k, v in self.items()}
        return f"SecretHeaders({shown!r})"

    __str__ = __repr__

    def __or__(self, other: Any) -> SecretHeaders:  # type: ignore[override]
        merged = SecretHeaders(self)
        merged.update(other)
        return merged

    def __ior__(self, other: Any) -> SecretHeaders:  # type: ignore[override]
        self.update(other)
        return self

    def __copy__(self) -> SecretHeaders:
        return SecretHeaders(self)


def auth_headers(
    token: SecretStr | None, *, header: str = "Authorization", extra: Mapping[str, str] | None = None
) -> SecretHeaders:
    """Return ``extra`` plus ``header: Bearer <token>`` (nothing when ``token`` is empty or ``None``).

    The token is read from its :class:`~pydantic.SecretStr` here and nowhere else, in a frame that ends
    before the request is sent.
    """
    headers = SecretHeaders(extra or {})
    if token is not None and token.get_secret_value():
        headers[header] = "Bearer " + token.get_secret_value()
    return headers


def redact_url(url: str) -> str:
    """Return ``url`` with every userinfo (``user:password@``) replaced by ``***@``.

    The one redaction of URLs for messages, reprs and logs. It works on free text holding URLs too, and on
    text that is not a valid URL (``localhost:pw@host``, a scheme that is not http).
    """
    text = str(url)
    redacted = _USERINFO.sub(lambda m: f"{m.group('scheme')}{URL_REDACTED}@", text)
    if redacted == text and "://" not in text:
        redacted = _BARE_USERINFO.sub(lambda m: f"{m.group('head')}{URL_REDACTED}@", text, count=1)
    return redacted


def redact_text(text: str) -> str:
    """Return ``text`` with URL userinfo and ``Bearer``/``Basic`` credentials masked."""
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", redact_url(text))


def scrubbed(exc: BaseException) -> BaseException:
    """Return a bare copy of ``exc`` fit to be a ``__cause__``: same type, redacted message, nothing else.

    The copy has no ``request`` (httpx's holds the headers), no traceback (whose frames' locals hold the
    request and headers), and no cause or context. When the type cannot be built from a message alone,
    a ``RuntimeError`` naming the original type stands in.
    """
    message = redact_text(str(exc))
    try:
        copy = type(exc)(message)
    except Exception:
        copy = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {message}")
    copy.__cause__ = None
    copy.__context__ = None
    copy.__suppress_context__ = True
    copy.__traceback__ = None
    return copy
