"""Worker threads for calls: a bounded pool, a bounded queue, and a way to stop a call stuck in Python code.

A thread cannot be killed. A call that outlives its timeout keeps its thread until it returns (Python code in
it is interrupted at its next instruction, see ThreadInterrupter) but gives up its place, and the number of such
calls is bounded; beyond the queue limit new calls are answered "server busy" at once, never left waiting.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .errors import ExecutionError

log = logging.getLogger(__name__)


class ServerBusy(ExecutionError):
    """Every worker is taken and the queue is full: the client should retry later."""


class QueueTimeout(ExecutionError):
    """The call's timeout passed while it waited for a worker: it never started."""


class CallInterrupted(BaseException):
    """Raised inside a worker thread whose call was interrupted (timed out, cancelled, or stuck at a reload)."""


@attrs.define
class _Job:
    running: bool = False
    done: bool = False
    dropped: bool = False  # its caller left before it started: never start it
    abandoned: bool = False  # its caller left while it ran


class WorkerPool:
    """At most `workers` calls run at once; at most `queue_limit` more wait for a worker.

    Threads are anyio's (reused, started on demand). A call whose caller gave up while it ran (timeout,
    cancellation) is abandoned: its place goes to the next call at once, and it is counted until it returns.
    Once more than `workers` abandoned calls are still running, new calls are answered busy: calls that never
    return cannot grow the process without bound.
    """

    def __init__(self, workers: int, queue_limit: int) -> None:
        import anyio

        self.workers = workers
        self.queue_limit = queue_limit
        self._limiter = anyio.CapacityLimiter(workers)
        self._lock = threading.Lock()
        self._in_flight = 0  # admitted and not finished, abandoned ones excluded
        self._abandoned = 0
        self._closed = False

    async def run(self, func: Callable[..., Any], *args: Any, deadline: float | None = None) -> Any:
        """Run `func(*args)` in a worker thread (with the caller's context variables).

        A call still waiting at `deadline` (time.monotonic) never starts, even when the event loop is too busy
        to cancel it in time.
        """
        import anyio

        self._admit()
        job = _Job()

        def work() -> Any:
            with self._lock:
                if job.dropped:
                    raise QueueTimeout("the call's caller left before it started")
                job.running = True
            try:
                if deadline is not None and time.monotonic() > deadline:
                    raise QueueTimeout("the call timed out waiting for a free worker")
                return func(*args)
            finally:
                with self._lock:
                    job.running, job.done = False, True
                    if job.abandoned:
                        self._abandoned -= 1
                    else:
                        self._in_flight -= 1

        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=self._limiter)
        except BaseException:
            with self._lock:
                if job.running:
                    # Still running in its thread: it keeps the thread, not the place (anyio released it).
                    job.abandoned = True
                    self._in_flight -= 1
                    self._abandoned += 1
                elif not job.done and not job.dropped:
                    job.dropped = True
                    self._in_flight -= 1
            if job.abandoned:
                log.warning("a call is still running after its caller gave up; the next call takes its place")
            raise

    def _admit(self) -> None:
        with self._lock:
            if self._closed:
                raise ExecutionError("the server is stopping")
            if self._abandoned > self.workers:
                raise ServerBusy(
                    f"server busy: {self._abandoned} calls are still running past their timeout; try again shortly"
                )
            if self._in_flight >= self.workers + self.queue_limit:
                raise ServerBusy(
                    f"server busy: {self.workers} calls running and {self.queue_limit} waiting; try again shortly"
                )
            self._in_flight += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True


class ThreadInterrupter:
    """Raises CallInterrupted inside the thread running a call's user code, only while that code runs (armed).

    The exception arrives at the thread's next Python instruction: a loop in user code stops; a blocking C call
    (a sleep, a socket read) stops when it returns. It comes `grace` seconds after `fire`, so work that stops
    by itself when interrupted (a DuckDB query) ends with its own error first. Never armed around the core's
    own bookkeeping (locks, audit records), where an exception from nowhere could leave things half-done.
    """

    def __init__(self, grace: float = 0.5) -> None:
        self._ident: int | None = None
        self._lock = threading.Lock()
        self._grace = grace
        self._timer: threading.Timer | None = None
        self._raised = False

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """While the block runs (in this thread), a fired interrupt lands in it."""
        with self._lock:
            if self._timer is not None and not self._timer.is_alive():
                raise CallInterrupted  # fired while nothing was armed
            self._ident = threading.get_ident()
        try:
            yield
        finally:
            with self._lock:
                if self._raised:
                    # Raised too late to land (the block was ending): clear it so it cannot hit later code.
                    _set_async_exc(threading.get_ident(), None)
                    self._raised = False
                self._ident = None

    def fire(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self._grace, self._raise_now)
            self._timer.daemon = True
            self._timer.start()

    def _raise_now(self) -> None:
        with self._lock:
            if self._ident is None or self._raised:
                return
            self._raised = True
            _set_async_exc(self._ident, CallInterrupted)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()


def _set_async_exc(ident: int, exc_type: type[BaseException] | None) -> None:
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type is not None else ctypes.c_void_p(0)
    )
    if changed > 1:  # cannot happen for a live thread id; undo rather than hit several threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.c_void_p(0))
        log.error("interrupting thread %s hit %d threads; undone", ident, changed)
