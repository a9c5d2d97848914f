"""Running the server: stdio, streamable HTTP and SSE; signals; start-up checks; stdout kept for the protocol.

The caller owns the runtime: `serve()` starts it, runs one transport until the client leaves or a signal asks
to stop, then stops it (on_shutdown hooks run). SIGHUP reloads (`Runtime.reload`): calls in flight finish,
calls arriving meanwhile wait, none fails.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import attrs

from ..errors import MxcpError
from ..execution import Runtime
from ..project import Project

log = logging.getLogger(__name__)

TRANSPORTS = ("stdio", "streamable-http", "sse")
MCP_PATH = "/mcp"
# Requests and responses are single JSON lines; a large result can be megabytes long.
_LINE_LIMIT = 1 << 28


@attrs.define
class ServeOptions:
    transport: str = "stdio"
    host: str = "localhost"
    port: int = 8000
    stateless: bool = False
    json_response: bool = False
    ignore_errors: bool = False


# -- stdout belongs to the protocol ----------------------------------------------------------------------


@attrs.define
class StdioWire:
    """The protocol's private duplicates of fd 0 and fd 1, taken before any user code runs.

    While claimed, fd 1 points at stderr and fd 0 at the null device, and `sys.stdout` is `sys.stderr`: a
    `print()` anywhere (user modules at import, worker threads, C libraries, child processes) lands on
    stderr and never corrupts the stream.
    """

    read_fd: int
    write_fd: int
    saved_stdout: Any
    saved_fds: tuple[int, int]
    released: bool = False

    @classmethod
    def claim(cls) -> StdioWire:
        import fcntl

        with contextlib.suppress(Exception):
            sys.stdout.flush()
        saved = (fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3), fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3))
        read_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
        write_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
        os.dup2(2, 1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        wire = cls(read_fd, write_fd, sys.stdout, saved)
        sys.stdout = sys.stderr
        return wire

    def release(self) -> None:
        """Give fd 0 and fd 1 back (serving another transport, or done)."""
        if self.released:
            return
        self.released = True
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stdout = self.saved_stdout
        os.dup2(self.saved_fds[0], 0)
        os.dup2(self.saved_fds[1], 1)
        for fd in (*self.saved_fds, self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class _LineReader:
    """Lines from a pipe through the event loop: cancellable, no thread per line."""

    def __init__(self, read_line: Callable[[], Any], drained: Callable[[], Any] | None) -> None:
        self.read_line = read_line
        self.drained = drained

    def __aiter__(self) -> _LineReader:
        return self

    async def __anext__(self) -> str:
        line = await self.read_line()
        if not line:
            # The client closed stdin: answer what it already asked before the session ends.
            if self.drained is not None:
                await self.drained()
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line


class _LineWriter:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def write(self, text: str) -> None:
        self.writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self.writer.drain()


async def _wire_streams(wire: StdioWire, drained: Callable[[], Any] | None = None) -> tuple[Any, Any]:
    """Async line streams over the private fds; a regular file (not a pipe) falls back to the SDK's thread I/O."""
    loop = asyncio.get_running_loop()
    reading = os.fdopen(wire.read_fd, "rb", buffering=0, closefd=False)
    writing = os.fdopen(wire.write_fd, "wb", buffering=0, closefd=False)
    stdin: Any = None
    stdout: Any = None
    if _pollable(wire.read_fd):
        with contextlib.suppress(ValueError, OSError):
            reader = asyncio.StreamReader(limit=_LINE_LIMIT, loop=loop)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), reading)
            stdin = _LineReader(reader.readline, drained)
    if stdin is None:
        text = anyio.wrap_file(io.TextIOWrapper(io.BufferedReader(reading), encoding="utf-8", errors="replace"))
        stdin = _LineReader(text.readline, drained)
    if _pollable(wire.write_fd):
        with contextlib.suppress(ValueError, OSError):
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, writing)
            stdout = _LineWriter(asyncio.StreamWriter(transport, protocol, None, loop))
    if stdout is None:
        stdout = anyio.wrap_file(io.TextIOWrapper(io.BufferedWriter(writing), encoding="utf-8"))
    return stdin, stdout


def _pollable(fd: int) -> bool:
    """Pipes, sockets and terminals work with the event loop; files and /dev/null do not (epoll refuses them)."""
    import stat

    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


# -- start-up ----------------------------------------------------------------------------------------------


