"""Running the server: stdio, streamable HTTP and SSE; signals; start-up checks; stdout kept for the protocol.

The caller owns the runtime: `serve()` starts it, runs one transport until the client leaves or a signal asks
to stop, then stops it (on_shutdown hooks run). SIGHUP (and, with `--watch`, a changed project file) reloads
(`Runtime.reload`): the site and user config, secrets and endpoint files are read again and checked; a valid set
is swapped in once the calls in flight finish, calls arriving meanwhile wait, none fails.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
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
    # HTTP hardening; the defaults match the user config's (transport.http.*).
    allowed_hosts: list[str] = attrs.Factory(list)
    allowed_origins: list[str] = attrs.Factory(list)
    body_timeout: float = 60.0
    session_idle_timeout: float = 1800.0
    max_sessions: int = 1000
    # The URL clients reach this server at (behind a proxy, say): names the resource for sign-in.
    base_url: str | None = None
    # Reload when a project file changes (development): as SIGHUP does.
    watch: bool = False

    def check(self) -> None:
        """Refuse values the config file would refuse (CLI flags bypass its validation)."""
        for name in ("body_timeout", "session_idle_timeout", "max_sessions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (0 < value < float("inf")):
                raise MxcpError(f"{name.replace('_', '-')} must be a positive number")
        if "*" in self.allowed_hosts and len(self.allowed_hosts) > 1:
            raise MxcpError("allowed host '*' (no Host/Origin checks) must be the only one")
        from ..config import HOST_PATTERN, ORIGIN_PATTERN

        for host in self.allowed_hosts:
            if host != "*" and not HOST_PATTERN.fullmatch(host):
                raise MxcpError(f"allowed host {host!r} must be a host name or address, optionally with :port or :*"
                                " (wildcards such as *.example.com cannot match)")
        for origin in self.allowed_origins:
            if not ORIGIN_PATTERN.fullmatch(origin):
                raise MxcpError("an allowed origin must look like https://host or http://host:port (no path)")


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
    """Lines from a pipe through the event loop: cancellable, no thread per line.

    With `reject`, a line the SDK could not parse is answered here (the SDK drops such lines without a reply,
    leaving the client waiting forever) and never reaches it.
    """

    def __init__(self, read_line: Callable[[], Any], drained: Callable[[], Any] | None,
                 reject: Callable[[str], Any] | None = None) -> None:
        self.read_line = read_line
        self.drained = drained
        self.reject = reject

    def __aiter__(self) -> _LineReader:
        return self

    async def __anext__(self) -> str:
        while True:
            line = await self.read_line()
            if not line:
                # The client closed stdin: answer what it already asked before the session ends.
                if self.drained is not None:
                    await self.drained()
                raise StopAsyncIteration
            text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
            if self.reject is None:
                return text
            if not text.strip():
                continue  # a blank line carries no message: nothing to answer
            if await self.reject(text):
                continue
            return text


def _malformed_frame_answer(text: str) -> tuple[dict[str, Any], str] | None:
    """The JSON-RPC error for a line the SDK's own parser refuses, and a log reason; None for a good line.

    The same parser the SDK runs next, so exactly the lines it would drop get an answer (a few µs per line).
    """
    import mcp_types
    from pydantic import ValidationError

    try:
        mcp_types.jsonrpc_message_adapter.validate_json(text, by_name=False)
        return None
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0] if errors else {"msg": "unreadable", "type": ""}
    request_id: Any = None
    if any(e["type"] == "json_invalid" for e in errors):
        code, message, reason = -32700, "Parse error", first["msg"]
    else:
        code, message = -32600, "Invalid Request"
        reason = "not a JSON-RPC 2.0 message"
        with contextlib.suppress(ValueError, RecursionError):
            import json

            parsed = json.loads(text)
            candidate = parsed.get("id") if isinstance(parsed, dict) else None
            # Echo a usable id so the client's pending call ends; anything else stays null.
            if isinstance(candidate, (str, int)) and not isinstance(candidate, bool):
                request_id = candidate
    frame = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return frame, f"{code} {message}: {reason}"


def _frame_rejecter(stdout: Any) -> Callable[[str], Any]:
    import json

    async def reject(text: str) -> bool:
        answer = _malformed_frame_answer(text)
        if answer is None:
            return False
        frame, reason = answer
        # Sizes, never content: the line may hold secrets.
        size = len(text.rstrip("\r\n").encode("utf-8", "replace"))
        log.warning("stdin: malformed message (%d bytes) answered with %s", size, reason)
        await stdout.write(json.dumps(frame, separators=(",", ":")) + "\n")
        await stdout.flush()
        return True

    return reject


class _LineWriter:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def write(self, text: str) -> None:
        # One synchronous write per frame: frames from different tasks never interleave.
        self.writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self.writer.drain()


class _FileLineWriter:
    """Frames to a regular file from a worker thread, each written whole under a lock (two writers share it)."""

    def __init__(self, raw: Any) -> None:
        import threading

        self.raw = raw
        self.lock = threading.Lock()

    async def write(self, text: str) -> None:
        await anyio.to_thread.run_sync(self._write, text.encode("utf-8"))

    def _write(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[self.raw.write(view):]

    async def flush(self) -> None:
        return None


async def _wire_streams(wire: StdioWire, drained: Callable[[], Any] | None = None) -> tuple[Any, Any]:
    """Async line streams over the private fds; a regular file (not a pipe) falls back to the SDK's thread I/O."""
    loop = asyncio.get_running_loop()
    reading = os.fdopen(wire.read_fd, "rb", buffering=0, closefd=False)
    writing = os.fdopen(wire.write_fd, "wb", buffering=0, closefd=False)
    stdin: Any = None
    stdout: Any = None
    if _pollable(wire.write_fd):
        with contextlib.suppress(ValueError, OSError):
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, writing)
            stdout = _LineWriter(asyncio.StreamWriter(transport, protocol, None, loop))
    if stdout is None:
        stdout = _FileLineWriter(writing)
    reject = _frame_rejecter(stdout)
    if _pollable(wire.read_fd):
        with contextlib.suppress(ValueError, OSError):
            reader = asyncio.StreamReader(limit=_LINE_LIMIT, loop=loop)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), reading)
            stdin = _LineReader(reader.readline, drained, reject)
    if stdin is None:
        text = anyio.wrap_file(io.TextIOWrapper(io.BufferedReader(reading), encoding="utf-8", errors="replace"))
        stdin = _LineReader(text.readline, drained, reject)
    return stdin, stdout


