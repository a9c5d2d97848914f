"""The MCP server of a started Runtime, on the SDK's low-level `Server`.

Everything a client can list is built once here, when the server is created: tool schemas, resource and
template lists, prompt arguments. A call then costs one dictionary lookup, the Runtime's validation and the
body itself, which runs in a worker thread (`Runtime.call_async`) so the event loop never blocks.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import weakref
from collections.abc import Mapping
from typing import Any

import attrs
from mcp import MCPError, types
from mcp.server import Server, ServerRequestContext
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json

from .. import redaction
from ..errors import MxcpError, NotFoundError, ValidationError
from ..execution import ENCODED_RESULT, CallTimeout, CompiledEndpoint, Runtime, truncation_text
from ..notifications import current_request, server_loop
from ..records import UserContext
from ..typesystem import to_jsonable

log = logging.getLogger(__name__)

RESOURCE_NOT_FOUND = -32002  # the MCP specification's code for an unknown resource URI
# Absolute paths (two segments or more) in messages from user code: clients never see the server's layout.
_PATH = re.compile(r"(?<![\w:/.])/(?:[\w.@+-]+/)+[\w.@+-]*")
_STRING_TYPES = {"integer": int, "number": float}


@attrs.define(eq=False)
class _Entry:
    """One served endpoint: what the call path needs, precomputed."""

    compiled: CompiledEndpoint
    key: str
    structured: str  # "object": the result is the structured content; "wrap": {"result": ...}; "": none
    mime_type: str | None = None
    string_types: dict[str, Any] = attrs.Factory(dict)  # how to read string arguments (URI values, prompt args)


class Catalog:
    """The served endpoints and their MCP listings, built from a started runtime, and again after a reload swaps
    in new definitions (`refresh`, on the event loop: a request never sees a half-built catalog)."""

    KINDS = ("tools", "resources", "prompts")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Lists that changed in reloads and were not announced to clients yet (`notifications/*/list_changed`).
        self.unannounced: set[str] = set()
        self._build()

    def current(self) -> Catalog:
        """This catalog, rebuilt first if a reload swapped in new definitions since it was built."""
        if self.generation != self.runtime.generation:
            self.refresh()
        return self

    def refresh(self) -> set[str]:
        """Rebuild from the runtime's definitions; returns the lists that changed (also kept in `unannounced`)."""
        before = (self.list_tools, self.list_resources, self.list_templates, self.list_prompts)
        self._build()
        changed = set()
        if before[0] != self.list_tools:
            changed.add("tools")
        if before[1] != self.list_resources or before[2] != self.list_templates:
            changed.add("resources")
        if before[3] != self.list_prompts:
            changed.add("prompts")
        self.unannounced |= changed
        return changed

    def _build(self) -> None:
        runtime = self.runtime
        self.generation = runtime.generation  # read first: a swap while building is caught by the next `current`
        self.tools: dict[str, _Entry] = {}
        self.resources: dict[str, _Entry] = {}
        self.templates: dict[str, _Entry] = {}
        self.prompts: dict[str, _Entry] = {}
        self.input_schemas: dict[str, dict[str, Any]] = {}
        tools: list[types.Tool] = []
        resources: list[types.Resource] = []
        templates: list[types.ResourceTemplate] = []
        prompts: list[types.Prompt] = []
        for (kind, key), compiled in sorted(runtime.compiled.items()):
            definition = compiled.definition
            if kind == "tool":
                entry = _Entry(compiled, key, {"object": "object", "array": "wrap", "scalar": "wrap"}.get(
                    compiled.returns.kind, ""))
                self.tools[key] = entry
                schema = compiled.parameters.json_schema()
                self.input_schemas[key] = schema
                tools.append(types.Tool(
                    name=key,
                    title=definition.annotations.get("title"),
                    description=definition.description or None,
                    input_schema=schema,
                    output_schema=None if _reshaped(definition) else compiled.returns.output_schema(),
                    annotations=_annotations(definition.annotations),
                ))
            elif kind == "resource":
                mime_type = getattr(definition, "mime_type", None)
                entry = _Entry(compiled, key, "", mime_type=mime_type, string_types=_string_types(compiled))
                if "{" in key:
                    self.templates[key] = entry
                    templates.append(types.ResourceTemplate(
                        uri_template=key, name=definition.name or key,
                        description=definition.description or None, mime_type=mime_type,
                    ))
                else:
                    self.resources[key] = entry
                    resources.append(types.Resource(
                        uri=key, name=definition.name or key,
                        description=definition.description or None, mime_type=mime_type,
                    ))
            elif kind == "prompt":
                self.prompts[key] = _Entry(compiled, key, "", string_types=_string_types(compiled))
                prompts.append(types.Prompt(
                    name=key,
                    title=definition.annotations.get("title"),
                    description=definition.description or None,
                    arguments=[
                        types.PromptArgument(name=p.name, description=p.type.description or None,
                                             required=p.required)
                        for p in definition.parameters
                    ],
                ))
        self.list_tools = types.ListToolsResult(tools=tools)
        self.list_resources = types.ListResourcesResult(resources=resources)
        self.list_templates = types.ListResourceTemplatesResult(resource_templates=templates)
        self.list_prompts = types.ListPromptsResult(prompts=prompts)
        # Plugins may hide endpoints from some callers (`endpoint_visible`): then lists are made per caller.
        self.per_caller = runtime.hooks.decides_visibility

    def visible_list(self, listing: Any, field: str, key: str, entries: Mapping[str, _Entry], user: UserContext) -> Any:
        """The listing as `user` may see it: the prebuilt one when nothing can be hidden or nothing is.

        `key` is the attribute of a listed item that names its entry (`name`, `uri`, `uri_template`)."""
        if not self.per_caller:
            return listing
        items = getattr(listing, field)
        kept = [item for item in items
                if self.runtime.visible(entries[str(getattr(item, key))].compiled.definition, user)]
        if len(kept) == len(items):
            return listing
        return type(listing)(**{field: kept})

    def find(self, kind: str, name: str, user: UserContext) -> tuple[_Entry, tuple[CompiledEndpoint, dict[str, Any]]]:
        """The served entry for a name (a URI for resources, templates included) as `user` may see it, with the
        runtime's lookup, which the call then reuses. Unknown and hidden alike raise NotFoundError, with the
        runtime's message (a did-you-mean among what the caller may see, or why a skipped endpoint is not served).
        """
        found = self.runtime.endpoint(kind, name, user)
        key = found[0].key
        entries = self.tools if kind == "tool" else self.prompts if kind == "prompt" else None
        entry = entries.get(key) if entries is not None else self.resources.get(key) or self.templates.get(key)
        if entry is None or entry.compiled is not found[0]:
            # The runtime swapped in new definitions after this catalog was last brought up to date.
            self.refresh()
            return self.find(kind, name, user)  # ends: refresh builds from the same definitions the lookup saw
        return entry, found


