"""`mxcp serve`: the project's endpoints over MCP (stdio, streamable HTTP or SSE)."""
from __future__ import annotations

from typing import Annotated

import typer

from .options import DebugOpt, ProfileOpt, ReadonlyOpt, load
from .output import reporting_errors


def serve(
    transport: Annotated[
        str | None,
        typer.Option("--transport", help="stdio, streamable-http or sse (default: the user config's transport.provider)."),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="HTTP host to bind (default: transport.http.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="HTTP port (default: transport.http.port).")] = None,
    stateless: Annotated[
        bool | None, typer.Option("--stateless/--stateful", help="Streamable HTTP without sessions.")
    ] = None,
    json_response: Annotated[
        bool | None, typer.Option("--json-response/--sse-response", help="Answer HTTP calls with plain JSON.")
    ] = None,
    ignore_errors: Annotated[
        bool, typer.Option("--ignore-errors", help="Serve the valid endpoints and skip (and name) invalid ones.")
    ] = False,
    profile: ProfileOpt = None,
    readonly: ReadonlyOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Serve the project's tools, resources and prompts to MCP clients."""
    from ..server.transports import ServeOptions, StdioWire, serve as run_server

    # Protect the protocol stream before any plugin or user module is imported (they may print).
    wire = StdioWire.claim() if transport in (None, "stdio") else None
    try:
        with reporting_errors(False, debug):
            project = load(profile, readonly)
            settings = project.context.user.transport
            chosen = transport or settings.provider or "streamable-http"
            if chosen != "stdio" and wire is not None:
                wire.release()
                wire = None
            options = ServeOptions(
                transport=chosen,
                host=host or settings.http.host,
                port=port if port is not None else settings.http.port,
                stateless=settings.http.stateless if stateless is None else stateless,
                json_response=settings.http.json_response if json_response is None else json_response,
                ignore_errors=ignore_errors,
            )
            run_server(project, options, wire=wire)
    finally:
        if wire is not None:
            wire.release()