def _pollable(fd: int) -> bool:
    """Pipes, sockets and terminals work with the event loop; files and /dev/null do not (epoll refuses them)."""
    import stat

    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


# -- start-up ----------------------------------------------------------------------------------------------


def start_runtime(project: Project, *, ignore_errors: bool = False) -> Runtime:
    """Start the runtime and check every endpoint: refuse to serve any invalid one, or skip them when asked.

    The checks are `mxcp validate`'s (`check_bodies`), so both agree on what is invalid; only a table an
    on_init hook creates differs (validate warns, serve sees it).
    """
    from ..validation import check_bodies

    registry = project.endpoints()
    problems = [(bad.name or bad.origin, bad.origin, bad.message) for bad in registry.invalid]
    runtime = Runtime(project, skip_invalid=True)
    runtime.refuse_invalid = not ignore_errors  # reloads too: a new set with an invalid endpoint is not taken
    runtime.start()
    broken: list[tuple[str, str, str]] = []
    try:
        # After on_init, so tables its hooks create count as present.
        for (kind, key), compiled in list(runtime.compiled.items()):
            errors = [p for p in check_bodies(runtime, [compiled.definition]) if p.severity == "error"]
            if errors:
                message = "; ".join(p.message for p in errors)
                problems.append((key, compiled.definition.origin, message))
                broken.append((kind, key, message))
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
    for kind, key, message in broken:
        runtime.drop(kind, key, reason=message)  # a call is answered "not served: <why>", not "not found"
    return runtime


# -- serving -----------------------------------------------------------------------------------------------