def create_server(runtime: Runtime, *, name: str | None = None, remote: bool = False) -> Server:
    """A low-level MCP Server for a started runtime. The caller owns `runtime.start()` and `stop()`.

    `remote`: served over HTTP, where every request must carry its HTTP request (and credentials); one that does
    not is refused rather than run as the local (stdio) caller.
    """
    from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

    catalog = Catalog(runtime)
    scrub = _Scrubber(runtime)
    changes = InMemorySubscriptionBus()

    hooks = runtime.hooks
    identifies = bool(hooks.pm.hook.identify_caller.get_hookimpls())
    # A stdio server has one caller: identified at start (a configured identity, say), and again after a reload
    # brought a new configuration (an error at start stops the server; after a reload, it refuses requests).
    stdio = {"user": UserContext.anonymous(), "generation": runtime.generation}
    if identifies and not remote:
        stdio["user"] = hooks.identify_caller("stdio", None, runtime.context)

    def caller_of(ctx: ServerRequestContext[Any]) -> UserContext:
        request = ctx.request
        if request is None and remote:
            raise MCPError(code=types.INVALID_REQUEST, message="the caller could not be identified")
        if not identifies:
            return UserContext.anonymous()
        if request is None and stdio["generation"] == runtime.generation:
            return stdio["user"]
        try:
            if request is None:
                generation = runtime.generation
                stdio["user"] = hooks.identify_caller("stdio", None, runtime.context)
                stdio["generation"] = generation
                return stdio["user"]
            return hooks.identify_caller("http", request, runtime.context)
        except MxcpError as exc:
            raise MCPError(code=types.INVALID_REQUEST, message=redaction.mask(str(exc))) from None
        except Exception:  # noqa: BLE001 - an identity that cannot be established refuses the request
            log.exception("identifying the caller failed")
            raise MCPError(code=types.INVALID_REQUEST, message="the caller could not be identified") from None

    def identity(ctx: ServerRequestContext[Any], user: UserContext) -> dict[str, Any]:
        request = ctx.request
        if request is None:
            return {"caller": "stdio", "user": user}
        return {"caller": "http", "session_id": request.headers.get("mcp-session-id"), "user": user}

    async def run(ctx: ServerRequestContext[Any], kind: str, key: str, arguments: Mapping[str, Any],
                  user: UserContext, found: Any) -> Any:
        value, _ = await run_with_notes(ctx, kind, key, arguments, user, found)
        return value

    async def run_with_notes(
        ctx: ServerRequestContext[Any], kind: str, key: str, arguments: Mapping[str, Any], user: UserContext,
        found: Any,
    ) -> tuple[Any, dict[str, Any]]:
        tokens = current_request.set(ctx), server_loop.set(asyncio.get_running_loop())
        try:
            value, call = await runtime.call_async_with_call(kind, key, arguments, found=found,
                                                             **identity(ctx, user))
            return value, call.notes
        finally:
            server_loop.reset(tokens[1])
            current_request.reset(tokens[0])

    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        served = catalog.current()
        return served.visible_list(served.list_tools, "tools", "name", served.tools, caller_of(ctx))

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        user = caller_of(ctx)
        try:
            entry, found = catalog.current().find("tool", params.name, user)
        except NotFoundError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=redaction.mask(str(exc))) from None
        arguments = params.arguments or {}
        try:
            value, notes = await run_with_notes(ctx, "tool", entry.key, arguments, user, found)
        except Exception as exc:  # noqa: BLE001 - every failure is a result the model can read
            return _error_result(scrub.message(exc, entry, arguments))
        return _tool_result(entry, value, notes.get("truncated"), notes.get(ENCODED_RESULT))

    async def list_resources(ctx: ServerRequestContext[Any], params: Any) -> types.ListResourcesResult:
        served = catalog.current()
        return served.visible_list(served.list_resources, "resources", "uri", served.resources, caller_of(ctx))

    async def list_templates(ctx: ServerRequestContext[Any], params: Any) -> types.ListResourceTemplatesResult:
        served = catalog.current()
        return served.visible_list(served.list_templates, "resource_templates", "uri_template", served.templates,
                                   caller_of(ctx))

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        user = caller_of(ctx)
        try:
            entry, found = catalog.current().find("resource", uri, user)
        except NotFoundError:
            raise MCPError(code=RESOURCE_NOT_FOUND, message=f"Unknown resource: {uri}") from None
        arguments = _read_strings(entry, found[1])
        try:
            # The URI's values, read as their declared types, are the arguments (not the raw strings).
            value, notes = await run_with_notes(ctx, "resource", entry.key, arguments, user, (found[0], {}))
        except Exception as exc:  # noqa: BLE001
            raise scrub.protocol_error(exc, entry, arguments) from None
        truncated = notes.get("truncated")
        contents = _resource_contents(uri, entry.mime_type, value, notes.get(ENCODED_RESULT))
        return types.ReadResourceResult(contents=[contents],
                                        meta={TRUNCATED_META: dict(truncated)} if truncated else None)

    async def list_prompts(ctx: ServerRequestContext[Any], params: Any) -> types.ListPromptsResult:
        served = catalog.current()
        return served.visible_list(served.list_prompts, "prompts", "name", served.prompts, caller_of(ctx))

    async def get_prompt(ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams) -> types.GetPromptResult:
        user = caller_of(ctx)
        try:
            entry, found = catalog.current().find("prompt", params.name, user)
        except NotFoundError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=redaction.mask(str(exc))) from None
        arguments = _read_strings(entry, params.arguments or {})
        try:
            messages = await run(ctx, "prompt", entry.key, arguments, user, found)
        except Exception as exc:  # noqa: BLE001
            raise scrub.protocol_error(exc, entry, arguments) from None
        return types.GetPromptResult(
            description=entry.compiled.definition.description or None,
            messages=[
                types.PromptMessage(role=m["role"], content=types.TextContent(type="text", text=m["content"]["text"]))
                for m in messages
            ],
        )

    server: Server = _Server(
        name or runtime.context.name,
        version=_version(),
        instructions=runtime.context.site.description,
        get_tool_input_schema=lambda name: catalog.current().input_schemas.get(name),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        # Clients on the 2026-07-28 protocol hear of changed lists on a `subscriptions/listen` stream.
        on_subscriptions_listen=ListenHandler(changes),
    )
    # Our guard instead of the default OpenTelemetry middleware (a no-op without an exporter, yet ~6 % per call);
    # a telemetry plugin that is on puts it back through `tracing` (the SDK's server span, and its own observer).
    from .. import tracing

    server.inflight = InFlight(changes)  # type: ignore[attr-defined]
    server.middleware = [server.inflight.track, *tracing.server_middleware(), _guard]  # type: ignore[attr-defined]
    server.catalog = catalog  # type: ignore[attr-defined] - for tests and tools that inspect what is served
    runtime.add_reload_listener(lambda: server.inflight.announce(catalog))
    return server


