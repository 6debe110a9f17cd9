"""Per-layer HTTP plumbing: one pool per layer, an admission gate in front of it, bounded waits.

Why: cancelling a request that httpcore has queued for a pooled connection can leave the
connection it was just given stuck in ``CONNECTING`` forever; after a few bursts every connection of the
pool is stuck and the whole ``DualCache`` wedges. So here:

* each layer has its own ``httpx.AsyncClient`` whose pool has more connections than the gate in front
  of it admits (:class:`AdmissionTransport`): an admitted request always finds a connection at once,
  and waiting happens only at the gate, which is safe to give up;
* a caller past its budget *abandons* its request (:func:`run_bounded`) instead of cancelling it: the
  request ends on httpx's own per-phase timeouts (connect, read, write, pool), still holding its place
  at the gate so the in-flight bound stays true. A request that was not admitted yet is cancelled (it
  never touched the pool); one that was is cancelled only ``grace`` seconds past its budget, for
  transports that ignore httpx timeouts (``httpx.MockTransport``), long after the pool hand-off.

The defaults are tabled in :mod:`dualcache._budgets`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from dualcache._budgets import LayerLimits

__all__ = [
    "Abandoner",
    "GATE_SHARE",
    "Admission",
    "AdmissionTimeout",
    "AdmissionTransport",
    "BudgetExceeded",
    "HeldPlace",
    "admission_of",
    "build_client",
    "current_ticket",
    "held_place",
    "is_admission_timeout",
    "run_bounded",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Ticket:
    """What the gate knows of the bounded call it serves: its deadline, and whether (and when) it got in.

    ``budget`` is the call's own time budget (from admission when it queues). ``on_admit``, when set, is called
    once at admission with the loop time, so the caller can start the request's own budget from that moment (a
    call that queues, see :func:`run_bounded`'s ``queue``).
    """

    deadline: float
    budget: float | None = None
    admitted: bool = False
    admitted_at: float = 0.0
    on_admit: Callable[[float], None] | None = None

    def admit(self, now: float) -> None:
        """Mark the call admitted at loop time ``now`` (the first admission counts; later ones are retries)."""
        if self.admitted:
            return
        self.admitted = True
        self.admitted_at = now
        on_admit, self.on_admit = self.on_admit, None
        if on_admit is not None:
            on_admit(now)


_TICKET: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar("dualcache_ticket", default=None)


def current_ticket() -> _Ticket | None:
    """The ticket of the bounded call running in this context (:func:`run_bounded`), or ``None``."""
    return _TICKET.get()


class HeldPlace:
    """A place at a gate taken ahead of its request (:meth:`Admission.acquire`), handed to the one request
    sent in the context where :func:`held_place` set it: the gate lets that request through without a second
    wait. Whoever took the place releases it when no request took it (``taken`` still false).
    """

    __slots__ = ("admission", "taken")

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.taken = False


_HELD: contextvars.ContextVar[HeldPlace | None] = contextvars.ContextVar("dualcache_held_place", default=None)


def held_place(place: HeldPlace | None) -> contextvars.Context:
    """A copy of the current context with no ticket and ``place`` as its held place (for a task that sends on
    behalf of several bounded calls, whose own tickets it must not inherit)."""
    context = contextvars.copy_context()
    context.run(_TICKET.set, None)
    context.run(_HELD.set, place)
    return context


class AdmissionTimeout(httpx.PoolTimeout):
    """No place at a layer's gate within the caller's deadline: nothing was sent."""


class BudgetExceeded(TimeoutError):
    """A bounded call got no answer within its budget; its request was abandoned, not cancelled."""


def is_admission_timeout(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a wait for a connection that ran out:
    an :class:`AdmissionTimeout`, or httpx's own ``PoolTimeout`` (nothing was sent in either case)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, httpx.PoolTimeout):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class Admission:
    """A bounded number of requests in flight on one layer; the others wait with a deadline.

    Args:
        layer: ``kv``, ``gateway`` or ``provider`` (for messages).
        limit: Requests in flight at most.

    Attributes:
        in_flight: Requests admitted and not finished.
        peak: The highest ``in_flight`` seen.
        admitted: Requests admitted so far.
        rejected: Requests that gave up waiting (their deadline passed at the gate).
    """

    def __init__(self, layer: str, limit: int) -> None:
        self.layer = layer
        self.limit = limit
        self._sem = asyncio.Semaphore(limit)
        self.in_flight = 0
        self.peak = 0
        self.admitted = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"Admission({self.layer!r}, limit={self.limit}, in_flight={self.in_flight})"

    @property
    def free(self) -> bool:
        """Whether a request would be admitted at once."""
        return not self._sem.locked()

    async def acquire(self, timeout: float | None, request: httpx.Request | None = None) -> None:
        """Wait for a place, at most ``timeout`` seconds (``None``: no limit).

        Raises:
            AdmissionTimeout: no place in time.
        """
        if self._sem.locked() or timeout is not None:
            try:
                if timeout is None:
                    await self._sem.acquire()
                else:
                    async with asyncio.timeout(max(timeout, 0.0)):
                        await self._sem.acquire()
            except TimeoutError:
                self.rejected += 1
                raise AdmissionTimeout(
                    f"{self.layer}: no place among {self.limit} requests in flight within {timeout or 0:.3g}s",
                    request=request,
                ) from None
        else:
            await self._sem.acquire()
        self.in_flight += 1
        self.admitted += 1
        self.peak = max(self.peak, self.in_flight)

    def release(self) -> None:
        """Give a place back."""
        self.in_flight -= 1
        self._sem.release()


class _ReleasingStream(httpx.AsyncByteStream):
    """The response body; closing it gives the gate's place back (once)."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class AdmissionTransport(httpx.AsyncBaseTransport):
    """Wraps a transport with an :class:`Admission` gate.

    The wait at the gate is bounded by the request's ``pool`` timeout and by the deadline of the
    bounded call it belongs to (:func:`run_bounded`), whichever is sooner. The place is held until the
    response is closed.

    Args:
        inner: The transport to send through, or a function building it on first use (so that building
            a client costs no SSL context until it is needed).
        admission: The gate.
        owns_inner: Whether :meth:`aclose` closes ``inner`` (not for a transport the caller injected).
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | Callable[[], httpx.AsyncBaseTransport],
        admission: Admission,
        *,
        owns_inner: bool = True,
    ) -> None:
        self._inner: httpx.AsyncBaseTransport | None = inner if isinstance(inner, httpx.AsyncBaseTransport) else None
        self._factory = None if isinstance(inner, httpx.AsyncBaseTransport) else inner
        self.admission = admission
        self._owns = owns_inner

    @property
    def inner(self) -> httpx.AsyncBaseTransport | None:
        """The wrapped transport (``None`` until first use when built lazily)."""
        return self._inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Admit (or take the place held for this request, see :class:`HeldPlace`), send, and hand the place
        to the response body."""
        held = _HELD.get()
        if held is not None and held.admission is self.admission and not held.taken:
            held.taken = True
        else:
            timeouts = request.extensions.get("timeout") or {}
            wait: float | None = timeouts.get("pool")
            ticket = _TICKET.get()
            if ticket is not None:
                left = ticket.deadline - asyncio.get_running_loop().time()
                wait = left if wait is None else min(wait, left)
            await self.admission.acquire(wait, request)
            if ticket is not None:
                ticket.admit(asyncio.get_running_loop().time())
        try:
            if self._inner is None:
                assert self._factory is not None
                self._inner = self._factory()
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self.admission.release()
            raise
        if response.is_closed:
            # Its body is already in memory (an httpx.MockTransport answer, for one): nothing holds the pool.
            self.admission.release()
            return response
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(stream, self.admission.release)
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport when this owns it."""
        if self._owns and self._inner is not None:
            await self._inner.aclose()


def build_client(
    layer: str,
    limits: LayerLimits,
    timeout: httpx.Timeout,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """Return the ``httpx.AsyncClient`` of one layer: its own sized pool behind an admission gate.

    Args:
        layer: ``kv``, ``gateway`` or ``provider``.
        limits: Pool size and admission bound.
        timeout: The client's default per-phase timeouts.
        transport: A transport to send through instead of a pool (tests pass ``httpx.MockTransport``); it
            is gated the same way and left open for its owner to close.
    """
    gate = Admission(layer, limits.in_flight)
    inner: httpx.AsyncBaseTransport | Callable[[], httpx.AsyncBaseTransport]
    if transport is not None:
        inner = transport
    else:
        http_limits = limits.httpx_limits()

        def inner() -> httpx.AsyncBaseTransport:
            return httpx.AsyncHTTPTransport(limits=http_limits)

    return httpx.AsyncClient(
        transport=AdmissionTransport(inner, gate, owns_inner=transport is None),
        timeout=timeout,
        limits=limits.httpx_limits(),
    )


def admission_of(client: httpx.AsyncClient) -> Admission | None:
    """The gate of a client made by :func:`build_client` (``None`` for any other client)."""
    transport = getattr(client, "_transport", None)
    return transport.admission if isinstance(transport, AdmissionTransport) else None


class Abandoner:
    """Holds abandoned requests until they end on their own, and cancels the stragglers.

    Args:
        grace: Seconds past its budget an admitted, abandoned request may still run.
    """

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self._tasks: dict[asyncio.Future[Any], asyncio.TimerHandle | None] = {}
        self.abandoned = 0
        self.cancelled = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def abandon(self, task: asyncio.Future[Any], ticket: _Ticket) -> None:
        """Leave ``task`` to finish alone (cancelled at once when it never reached the transport)."""
        self.abandoned += 1
        if not ticket.admitted:
            # Waiting at the gate (or not started): it never touched the pool, so cancelling is safe.
            task.cancel()
            self.cancelled += 1
            handle = None
        else:
            handle = asyncio.get_running_loop().call_later(self.grace, self._straggler, task)
        self._tasks[task] = handle
        task.add_done_callback(self._done)

    def _straggler(self, task: asyncio.Future[Any]) -> None:
        if not task.done():
            self.cancelled += 1
            logger.debug("an abandoned request outlived its grace of %.3gs; cancelled", self.grace)
            task.cancel()

    def _done(self, task: asyncio.Future[Any]) -> None:
        handle = self._tasks.pop(task, None)
        if handle is not None:
            handle.cancel()
        if not task.cancelled():
            task.exception()  # retrieved: nobody awaits an abandoned request

    async def aclose(self) -> None:
        """Cancel what is still running (the clients are closing anyway) and wait for it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