def serve(project: Project, options: ServeOptions, *, wire: StdioWire | None = None,
          ready: Callable[[str], None] | None = None) -> None:
    """Start the runtime, serve until the client leaves or SIGINT/SIGTERM, then stop the runtime."""
    if options.transport not in TRANSPORTS:
        raise MxcpError(f"unknown transport '{options.transport}' (expected {', '.join(TRANSPORTS)})")
    options.check()
    if options.transport == "stdio" and wire is None:
        wire = StdioWire.claim()
    try:
        # `--watch` compares against the files as they were before loading, so an edit made while the server
        # starts is reloaded too (a first look taken later would already include it).
        watch = functools.partial(_watch_files, first=_look_at_files(project.context)) if options.watch else None
        runtime = start_runtime(project, ignore_errors=options.ignore_errors)
        try:
            from .app import create_server

            server = create_server(runtime, remote=options.transport != "stdio")
            if options.transport == "stdio":
                assert wire is not None
                if _sign_in_configured(runtime):
                    print("mxcp: note: the user config's auth (sign-in) applies to HTTP serving; this stdio server "
                          "serves the local user who started it", file=sys.stderr)
                anyio.run(_serve_stdio, server, runtime, wire, options, ready, watch)
            else:
                anyio.run(_serve_http, server, runtime, options, ready, watch)
        finally:
            runtime.stop()
    finally:
        if wire is not None:
            wire.release()


async def _watch_signals(runtime: Runtime, stop: Callable[[], None], watch: FileWatch | None = None) -> None:
    """SIGINT/SIGTERM stop serving (on_shutdown runs after); SIGHUP reloads the runtime; so does a changed
    project file when `watch` (`serve --watch`) is given."""
    async with anyio.create_task_group() as tasks:
        if watch is not None:
            tasks.start_soon(watch, runtime)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.warning("SIGHUP: reloading (the config, secrets and endpoint files are read again)")
                    runtime.reload(description="SIGHUP", config=True)
                else:
                    stop()
                    break
        tasks.cancel_scope.cancel()


WATCH_INTERVAL = 0.5  # seconds between looks at the project's files
FileWatch = Callable[[Runtime], Awaitable[None]]  # `serve --watch`'s task: _watch_files with its first look


def _look_at_files(context: Any) -> dict[Any, Any] | None:
    """A snapshot of the project's watched files, or None when a folder cannot be read just now."""
    from .watch import snapshot

    try:
        return snapshot(context)
    except Exception as exc:  # noqa: BLE001 - a folder that cannot be read never stops serving
        log.warning("--watch: cannot look at the project's files (%s); trying again", exc)
        return None


async def _watch_files(runtime: Runtime, first: dict[Any, Any] | None) -> None:
    """`serve --watch`: reload when a file the project reads changes from `first` (taken before loading), once
    it has stopped changing."""
    import time

    async def look() -> dict[Any, Any] | None:
        return await anyio.to_thread.run_sync(_look_at_files, runtime.context)

    seen = first
    pause = WATCH_INTERVAL
    while True:
        await anyio.sleep(pause)
        started = time.monotonic()
        now = await look()
        # A large tree costs more to look at: look less often, so watching stays a small part of the CPU.
        pause = max(WATCH_INTERVAL, (time.monotonic() - started) * 20)
        if now is None or seen is None or now == seen:
            seen = now if seen is None else seen
            continue
        # An editor may write a file in several steps: wait until two looks agree.
        while True:
            await anyio.sleep(pause)
            settled = await look()
            if settled is None or settled == now:
                break
            now = settled
        changed = sorted({*now.keys() ^ seen.keys(), *(k for k in now.keys() & seen.keys() if now[k] != seen[k])})
        seen = now
        shown = ", ".join(str(path) for path in changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3
                                                                 else "")
        log.warning("changed: %s; reloading", shown)
        runtime.reload(description="files changed", config=True)


