"""Messages from endpoint code to the MCP client: log entries and progress, for the request being served.

`await mcp_log("info", "loaded 10 rows")` and `await report_progress(3, 10, "step 3")` reach the client that made
the call. Outside a served MCP request (`mxcp run`, tests) they go to the Python log and do nothing else, so the
same endpoint code runs everywhere. This module must stay cheap to import: user modules import it via
`mxcp.runtime` in every command, not only in `mxcp serve`.
"""
from __future__ import annotations

import contextvars
import logging
import warnings
from typing import Any

# The MCP request context (mcp.server.ServerRequestContext) of the call the current code serves.
# Set by the server around each call; worker threads and `from_thread` tasks inherit it.
current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("mxcp_mcp_request", default=None)
# The server's event loop: endpoint coroutines run on the runtime's own loop and hand notifications over.
server_loop: contextvars.ContextVar[Any] = contextvars.ContextVar("mxcp_server_loop", default=None)

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_PYTHON_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO, "warning": logging.WARNING,
    "error": logging.ERROR, "critical": logging.CRITICAL, "alert": logging.CRITICAL, "emergency": logging.CRITICAL,
}
log = logging.getLogger("mxcp.endpoint")


async def mcp_log(level: str, message: Any, *, logger: str | None = None) -> None:
    """Send a `notifications/message` log entry to the client of the current call.

    `level` is an MCP level (debug, info, notice, warning, error, critical, alert, emergency); `message` is any
    JSON-serialisable value. Clients on protocol 2026-07-28 receive it only if they asked for logs.
    """
    if level not in _PYTHON_LEVELS:
        raise ValueError(f"unknown log level '{level}' (expected one of {', '.join(LOG_LEVELS)})")
    request = current_request.get()
    if request is None:
        logging.getLogger(logger or log.name).log(_PYTHON_LEVELS[level], "%s", message)
        return
    from .typesystem import to_jsonable

    with warnings.catch_warnings():
        # The SDK marks the logging capability deprecated for 2026-07-28; older clients rely on it.
        warnings.simplefilter("ignore")
        await _on_server_loop(request.session.send_log_message(
            level=level, data=to_jsonable(message), logger=logger, related_request_id=request.request_id
        ))


async def report_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
    """Send a `notifications/progress` update for the current call; a no-op when the client asked for none."""
    request = current_request.get()
    if request is None:
        log.debug("progress %s/%s %s", progress, total, message or "")
        return
    await _on_server_loop(
        request.session.report_progress(float(progress), None if total is None else float(total), message)
    )


async def _on_server_loop(coroutine: Any) -> Any:
    """The session belongs to the server's loop: run the send there when the caller is on another loop."""
    import asyncio

    loop = server_loop.get()
    if loop is None or loop is asyncio.get_running_loop():
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


class McpChannel:
    """`from mxcp.runtime import mcp` (the original MXCP's form): log entries and progress for the current call.

    `await mcp.info("...")` in async code; in a plain function (run in a worker thread) `mcp.info("...")` sends it
    and returns when it is handed over. Outside a served request the entries go to the Python log.
    """

    def debug(self, message: Any, **data: Any) -> Any:
        return self._log("debug", message, data)

    def info(self, message: Any, **data: Any) -> Any:
        return self._log("info", message, data)

    def warning(self, message: Any, **data: Any) -> Any:
        return self._log("warning", message, data)

    def error(self, message: Any, **data: Any) -> Any:
        return self._log("error", message, data)

    def progress(self, progress: float, total: float | None = None, message: str | None = None) -> Any:
        return _sent(report_progress(progress, total, message))

    def _log(self, level: str, message: Any, data: dict[str, Any]) -> Any:
        return _sent(mcp_log(level, {"message": message, **data} if data else message))

    def __repr__(self) -> str:
        return "<mxcp.runtime.mcp: log entries and progress for the current call>"


def _sent(coroutine: Any) -> Any:
    """The coroutine to await when called from async code; else run it to completion here (a worker thread)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return coroutine
    loop = server_loop.get()
    if loop is not None and not loop.is_closed():
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)
    return asyncio.run(coroutine)  # no server: the entry goes to the Python log


mcp = McpChannel()

__all__ = ["McpChannel", "mcp", "mcp_log", "report_progress"]
