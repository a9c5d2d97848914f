"""Which runtime and which call the current code runs in; what `mxcp.runtime` reads."""
from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import MxcpError

if TYPE_CHECKING:
    from .execution import Runtime
    from .records import EndpointCall

current_runtime: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar("mxcp_runtime", default=None)
current_call: contextvars.ContextVar[EndpointCall | None] = contextvars.ContextVar("mxcp_call", default=None)


class CursorSlot:
    """Holds the cursor a call uses for all its statements (one transaction scope, one interrupt).

    A mutable slot rather than the cursor itself: tasks of an async endpoint (`asyncio.gather`) run in
    copies of the context, and must all find, and give back, the same cursor.
    """

    __slots__ = ("cursor",)

    def __init__(self) -> None:
        self.cursor: Any = None


current_cursor: contextvars.ContextVar[CursorSlot | None] = contextvars.ContextVar("mxcp_cursor", default=None)


class OutsideRuntimeError(MxcpError):
    """The runtime API was used outside an endpoint call or lifecycle hook."""


def cursor() -> Any:
    """The cursor of the current call or hook, taken from the pool on first use and returned when it ends."""
    slot = current_cursor.get()
    if slot is not None and slot.cursor is not None:
        return slot.cursor
    runtime = require_runtime("db")
    if slot is None:
        slot = CursorSlot()
        current_cursor.set(slot)
    found = slot.cursor = runtime.database.acquire()
    call = current_call.get()
    if call is not None:
        call.on_interrupt(found.interrupt)
    return found


def require_runtime(what: str) -> Runtime:
    runtime = current_runtime.get()
    if runtime is None:
        raise OutsideRuntimeError(
            f"mxcp.runtime.{what} can only be used inside an endpoint call or an @on_init/@on_shutdown hook "
            "(run the endpoint with `mxcp run` or `mxcp serve`)"
        )
    return runtime


@contextmanager
def bound(runtime: Runtime, call: EndpointCall | None = None) -> Iterator[None]:
    slot = CursorSlot()
    tokens = (current_runtime.set(runtime), current_call.set(call), current_cursor.set(slot))
    healthy = False
    try:
        yield
        healthy = True
    finally:
        cursor = slot.cursor
        if cursor is not None:
            runtime.database.release(cursor, healthy and not (call is not None and call.cancelled))
        current_cursor.reset(tokens[2])
        current_call.reset(tokens[1])
        current_runtime.reset(tokens[0])