async def _serve_stdio(server: Any, runtime: Runtime, wire: StdioWire, options: ServeOptions,
                       ready: Callable[[str], None] | None = None, watch: FileWatch | None = None) -> None:
    from mcp.server.stdio import stdio_server

    stdin, stdout = await _wire_streams(wire, getattr(server, "inflight", None) and server.inflight.drained)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, runtime, tasks.cancel_scope.cancel, watch)
        async with stdio_server(stdin=stdin, stdout=stdout) as (read_stream, write_stream):
            if ready is not None:
                ready("stdio")
            await server.run(read_stream, write_stream, server.create_initialization_options())
        # stdin closed: the client is gone.
        tasks.cancel_scope.cancel()


def _sign_in_configured(runtime: Runtime) -> bool:
    from ..features import original_section

    section = original_section("user_profile", "auth")
    assert section is not None
    value = runtime.context.settings.get(("user_profile", "auth"))
    return not section.inert(value)


def public_urls(options: ServeOptions) -> tuple[str, str]:
    """The base URL clients reach this server at, and the MCP endpoint's URL (the resource tokens are for)."""
    if options.base_url:
        base = options.base_url.rstrip("/")
    else:
        base = f"http://{_as_host_header(options.host or '0.0.0.0')}:{options.port}"
    return base, base + ("/sse" if options.transport == "sse" else MCP_PATH)


async def _sign_in(runtime: Runtime, options: ServeOptions) -> Any:
    """The HTTP sign-in a plugin configures (None: the server is open). A configured one that fails stops serving."""
    base_url, resource_url = public_urls(options)
    hooks, project = runtime.hooks, runtime.context
    sign_in = await anyio.to_thread.run_sync(hooks.http_sign_in, project, base_url, resource_url)
    if sign_in is None:
        if _sign_in_configured(runtime):
            # The section is there and its owner answered nothing: refuse rather than serve open.
            raise MxcpError("the user config's auth block is not enforced by any loaded plugin; not serving open")
        return None
    if not options.base_url and options.host in ("", "0.0.0.0", "::", "[::]"):
        if sign_in.close is not None:
            await sign_in.close()
        raise MxcpError("sign-in needs the URL clients reach this server at: set transport.http.base_url "
                        "(e.g. https://mcp.example.com) when listening on all interfaces")
    return sign_in


async def _serve_http(server: Any, runtime: Runtime, options: ServeOptions,
                      ready: Callable[[str], None] | None, watch: FileWatch | None = None) -> None:
    sign_in = await _sign_in(runtime, options)
    try:
        await _serve_http_app(server, runtime, options, ready, sign_in, watch)
    finally:
        if sign_in is not None and sign_in.close is not None:
            with contextlib.suppress(Exception):
                await sign_in.close()


async def _serve_http_app(server: Any, runtime: Runtime, options: ServeOptions,
                          ready: Callable[[str], None] | None, sign_in: Any,
                          watch: FileWatch | None = None) -> None:
    import uvicorn

    app = build_http_app(server, runtime, options, sign_in)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=3, access_log=False)
    web = _QuietSignalsServer(config)

    def stop() -> None:
        web.should_exit = True

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, runtime, stop, watch)
        path = "/sse" if options.transport == "sse" else MCP_PATH
        warning = host_policy(options).warning
        if warning:
            print(warning, file=sys.stderr)
        if sign_in is not None:
            print(f"mxcp: {sign_in.description}" if sign_in.description else "mxcp: sign-in required",
                  file=sys.stderr)
        elif not _is_loopback(options.host):
            print(f"mxcp: warning: no sign-in (auth.provider none): anyone who can reach {options.host or '*'}:"
                  f"{options.port} can call every tool; configure auth in the user config", file=sys.stderr)
        print(f"mxcp: serving {runtime.context.name} on http://{options.host}:{options.port}{path}",
              file=sys.stderr)
        if ready is not None:
            ready(path)
        try:
            await web.serve()
        except SystemExit:
            # Uvicorn exits when it cannot listen (it has logged why): one clear error instead of a traceback.
            listening = False
        else:
            listening = True
        tasks.cancel_scope.cancel()
    if not listening:
        raise MxcpError(f"cannot listen on {options.host}:{options.port} (address in use or not available here)")


