"""Which runtime and which call the current code runs in; what `mxcp.runtime` reads."""
from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import MxcpError

if TYPE_CHECKING:
    from .execution import Runtime
    from .records import EndpointCall, UserContext

current_runtime: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar("mxcp_runtime", default=None)
current_call: contextvars.ContextVar[EndpointCall | None] = contextvars.ContextVar("mxcp_call", default=None)


class CursorSlot:
    """Holds the cursor a call uses for all its statements (one transaction scope, one interrupt).

    A mutable slot rather than the cursor itself: tasks of an async endpoint (`asyncio.gather`) run in
    copies of the context, and must all find, and give back, the same cursor. It also holds whom the cursor
    runs for (`user`, None for the anonymous caller) and whether the identity functions are bound on it yet.
    """

    __slots__ = ("cursor", "identity", "identity_bound", "user")

    def __init__(self, user: UserContext | None = None) -> None:
        self.cursor: Any = None
        self.user = user
        # The database's IdentityFunctions (sql_identity.py), once the cursor is taken.
        self.identity: Any = None
        self.identity_bound = False

    def bind_identity(self, sql: str | None = None) -> None:
        """Bind the caller's identity on the cursor, once: when `sql` needs it, always when `sql` is None."""
        identity = self.identity
        if self.identity_bound or identity is None or (sql is not None and not identity.needed(sql)):
            return
        identity.bind(self.cursor, self.user)
        self.identity_bound = True

    def rebind_after(self, error: BaseException) -> bool:
        """An unbound cursor met an object using the identity functions that was made behind run_sql's back
        (through `db.connection`): from now on every cursor binds; this one binds now. False when that is
        not what `error` is about."""
        identity = self.identity
        if self.identity_bound or identity is None or not identity.missing(error):
            return False
        identity.everywhere = True
        self.bind_identity()
        return True


current_cursor: contextvars.ContextVar[CursorSlot | None] = contextvars.ContextVar("mxcp_cursor", default=None)


class OutsideRuntimeError(MxcpError):
    """The runtime API was used outside an endpoint call or lifecycle hook."""


def cursor(*, bind_identity: bool = False) -> Any:
    """The cursor of the current call or hook, taken from the pool on first use and returned when it ends.

    The identity functions are bound on it lazily, by `run_sql`; `bind_identity` binds them now (for SQL that
    runs on the raw cursor, which nothing inspects).
    """
    slot = current_cursor.get()
    if slot is None or slot.cursor is None:
        runtime = require_runtime("db")
        call = current_call.get()
        if slot is None:
            slot = CursorSlot(call.user if call is not None else None)
            current_cursor.set(slot)
        found = slot.cursor = runtime.database.acquire(user=slot.user)
        slot.identity = runtime.database.identity
        if call is not None:
            call.on_interrupt(found.interrupt)
    if bind_identity:
        slot.bind_identity()
    return slot.cursor


def call_slot(cursor: Any) -> CursorSlot | None:
    """The current call's slot when `cursor` is its cursor (a cursor from elsewhere: None)."""
    slot = current_cursor.get()
    return slot if slot is not None and slot.cursor is cursor else None


def require_runtime(what: str) -> Runtime:
    runtime = current_runtime.get()
    if runtime is None:
        raise OutsideRuntimeError(
            f"mxcp.runtime.{what} can only be used inside an endpoint call or an @on_init/@on_shutdown hook "
            "(run the endpoint with `mxcp run` or `mxcp serve`)"
        )
    return runtime


@contextmanager
def bound(runtime: Runtime, call: EndpointCall | None = None, user: UserContext | None = None) -> Iterator[None]:
    """Run as `call` (or a lifecycle hook, or `mxcp query`) of `runtime`; SQL sees `user`, else the call's user."""
    slot = CursorSlot(user if user is not None else (call.user if call is not None else None))
    tokens = (current_runtime.set(runtime), current_call.set(call), current_cursor.set(slot))
    healthy = False
    try:
        yield
        healthy = True
    finally:
        try:
            cursor = slot.cursor
            if cursor is not None:
                # An engine's commit may fail here (PostgreSQL's deferred constraints): the call fails with it.
                runtime.database.release(cursor, healthy and not (call is not None and call.cancelled))
        finally:
            current_cursor.reset(tokens[2])
            current_call.reset(tokens[1])
            current_runtime.reset(tokens[0])
