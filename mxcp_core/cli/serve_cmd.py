"""`mxcp serve`: the project's endpoints over MCP (stdio, streamable HTTP or SSE)."""
from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ..errors import MxcpError
from .options import DebugOpt, ProfileOpt, ReadonlyOpt, load, plural
from .output import reporting_errors

# Names people use for a transport, besides the transports' own (`http` is what clients call streamable HTTP).
TRANSPORT_ALIASES = {"http": "streamable-http"}
TRANSPORT_NAMES = ("stdio", "streamable-http", "sse")


def transport_name(name: str, source: str) -> str:
    """The transport `name` stands for (aliases resolved); an unknown one is an error naming where it came from."""
    chosen = TRANSPORT_ALIASES.get(name, name)
    if chosen not in TRANSPORT_NAMES:
        raise MxcpError(f"{source}: unknown transport '{name}' (expected stdio, http (= streamable-http), "
                        "streamable-http or sse)")
    return chosen


def stdio_ready_line(project: Any) -> str:
    """What `serve` says on stderr once the stdio server is ready: the project, its endpoints, how to stop it."""
    registry = project.endpoints()
    counts = {kind: sum(1 for e in registry.all() if e.kind == kind) for kind in ("tool", "resource", "prompt")}
    served = ", ".join(plural(count, kind) for kind, count in counts.items())
    return (f"mxcp: serving {project.context.name} ({project.context.profile}) over stdio: {served}; "
            "stop with Ctrl+C, or end the input (Ctrl+D)")


def serve(
    transport: Annotated[
        str | None,
        typer.Option("--transport", metavar="NAME",
                     help="stdio, http (streamable HTTP), streamable-http or sse "
                          "(default: the user config's transport.provider, else streamable-http)."),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", metavar="HOST", help="HTTP host to bind (default: transport.http.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", metavar="PORT", help="HTTP port (default: transport.http.port).")] = None,
    stateless: Annotated[
        bool | None, typer.Option("--stateless/--stateful", help="Streamable HTTP without sessions.")
    ] = None,
    json_response: Annotated[
        bool | None, typer.Option("--json-response/--sse-response", help="Answer HTTP calls with plain JSON.")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", metavar="HOST", help="Host header accepted besides loopback names and the bound address "
                     "(repeatable; replaces transport.http.allowed_hosts; '*' turns Host/Origin checks off)."),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option("--allowed-origin", metavar="ORIGIN", help="Origin header accepted, e.g. https://app.example.com (repeatable; "
                     "default: http(s):// of the allowed hosts)."),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option("--body-timeout", metavar="SECONDS", help="Seconds a client may take to send a request body (default: 60)."),
    ] = None,
    session_idle_timeout: Annotated[
        float | None,
        typer.Option("--session-idle-timeout", metavar="SECONDS", help="Seconds before an idle HTTP session is closed (default: 1800)."),
    ] = None,
    max_sessions: Annotated[
        int | None, typer.Option("--max-sessions", metavar="N", help="Open HTTP/SSE sessions allowed at once (default: 1000).")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", metavar="URL", help="The URL clients reach this server at, e.g. https://mcp.example.com "
                     "(default: transport.http.base_url; names the resource sign-in tokens must be for)."),
    ] = None,
    ignore_errors: Annotated[
        bool, typer.Option("--ignore-errors", help="Serve the valid endpoints and skip (and name) invalid ones.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Reload when a project file changes, as SIGHUP does (for development).")
    ] = False,
    profile: ProfileOpt = None,
    readonly: ReadonlyOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Serve the project's tools, resources and prompts to MCP clients.

    Over stdio for a client that starts the server itself (Claude Desktop,
    VS Code, Cursor: see mxcp client-config), or over HTTP for clients
    that connect to it at http://HOST:PORT/mcp.

    Examples:
      mxcp serve --transport stdio              # for a client that starts it
      mxcp serve --transport http --port 8000   # streamable HTTP on /mcp
      mxcp serve --transport http --watch       # reload as files change
      mxcp -C ~/projects/demo serve --transport stdio --profile prod
    """
    from ..server.transports import ServeOptions, StdioWire, serve as run_server

    # Protect the protocol stream before any plugin or user module is imported (they may print).
    wire = StdioWire.claim() if transport in (None, "stdio") else None
    try:
        with reporting_errors(False, debug):
            if transport is not None:
                transport = transport_name(transport, "--transport")
            project = load(profile, readonly)
            settings = project.context.user.transport
            chosen = transport or transport_name(settings.provider or "streamable-http", "transport.provider")
            if chosen != "stdio" and wire is not None:
                wire.release()
                wire = None
            http = settings.http
            options = ServeOptions(
                transport=chosen,
                host=host or http.host,
                port=port if port is not None else http.port,
                stateless=http.stateless if stateless is None else stateless,
                json_response=http.json_response if json_response is None else json_response,
                ignore_errors=ignore_errors,
                allowed_hosts=list(allowed_host if allowed_host else http.allowed_hosts),
                allowed_origins=list(allowed_origin if allowed_origin else http.allowed_origins),
                body_timeout=http.body_timeout if body_timeout is None else body_timeout,
                session_idle_timeout=http.session_idle_timeout if session_idle_timeout is None else session_idle_timeout,
                max_sessions=http.max_sessions if max_sessions is None else max_sessions,
                base_url=base_url or http.base_url,
                watch=watch,
            )
            if chosen == "stdio":
                # Called by the transport once the stdio loop takes over, i.e. when a client can talk to it.
                def ready(_: str) -> None:
                    print(stdio_ready_line(project), file=sys.stderr, flush=True)

                run_server(project, options, wire=wire, ready=ready)
            else:
                run_server(project, options, wire=wire)
    finally:
        if wire is not None:
            wire.release()