def build_http_app(server: Any, runtime: Runtime, options: ServeOptions, sign_in: Any = None) -> Any:
    """The Starlette app: MCP on /mcp (or /sse + /messages/), /health for load balancers, and with sign-in the
    protected-resource metadata and the sign-in plugin's routes."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route

    async def health(request: Request) -> JSONResponse:
        healthy, reason = runtime.health
        body = {"status": "ok" if healthy else "error", "project": runtime.context.name,
                "reloads": runtime.reload_count}
        if reason:
            body["reason"] = reason
        if runtime.config_problem:
            # Still serving, with the configuration it had: say why the new one was not taken.
            body["config_problem"] = runtime.config_problem
        # 503 takes a replica whose reload failed out of a load balancer's rotation until a reload succeeds.
        return JSONResponse(body, status_code=200 if healthy else 503)

    health_route = Route("/health", health, methods=["GET"])
    extra_routes: list[Any] = [health_route]
    challenge = None
    if sign_in is not None:
        challenge = SignInChallenge.build(sign_in, options)
        extra_routes += challenge.metadata_routes() + list(sign_in.routes)
    security = host_policy(options).settings()
    if options.transport == "sse":
        from mcp.server.sse import SseServerTransport
        from starlette.applications import Starlette

        sse = SseServerTransport("/messages/", security_settings=security)
        open_streams = 0

        async def handle_sse(request: Request) -> Response:
            nonlocal open_streams
            # An SSE stream is its session: the same cap as streamable HTTP sessions.
            if open_streams >= options.max_sessions:
                log.warning("refusing an SSE session: %d are already open", open_streams)
                return JSONResponse(_rpc_error("Too many open sessions"), status_code=503)
            open_streams += 1
            try:
                async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
                    await server.run(read, write, server.create_initialization_options())
            finally:
                open_streams -= 1
            return Response()

        app = Starlette(routes=[
            Route("/sse", handle_sse, methods=["GET"]), Mount("/messages/", app=sse.handle_post_message), *extra_routes,
        ])
    else:
        app = server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            json_response=options.json_response,
            stateless_http=options.stateless,
            transport_security=security,
            session_idle_timeout=options.session_idle_timeout,
            max_sessions=options.max_sessions,
            custom_starlette_routes=extra_routes,
        )
    return HttpGuard(app, options, security, challenge)


# -- HTTP hardening -----------------------------------------------------------------------------------------

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _as_host_header(host: str) -> str:
    """How a bind address or configured name appears in a Host header (IPv6 in brackets)."""
    return f"[{host}]" if host.count(":") > 1 and not host.startswith("[") else host


def _has_port(name: str) -> bool:
    head, sep, port = name.rpartition(":")
    return bool(sep) and not head.endswith(":") and (port == "*" or port.isdigit())


@attrs.frozen
class HostPolicy:
    """Which Host and Origin headers the MCP paths accept (DNS-rebinding protection), and what to warn about.

    Loopback names are always accepted (a rebinding attack cannot make a browser send them), plus the bound
    address when it is a specific one, plus the configured names; a name without a port matches any port.
    Origins default to http(s):// of those names. `["*"]` as allowed hosts turns the checks off.
    """

    enabled: bool
    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    warning: str | None

    def settings(self) -> Any:
        from mcp.server.transport_security import TransportSecuritySettings

        return TransportSecuritySettings(enable_dns_rebinding_protection=self.enabled,
                                         allowed_hosts=list(self.hosts), allowed_origins=list(self.origins))


def host_policy(options: ServeOptions) -> HostPolicy:
    bind = options.host
    exposed = not _is_loopback(bind)
    if options.allowed_hosts == ["*"]:
        return HostPolicy(False, (), (), "mxcp: warning: Host/Origin checks are off (allowed hosts '*'): any web "
                                         "page a user of this server opens can reach it through DNS rebinding")
    names = list(_LOOPBACK_NAMES)
    if exposed and bind not in ("", "0.0.0.0", "::", "[::]"):
        names.append(_as_host_header(bind))
    configured = list(options.allowed_hosts)
    if options.base_url:
        from urllib.parse import urlsplit

        # The public URL's host is how clients reach this server (through a proxy): accepted without listing it.
        public = urlsplit(options.base_url).netloc.rpartition("@")[2]
        if public:
            configured.append(public)
    for name in map(_as_host_header, configured):
        if name not in names:
            names.append(name)
    hosts: list[str] = []
    for name in names:
        hosts += [name] if _has_port(name) else [name, f"{name}:*"]
    if options.allowed_origins:
        origins = [f"http://{name}{port}" for name in _LOOPBACK_NAMES for port in ("", ":*")]
        origins += options.allowed_origins
    else:
        origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    warning = None
    if exposed:
        accepted = ", ".join(names)
        warning = (f"mxcp: warning: listening on {bind or 'all interfaces'}, reachable from other machines; "
                   f"DNS-rebinding protection accepts only these Host names: {accepted} (others get 421)")
        if not options.allowed_hosts:
            warning += ". Add the names clients use with transport.http.allowed_hosts or --allowed-host"
    return HostPolicy(True, tuple(hosts), tuple(dict.fromkeys(origins)), warning)


def _rpc_error(message: str, code: int = -32000) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


class HttpGuard:
    """ASGI wrapper in front of every HTTP transport.

    - The request body must arrive whole within `body_timeout` seconds (else 408 and the connection closes):
      a client trickling bytes would otherwise hold the request forever. Read up front, so every answer below
      leaves the connection in a clean state.
    - Host/Origin checks on the MCP paths, first (the SDK repeats them on streamable HTTP, after some checks of
      its own; on SSE's paths it has none).
    - GET /mcp in stateless mode answers 405: the SDK would open an event stream nothing ever writes to.
    """

    def __init__(self, app: Any, options: ServeOptions, security: Any, sign_in: SignInChallenge | None = None) -> None:
        from mcp.server.transport_security import (
            DEFAULT_MAX_REQUEST_BODY_SIZE,
            TransportSecurityMiddleware,
        )
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        self.request_class, self.response_class = Request, JSONResponse
        self.app = app
        self.body_timeout = options.body_timeout
        self.max_body = DEFAULT_MAX_REQUEST_BODY_SIZE
        self.security = TransportSecurityMiddleware(security)
        self.sse = options.transport == "sse"
        self.stateless = options.stateless and not self.sse
        self.sign_in = sign_in
        if sign_in is not None:
            from mcp.server.auth.middleware.auth_context import AuthContextMiddleware

            # Sets the SDK's contextvar, so `get_access_token()` works inside handlers.
            self.signed_in_app = AuthContextMiddleware(app)

    def _is_mcp_path(self, path: str) -> bool:
        if self.sse:
            return path == "/sse" or path.startswith("/messages/")
        return path.rstrip("/") == MCP_PATH

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        respond = self.response_class

        cached: list[dict[str, Any]] = []
        body = bytearray()
        complete = False
        # asyncio's own timeout (uvicorn serves on asyncio): a fraction of the cost of a cancel scope per request.
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client left mid-body: nobody to answer
                    body += message.get("body", b"")
                    if len(body) > self.max_body:
                        await respond(_rpc_error("Request body too large"), status_code=413,
                                      headers={"Connection": "close"})(scope, receive, send)
                        return
                    if not message.get("more_body", False):
                        complete = True
                        break
        except TimeoutError:
            pass
        if not complete:
            log.info("closing a request whose body took longer than %gs", self.body_timeout)
            await respond(_rpc_error(f"Request Timeout: the body took longer than {self.body_timeout:g}s"),
                          status_code=408, headers={"Connection": "close"})(scope, receive, send)
            return
        cached.append({"type": "http.request", "body": bytes(body), "more_body": False})

        async def replay() -> Any:
            return cached.pop() if cached else await receive()

        if self._is_mcp_path(scope["path"]):
            refused = await self.security.validate_request(self.request_class(scope), is_post=False)
            if refused is not None:
                await refused(scope, replay, send)
                return
            if self.stateless and scope["method"] == "GET":
                await respond(_rpc_error("Method Not Allowed: this server is stateless, send requests with POST"),
                              status_code=405, headers={"Allow": "POST"})(scope, replay, send)
                return
            if self.sign_in is not None:
                refused = await self.sign_in.authenticate(scope)
                if refused is not None:
                    await refused(scope, replay, send)
                    return
                await self.signed_in_app(scope, replay, send)
                return
        await self.app(scope, replay, send)


class SignInChallenge:
    """Bearer tokens on the MCP paths (RFC 6750, MCP authorization): 401 without a valid token, 403 without a
    required scope, each with a `WWW-Authenticate` challenge naming the protected-resource metadata (RFC 9728) and
    the scopes to ask for. The token is verified by the sign-in plugin's verifier, through the SDK's bearer backend.
    """

    def __init__(self, sign_in: Any, resource_url: str) -> None:
        from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend
        from mcp.server.auth.routes import build_resource_metadata_url
        from pydantic import AnyHttpUrl

        self.sign_in = sign_in
        self.resource_url = resource_url
        self.metadata_url = str(build_resource_metadata_url(AnyHttpUrl(resource_url)))
        self.backend = BearerAuthBackend(sign_in.verifier)
        self.required = tuple(sign_in.required_scopes)
        self.scope_hint = " ".join(self.required or sign_in.scopes_supported)

    @classmethod
    def build(cls, sign_in: Any, options: ServeOptions) -> SignInChallenge:
        return cls(sign_in, public_urls(options)[1])

    def metadata_routes(self) -> list[Any]:
        """RFC 9728 metadata at /.well-known/oauth-protected-resource<path>, and at the bare well-known path for
        clients that look there first."""
        from mcp.server.auth.routes import create_protected_resource_routes
        from starlette.routing import Route

        # Plain strings: the metadata model keeps a path-less issuer as written (no trailing slash), which
        # clients compare exactly with the authorization server's own `issuer` (RFC 8414).
        routes = create_protected_resource_routes(
            resource_url=self.resource_url,  # type: ignore[arg-type]
            authorization_servers=list(self.sign_in.authorization_servers),
            scopes_supported=list(self.sign_in.scopes_supported) or None,
        )
        bare = "/.well-known/oauth-protected-resource"
        if routes and routes[0].path != bare:
            routes.append(Route(bare, endpoint=routes[0].endpoint, methods=["GET", "OPTIONS"]))
        return routes

    async def authenticate(self, scope: Any) -> Any:
        """None when the request carries a valid token with the required scopes (scope["user"] is set), else the
        refusal to send."""
        from starlette.requests import HTTPConnection

        connection = HTTPConnection(scope)
        if not connection.headers.get("authorization"):
            return self._refuse(401, None, "sign-in required: send an OAuth access token (Authorization: Bearer)")
        try:
            found = await self.backend.authenticate(connection)
        except Exception as exc:  # noqa: BLE001 - a verifier failure refuses the request; it never lets it through
            log.warning("token verification failed (%s): request refused", type(exc).__name__)
            found = None
        if found is None:
            log.info("refused an HTTP request: invalid, expired or foreign access token")
            return self._refuse(401, "invalid_token",
                                "the access token is invalid, expired or not issued for this server")
        credentials, user = found
        missing = [name for name in self.required if name not in credentials.scopes]
        if missing:
            log.info("refused an HTTP request: token lacks scope %s", " ".join(missing))
            return self._refuse(403, "insufficient_scope", f"the access token lacks scope: {' '.join(missing)}")
        scope["user"], scope["auth"] = user, credentials
        return None

    def _refuse(self, status: int, error: str | None, description: str) -> Any:
        from starlette.responses import JSONResponse

        parts = []
        if error is not None:  # RFC 6750 §3.1: no error code when the request had no credentials at all
            parts += [f'error="{error}"', f'error_description="{description}"']
        parts.append(f'resource_metadata="{self.metadata_url}"')
        if self.scope_hint:
            parts.append(f'scope="{self.scope_hint}"')
        body = {"error": error or "unauthorized", "error_description": description}
        return JSONResponse(body, status_code=status, headers={"WWW-Authenticate": "Bearer " + ", ".join(parts)})


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