GATE_SHARE = 0.5
"""The share of a call's budget it may spend waiting at a gate: an admitted request keeps at least the rest,
so under overload the excess is shed at the gate (a fast miss, nothing sent) rather than admitted too
late to finish, which would load the target with requests nobody waits for any more."""


async def run_bounded(
    coro: Coroutine[Any, Any, T], budget: float, abandoner: Abandoner, *, queue: float | None = None
) -> T:
    """Await ``coro`` at most ``budget`` seconds; past it, abandon it and raise :class:`BudgetExceeded`.

    The coroutine runs in its own task with a deadline the admission gates see. Without ``queue`` that is
    ``GATE_SHARE`` of the budget, and the whole call, gate wait included, gets ``budget``. With ``queue``, the
    call may wait up to ``queue`` seconds at the gate (a queue with a deadline: under a burst, callers wait
    their turn instead of timing out), and ``budget`` counts from its admission. A caller that is cancelled
    abandons the request the same way, so a cancelled caller never cancels a pooled request.

    Raises:
        BudgetExceeded: no answer within ``budget`` (of admission, when ``queue`` is given).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    # One waiter woken by the task's end or by the deadline timer (moved to admission + budget when the call
    # queues): one wake-up per call, where waiting on the task and on an admission future took two.
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    ticket = _Ticket(deadline=started + (budget * GATE_SHARE if queue is None else queue), budget=budget)
    timer = [loop.call_at(started + budget if queue is None else started + queue + budget, wake)]
    if queue is not None:

        def admitted(now: float) -> None:
            # Admitted: the request itself gets its budget from now on.
            if not waiter.done():
                timer[0].cancel()
                timer[0] = loop.call_at(now + budget, wake)

        ticket.on_admit = admitted
    context = contextvars.copy_context()
    context.run(_TICKET.set, ticket)
    task: asyncio.Task[T] = loop.create_task(_waking(coro, wake), context=context)
    try:
        await waiter
    except asyncio.CancelledError:
        timer[0].cancel()
        ticket.on_admit = None
        abandoner.abandon(task, ticket)
        raise
    timer[0].cancel()
    ticket.on_admit = None
    if not task.done():
        abandoner.abandon(task, ticket)
        raise BudgetExceeded(f"no answer within {budget:.3g}s")
    return task.result()


async def _waking(coro: Coroutine[Any, Any, T], wake: Callable[[], None]) -> T:
    """``coro``, waking its bounded caller in the very step it ends (a done callback would take one more turn
    of the loop), so the task is done by the time the caller looks."""
    try:
        return await coro
    finally:
        wake()
