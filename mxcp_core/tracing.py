"""Spans for plugins that do not import OpenTelemetry: a no-op until a telemetry plugin installs a backend.

    from mxcp_core import tracing

    with tracing.span("mxcp.policy", {"mxcp.policy.stage": "input"}) as span:
        ...
        span.set_attribute("mxcp.policy.decision", "allow")

With nothing installed (telemetry off, the default) `span` is one attribute check returning a shared no-op, and
nothing here imports OpenTelemetry. The builtin `telemetry` plugin installs a backend in `on_init` and removes
it in `on_shutdown`; its backend records a failure as its exception type and its first line, masked (secrets,
sensitive values, argument values). Attribute values are the caller's responsibility: never put argument values,
secrets or SQL text in them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Backend(Protocol):
    def span(self, name: str, attributes: Mapping[str, Any] | None) -> Any:
        """A context manager opening a span nested in the current one; it gives the span."""


class _NoSpan:
    """What `span` gives while nothing is installed: accepts everything, records nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def is_recording(self) -> bool:
        return False

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None


NO_SPAN = _NoSpan()
_backend: Backend | None = None
_middleware: tuple[Any, ...] = ()


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A context manager giving a span named `name` (nested in the current span); a no-op when telemetry is off."""
    backend = _backend
    if backend is None:
        return NO_SPAN
    return backend.span(name, attributes)


def active() -> bool:
    """Whether spans are recorded: lets a caller skip computing attributes (a hash, say) that would be dropped."""
    return _backend is not None


def install(backend: Backend | None, middleware: Sequence[Any] = ()) -> None:
    """Record spans through `backend` (None: spans stay no-ops, e.g. metrics only); `middleware`: MCP server
    middleware (outermost first) that servers created from now on run around every request, inside the core's own
    request tracking and outside its error guard."""
    global _backend, _middleware
    _backend = backend
    _middleware = tuple(middleware)


def uninstall() -> None:
    global _backend, _middleware
    _backend = None
    _middleware = ()


def server_middleware() -> list[Any]:
    """The installed MCP server middleware (empty while telemetry is off)."""
    return list(_middleware)