def start_runtime(project: Project, *, ignore_errors: bool = False) -> Runtime:
    """Start the runtime and check every endpoint: refuse to serve any invalid one, or skip them when asked."""
    registry = project.endpoints()
    problems = [(bad.name or bad.origin, bad.origin, bad.message) for bad in registry.invalid]
    runtime = Runtime(project, skip_invalid=True)
    runtime.start()
    broken: list[tuple[str, str]] = []
    try:
        from ..validation import check_bodies

        # After on_init, so tables its hooks create count as present.
        for (kind, key), compiled in list(runtime.compiled.items()):
            errors = [p for p in check_bodies(runtime, [compiled.definition]) if p.severity == "error"]
            if errors:
                problems.append((key, compiled.definition.origin, "; ".join(p.message for p in errors)))
                broken.append((kind, key))
    except BaseException:
        runtime.stop()
        raise
    if problems and not ignore_errors:
        runtime.stop()
        listing = "\n".join(f"  {name} ({origin}): {message}" for name, origin, message in problems)
        raise MxcpError(
            f"{len(problems)} invalid endpoint(s); fix them or serve the rest with --ignore-errors:\n{listing}"
        )
    for name, origin, message in problems:
        print(f"mxcp: skipping invalid endpoint {name} ({origin}): {message}", file=sys.stderr)
    for kind, key in broken:
        runtime.drop(kind, key)
    return runtime


# -- serving -----------------------------------------------------------------------------------------------


def serve(project: Project, options: ServeOptions, *, wire: StdioWire | None = None,
          ready: Callable[[str], None] | None = None) -> None:
    """Start the runtime, serve until the client leaves or SIGINT/SIGTERM, then stop the runtime."""
    if options.transport not in TRANSPORTS:
        raise MxcpError(f"unknown transport '{options.transport}' (expected {', '.join(TRANSPORTS)})")
    if options.transport == "stdio" and wire is None:
        wire = StdioWire.claim()
    try:
        runtime = start_runtime(project, ignore_errors=options.ignore_errors)
        try:
            from .app import create_server

            server = create_server(runtime)
            if options.transport == "stdio":
                assert wire is not None
                anyio.run(_serve_stdio, server, runtime, wire)
            else:
                anyio.run(_serve_http, server, runtime, options, ready)
        finally:
            runtime.stop()
    finally:
        if wire is not None:
            wire.release()


async def _watch_signals(runtime: Runtime, stop: Callable[[], None]) -> None:
    """SIGINT/SIGTERM stop serving (on_shutdown runs after); SIGHUP reloads the runtime."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.warning("SIGHUP: reloading")
                runtime.reload(description="SIGHUP")
            else:
                stop()
                return


async def _serve_stdio(server: Any, runtime: Runtime, wire: StdioWire) -> None:
    from mcp.server.stdio import stdio_server

    stdin, stdout = await _wire_streams(wire, getattr(server, "inflight", None) and server.inflight.drained)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, runtime, tasks.cancel_scope.cancel)
        async with stdio_server(stdin=stdin, stdout=stdout) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        # stdin closed: the client is gone.
        tasks.cancel_scope.cancel()


async def _serve_http(server: Any, runtime: Runtime, options: ServeOptions,
                      ready: Callable[[str], None] | None) -> None:
    import uvicorn

    app = build_http_app(server, runtime, options)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=3, access_log=False)
    web = _QuietSignalsServer(config)

    def stop() -> None:
        web.should_exit = True

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, runtime, stop)
        path = "/sse" if options.transport == "sse" else MCP_PATH
        print(f"mxcp: serving {runtime.context.name} on http://{options.host}:{options.port}{path}",
              file=sys.stderr)
        if ready is not None:
            ready(path)
        await web.serve()
        tasks.cancel_scope.cancel()


def build_http_app(server: Any, runtime: Runtime, options: ServeOptions) -> Any:
    """The Starlette app: MCP on /mcp (or /sse + /messages/), and /health for load balancers."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "project": runtime.context.name, "reloads": runtime.reload_count})

    health_route = Route("/health", health, methods=["GET"])
    if options.transport == "sse":
        from mcp.server.sse import SseServerTransport
        from starlette.applications import Starlette

        sse = SseServerTransport("/messages/")

        async def handle_sse(request: Request) -> Response:
            async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
                await server.run(read, write, server.create_initialization_options())
            return Response()

        return Starlette(routes=[
            Route("/sse", handle_sse, methods=["GET"]), Mount("/messages/", app=sse.handle_post_message), health_route,
        ])
    return server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=options.json_response,
        stateless_http=options.stateless,
        host=options.host,
        custom_starlette_routes=[health_route],
    )


def _quiet_signals_server_class() -> type:
    import uvicorn

    class QuietSignalsServer(uvicorn.Server):
        """Uvicorn without its own signal handlers: ours stop it, then on_shutdown runs before exit."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietSignalsServer


def _QuietSignalsServer(config: Any) -> Any:  # noqa: N802 - reads like the class it builds
    return _quiet_signals_server_class()(config)