class _Server(Server):
    """The SDK's server, telling clients that its lists may change (a reload swaps in new definitions)."""

    def create_initialization_options(self, notification_options: Any = None, *args: Any, **kwargs: Any) -> Any:
        from mcp.server import NotificationOptions

        if notification_options is None:
            notification_options = NotificationOptions(prompts_changed=True, resources_changed=True,
                                                       tools_changed=True)
        return super().create_initialization_options(notification_options, *args, **kwargs)


class InFlight:
    """Requests being handled, so a transport can let them finish before it closes (stdin at EOF); and the
    clients' connections, to tell them when a reload changed what they can list."""

    def __init__(self, changes: Any = None) -> None:
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.changes = changes  # the subscriptions bus of `subscriptions/listen` streams (2026-07-28 clients)

    def announce(self, catalog: Catalog) -> None:
        """From a reload's thread: on the server's loop, rebuild the lists and notify the connected clients."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return  # no client has connected yet: the next request finds the new definitions itself
        loop.call_soon_threadsafe(lambda: loop.create_task(self._announce(catalog)))

    async def _announce(self, catalog: Catalog) -> None:
        import anyio
        from mcp.server.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged

        catalog.current()
        changed, catalog.unannounced = catalog.unannounced, set()
        if self.changes is not None:
            events = {"tools": ToolsListChanged, "resources": ResourcesListChanged, "prompts": PromptsListChanged}
            for kind in sorted(changed):
                await self.changes.publish(events[kind]())
        # Clients of the handshake protocols: a notification on each connection's own stream (the SDK drops these
        # on 2026-07-28 connections, which listen above instead).
        for connection in list(self.connections):
            for kind in Catalog.KINDS:
                if kind not in changed:
                    continue
                send = getattr(connection, f"send_{kind[:-1]}_list_changed")
                # Best effort: a client that left (or never opened a stream for server messages) misses it.
                with anyio.move_on_after(2), contextlib.suppress(Exception):
                    await send()
        if changed:
            log.info("told %d client(s) that the %s list(s) changed", len(self.connections),
                     ", ".join(sorted(changed)))

    async def track(self, ctx: ServerRequestContext[Any], call_next: Any) -> Any:
        if ctx.request_id is None:
            return await call_next(ctx)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        # The SDK's per-request session holds the connection that outlives it (no public accessor in 2.x).
        connection = getattr(ctx.session, "_connection", None)
        if connection is not None:
            self.connections.add(connection)
        self.count += 1
        try:
            return await call_next(ctx)
        finally:
            self.count -= 1

    async def drained(self) -> None:
        import anyio

        await anyio.sleep(0.02)  # the last requests read may not have reached a handler yet
        while self.count:
            await anyio.sleep(0.01)


async def _guard(ctx: ServerRequestContext[Any], call_next: Any) -> Any:
    """An exception escaping a handler would reach the client as its own text: send a generic error instead."""
    try:
        return await call_next(ctx)
    except (MCPError, PydanticValidationError):
        raise
    except Exception:
        log.exception("handling %s failed", ctx.method)
        raise MCPError(code=types.INTERNAL_ERROR, message="Internal error") from None


# `_meta` key of a result cut to the limits of mxcp-site.yml: {reason, limit, rows_returned, rows_total}.
TRUNCATED_META = "mxcp/truncated"


def _tool_result(entry: _Entry, value: Any, truncated: Mapping[str, Any] | None = None,
                 encoded: tuple[Any, Any, bytes] | None = None) -> types.CallToolResult:
    data, text = _json_form(value, encoded)
    structured = None
    if entry.structured == "wrap":
        structured = {"result": data}
    elif entry.structured == "object" and isinstance(data, dict):
        structured = data
    content = [types.TextContent(type="text", text=text)]
    meta = None
    if truncated:
        # Said twice: in `_meta` for programs, and as text for the model, which does not see `_meta`.
        meta = {TRUNCATED_META: dict(truncated)}
        content.append(types.TextContent(type="text", text=truncation_text(truncated)))
    return types.CallToolResult(content=content, structured_content=structured, meta=meta)


def _reshaped(definition: Any) -> bool:
    """Whether output policies may drop or mask fields: the declared schema then no longer describes the result,
    and clients check structured content against the schema they were given, so none is given."""
    output = (definition.policies or {}).get("output") if isinstance(definition.policies, Mapping) else None
    return any(isinstance(rule, Mapping) and rule.get("action") not in ("deny", "warn") for rule in output or ())


def _error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def _json_form(value: Any, encoded: tuple[Any, Any, bytes] | None) -> tuple[Any, str]:
    """A result's JSON-ready form and its text: a string as itself, anything else as JSON."""
    if encoded is not None and encoded[0] is value:
        # Encoded once already, when the runtime measured it (a wrapper that changed the result made a new one).
        data = encoded[1]
        return data, data if isinstance(data, str) else encoded[2].decode("utf-8")
    data = to_jsonable(value)
    # pydantic-core writes JSON several times faster than the json module: it matters for large results.
    return data, data if isinstance(data, str) else to_json(data).decode("utf-8")


def _resource_contents(uri: str, mime_type: str | None, value: Any,
                       encoded: tuple[Any, Any, bytes] | None = None) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64

        return types.BlobResourceContents(uri=uri, mime_type=mime_type or "application/octet-stream",
                                          blob=base64.b64encode(bytes(value)).decode("ascii"))
    data, text = _json_form(value, encoded)
    if isinstance(data, str):
        return types.TextResourceContents(uri=uri, mime_type=mime_type or "text/plain", text=text)
    return types.TextResourceContents(uri=uri, mime_type=mime_type or "application/json", text=text)


def _annotations(values: Mapping[str, Any]) -> types.ToolAnnotations | None:
    if not values:
        return None
    try:
        return types.ToolAnnotations.model_validate(dict(values))
    except PydanticValidationError:
        log.warning("ignoring invalid tool annotations %r", dict(values))
        return None


def _string_types(compiled: CompiledEndpoint) -> dict[str, Any]:
    """Declared types of parameters that arrive as strings (URI template values, prompt arguments)."""
    return {p.name: p.type.type for p in compiled.definition.parameters}


def _read_strings(entry: _Entry, values: Mapping[str, Any]) -> dict[str, Any]:
    """URI values and prompt arguments are strings: read them as the declared type (`"2"` → 2 for an integer)."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        declared = entry.string_types.get(key)
        if isinstance(value, str) and declared not in (None, "string"):
            try:
                if declared in _STRING_TYPES:
                    number = _STRING_TYPES[declared](value)
                    value = int(number) if declared == "number" and number.is_integer() and "." not in value \
                        else number
                elif declared == "boolean" and value.lower() in ("true", "false"):
                    value = value.lower() == "true"
                elif declared in ("array", "object"):
                    value = json.loads(value)
            except ValueError:
                pass  # left as given: validation names the parameter and the expected type
        result[key] = value
    return result


class _Scrubber:
    """Client-visible error text: one line, no secrets, no sensitive arguments, no file paths, no SQL."""

    def __init__(self, runtime: Runtime) -> None:
        self.root = str(runtime.context.root)

    def message(self, exc: BaseException, entry: _Entry, arguments: Mapping[str, Any]) -> str:
        if isinstance(exc, MCPError):
            raise exc
        if isinstance(exc, CallTimeout):
            text = str(exc)
        elif isinstance(exc, MxcpError):
            text = str(exc) or type(exc).__name__
        else:
            # Not one of ours: a bug somewhere. The log keeps the traceback; the client gets the kind only.
            log.error("%s '%s' failed", entry.compiled.kind, entry.key, exc_info=exc)
            text = f"Internal error ({type(exc).__name__})"
        return self.clean(text, entry, arguments)

    def protocol_error(self, exc: BaseException, entry: _Entry, arguments: Mapping[str, Any]) -> MCPError:
        """Bad arguments are the client's to fix (invalid params); anything else is an internal error."""
        code = types.INVALID_PARAMS if isinstance(exc, ValidationError) else types.INTERNAL_ERROR
        return MCPError(code=code, message=self.message(exc, entry, arguments))

    def clean(self, text: str, entry: _Entry, arguments: Mapping[str, Any]) -> str:
        text = text.strip().split("\n", 1)[0]
        sensitive = redaction.hidden_values(arguments, entry.compiled.parameters.redact(arguments)) if arguments else []
        text = redaction.mask(text, extra=sensitive)
        text = text.replace(self.root, "<project>")
        return _PATH.sub("<path>", text)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mxcp-pluggy")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0"
