"""Builtin plugin: OpenTelemetry traces and metrics, exported over OTLP/HTTP (the `otel` extra).

Off by default, and then free: nothing is installed, OpenTelemetry is never imported, the server runs without the
SDK's tracing middleware. On (`telemetry: {enabled: true}` in the user config's profile, or
MXCP_TELEMETRY_ENABLED=1), `on_init` sets up a tracer and a meter provider with OTLP/HTTP exporters, puts the MCP
SDK's server span back on every request (it reads a client's trace context from `params._meta`), and nests spans
under it: the endpoint call (a wrapper this plugin registers only while on), policy evaluation and the executors'
work (through `mxcp_core.tracing`).
Spans never carry argument values, results, SQL text or secrets; an error is recorded as its type and its first line
with secrets and every argument value masked. docs/telemetry.md describes the spans, attributes and metrics.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from mxcp_core import (
    ConfigSection,
    MxcpError,
    Seconds,
    env_flag,
    hookimpl,
    tracing,
)

log = logging.getLogger(__name__)

OTEL_EXTRA = "mxcp-pluggy[otel]"
DEFAULT_SERVICE_NAME = "mxcp"
# The semantic conventions' advice for mcp.server.operation.duration (seconds).
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# How long stopping waits for the collector to take what is left; an unreachable one must not hold up the exit.
FLUSH_SECONDS = 5.0
# MCP methods recorded by name in metrics; any other (a client may send anything) is "_OTHER", so a hostile client
# cannot grow the number of time series.
KNOWN_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get", "completion/complete",
    "logging/setLevel", "server/discover", "notifications/initialized", "notifications/cancelled",
    "notifications/progress", "notifications/roots/list_changed",
})
METHOD_OF_KIND = {"tool": "tools/call", "resource": "resources/read", "prompt": "prompts/get"}


# -- configuration --------------------------------------------------------------------------------------------


def _check_url(_: Any, attribute: Any, value: str | None) -> None:
    # The value stays out of the message: a URL may carry credentials.
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL (the OTLP/HTTP base URL)")


@attrs.define
class TracingSettings:
    enabled: bool = True
    # Spans also printed, to stderr (stdout carries the protocol when serving over stdio).
    console_export: bool = False


@attrs.define
class MetricsSettings:
    enabled: bool = True
    # Seconds between exports; None: OTEL_METRIC_EXPORT_INTERVAL (milliseconds), else 60 s.
    export_interval: Seconds | None = None


@attrs.define
class TelemetrySettings:
    """`projects.<project>.profiles.<profile>.telemetry` of the user config (the original's keys)."""

    enabled: bool = False
    # OTLP/HTTP base URL (`http://collector:4318`): /v1/traces and /v1/metrics are added. None: the OTEL_EXPORTER_OTLP_*
    # variables, else http://localhost:4318.
    endpoint: str | None = attrs.field(default=None, validator=_check_url)
    # Sent with every export (e.g. an Authorization header: use a secret reference). Empty: OTEL_EXPORTER_OTLP_HEADERS.
    headers: dict[str, str] = attrs.Factory(dict)
    service_name: str | None = None
    service_version: str | None = None
    environment: str | None = None
    resource_attributes: dict[str, str] = attrs.Factory(dict)
    tracing: TracingSettings = attrs.Factory(TracingSettings)
    metrics: MetricsSettings = attrs.Factory(MetricsSettings)


@hookimpl
def config_sections():
    return [ConfigSection("telemetry", TelemetrySettings, scope="user_profile",
                          description="OpenTelemetry traces and metrics over OTLP/HTTP")]


def effective_settings(project: Any) -> TelemetrySettings | None:
    """The project's telemetry settings when telemetry is on, else None.

    MXCP_TELEMETRY_ENABLED (when set) overrides `enabled`; OTEL_SDK_DISABLED=true switches everything off, as it
    does for any OpenTelemetry SDK; OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER=none switch one signal off."""
    settings: TelemetrySettings = project.plugin_config("telemetry", scope="user_profile")
    flag = env_flag("MXCP_TELEMETRY_ENABLED")
    if not (flag if flag is not None else settings.enabled) or env_flag("OTEL_SDK_DISABLED"):
        return None
    tracing_on = settings.tracing.enabled and os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() != "none"
    metrics_on = settings.metrics.enabled and os.environ.get("OTEL_METRICS_EXPORTER", "").strip().lower() != "none"
    if not (tracing_on or metrics_on):
        return None
    return attrs.evolve(settings, enabled=True,
                        tracing=attrs.evolve(settings.tracing, enabled=tracing_on),
                        metrics=attrs.evolve(settings.metrics, enabled=metrics_on))


# -- the providers (one set per process) ----------------------------------------------------------------------


@attrs.define(eq=False)
class Providers:
    """What on_init built. OpenTelemetry's global tracer provider (which the SDK's server span uses) can be set
    once per process, so these live as long as the process; a reload with other settings is refused."""

    settings: TelemetrySettings
    tracer_provider: Any = None
    meter_provider: Any = None
    tracer: Any = None
    operation_duration: Any = None
    calls: Any = None
    denials: Any = None

    unanswered: bool = False  # the last flush did not finish in time: the collector is not answering

    def flush(self) -> None:
        """Export what was recorded, waiting FLUSH_SECONDS at most (the exporters retry for longer)."""
        worker = threading.Thread(target=self._flush, name="mxcp-telemetry-flush", daemon=True)
        worker.start()
        worker.join(FLUSH_SECONDS)
        self.unanswered = worker.is_alive()
        if self.unanswered:
            log.warning("telemetry: the collector did not take the last spans and metrics within %.0f s; "
                        "they are dropped", FLUSH_SECONDS)

    def _flush(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                try:
                    provider.force_flush()
                except Exception:  # noqa: BLE001 - a failing collector must not stop a shutdown
                    log.warning("telemetry: flushing %s failed", type(provider).__name__, exc_info=True)

    def close(self) -> None:
        """At exit. Without an answer at the last flush, the exporters' threads are left to die with the process
        rather than retried against the silent collector once more."""
        if _active is not None:  # on_shutdown did not run (a start that failed half way)
            self.flush()
        if self.unanswered:
            return
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:  # noqa: BLE001
                    log.debug("telemetry: shutting down %s failed", type(provider).__name__, exc_info=True)


_providers: Providers | None = None  # built once per process
_active: Providers | None = None  # installed: between on_init and on_shutdown


def _missing_extra() -> MxcpError:
    return MxcpError(f"telemetry is enabled (the user config's `telemetry.enabled` or MXCP_TELEMETRY_ENABLED), but "
                     f"the OpenTelemetry SDK is not installed: pip install '{OTEL_EXTRA}'")


# What the OTLP/HTTP exporters implement: any other protocol or exporter named in the environment is refused
# rather than quietly replaced by these.
_SUPPORTED_ENV = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("http/protobuf",),
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": ("http/protobuf",),
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": ("http/protobuf",),
    "OTEL_TRACES_EXPORTER": ("otlp", "none"),
    "OTEL_METRICS_EXPORTER": ("otlp", "none"),
}


def _check_environment() -> None:
    for name, supported in _SUPPORTED_ENV.items():
        value = os.environ.get(name, "").strip().lower()
        if value and value not in supported:
            raise MxcpError(f"telemetry: {name}={value} is not supported; mxcp exports over OTLP/HTTP "
                            f"({name} may be {' or '.join(supported)}, or unset)")


def build_providers(settings: TelemetrySettings) -> Providers:
    _check_environment()
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
        )
    except ImportError:
        raise _missing_extra() from None

    resource = Resource.create(_resource_attributes(settings))
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    headers = dict(settings.headers) or None
    built = Providers(settings=settings)
    if settings.tracing.enabled:
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # our close() instead
        provider.add_span_processor(BatchSpanProcessor(_without_error_texts(OTLPSpanExporter(
            endpoint=_signal_url(settings, "traces"), headers=headers))))
        if settings.tracing.console_export:
            provider.add_span_processor(BatchSpanProcessor(_without_error_texts(ConsoleSpanExporter(out=sys.stderr))))
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            # Set before us (opentelemetry-instrument, a sitecustomize): the SDK's server spans would go there and
            # ours would point at parents never exported. Refuse rather than export half a trace.
            raise MxcpError("telemetry: another OpenTelemetry tracer provider was set in this process before mxcp's "
                            "(opentelemetry-instrument?); run mxcp without it, or set telemetry.enabled: false and "
                            "configure that one")
        built.tracer_provider = provider
        built.tracer = provider.get_tracer("mxcp", _version())
    if settings.metrics.enabled:
        interval = settings.metrics.export_interval
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=_signal_url(settings, "metrics"), headers=headers),
            export_interval_millis=None if interval is None else interval * 1000,
        )
        built.meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
        meter = built.meter_provider.get_meter("mxcp", _version())
        built.operation_duration = meter.create_histogram(
            "mcp.server.operation.duration", unit="s", description="Duration of MCP requests as the server saw them",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        built.calls = meter.create_counter("mxcp.calls", unit="{call}", description="Endpoint calls run")
        built.denials = meter.create_counter("mxcp.policy.denials", unit="{call}",
                                             description="Endpoint calls a policy denied")
    atexit.register(built.close)
    return built


def _without_error_texts(exporter: Any) -> Any:
    """`exporter`, given spans whose error texts are removed: a status description or an exception event may quote
    an argument, a SQL literal or a secret (the SDK's server span copies protocol error messages verbatim), so
    only the error's type (`error.type`) leaves the process."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Status

    class WithoutErrorTexts(SpanExporter):
        def export(self, spans: Any) -> Any:
            return exporter.export([_scrubbed(span) for span in spans])

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return exporter.force_flush(timeout_millis)

    def _scrubbed(span: Any) -> Any:
        events = [event for event in span.events if event.name != "exception"]
        if not span.status.description and len(events) == len(span.events):
            return span
        return ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes=span.attributes, events=events, links=span.links, kind=span.kind,
            status=Status(span.status.status_code), start_time=span.start_time, end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    return WithoutErrorTexts()


def _resource_attributes(settings: TelemetrySettings) -> dict[str, str]:
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; these (the config's) win over them.
    attributes = dict(settings.resource_attributes)
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    attributes.setdefault("service.version", settings.service_version or _version())
    if settings.environment:
        attributes["deployment.environment.name"] = settings.environment
    return attributes


def _signal_url(settings: TelemetrySettings, signal: str) -> str | None:
    """The configured endpoint's URL for one signal; None lets the exporter read OTEL_EXPORTER_OTLP_*."""
    if not settings.endpoint:
        return None
    return f"{settings.endpoint.rstrip('/')}/v1/{signal}"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mxcp-pluggy")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0"


# -- lifecycle ------------------------------------------------------------------------------------------------


@hookimpl
def on_init(runtime: Any) -> None:
    global _providers, _active
    settings = effective_settings(runtime.context)
    if settings is None:
        return
    if _providers is None:
        _providers = build_providers(settings)
    elif _providers.settings != settings:
        raise MxcpError("the telemetry settings changed, and OpenTelemetry's providers are set once per process: "
                        "restart to apply them")
    _active = _providers
    middleware = []
    if _providers.tracer is not None:
        from mcp.server._otel import (
            OpenTelemetryMiddleware,  # the SDK's own server span, back in place
        )

        middleware.append(OpenTelemetryMiddleware())
    middleware.append(RequestObserver(_providers, runtime))
    tracing.install(SpanBackend(_providers.tracer) if _providers.tracer is not None else None, middleware)
    runtime.register_plugin(CallObserver(_providers), CallObserver.name)


@hookimpl
def on_shutdown(runtime: Any) -> None:
    global _active
    if _active is None:
        return
    tracing.uninstall()
    runtime.unregister_plugin(CallObserver.name)
    providers, _active = _active, None
    if getattr(runtime, "reloading", False):
        return  # the providers outlive a reload, exporting in the background: calls never wait on the collector
    providers.flush()  # a stdio client leaving, SIGTERM: what was recorded is exported before the process ends


@hookimpl
def check_reload(project: Any, fresh: Any) -> str | None:
    # Applied at start only: the SDK's server span needs OpenTelemetry's global tracer provider, set once.
    if effective_settings(fresh) != effective_settings(project):
        return "the user config's telemetry section changed: restart the server to apply it"
    return None


# -- spans ----------------------------------------------------------------------------------------------------


class SpanBackend:
    """`mxcp_core.tracing`'s backend: spans of our tracer, nested in the current one (the SDK's server span)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None) -> Iterator[Any]:
        # The SDK's own recording would store the exception's text as it is: ours masks it first.
        with self.tracer.start_as_current_span(name, attributes=attributes, record_exception=False,
                                               set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                record_failure(span, exc)
                raise


def record_failure(span: Any, exc: BaseException, error_type: str | None = None) -> None:
    """The error's type, never its text: a message may quote an argument, a SQL literal or a secret."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type or _error_type(exc))
    span.set_status(Status(StatusCode.ERROR))


def _error_type(exc: BaseException) -> str:
    import asyncio

    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)) or type(exc).__name__ == "CallInterrupted":
        return "cancelled"
    return type(exc).__qualname__


def _call_attributes(call: Any) -> dict[str, Any]:
    endpoint = call.endpoint
    kind, key = endpoint.kind, endpoint.key
    attributes: dict[str, Any] = {
        "mxcp.endpoint.kind": kind,
        "mxcp.endpoint.name": key,
        "mxcp.caller": call.caller,
    }
    method = METHOD_OF_KIND.get(kind)
    if method:
        attributes["mcp.method.name"] = method
    if kind == "tool":
        attributes["gen_ai.tool.name"] = key
        attributes["gen_ai.operation.name"] = "execute_tool"
    elif kind == "prompt":
        attributes["gen_ai.prompt.name"] = key
    language = getattr(endpoint, "language", None)
    if language:
        attributes["mxcp.execution.language"] = language
    if call.session_id:
        attributes["mcp.session.id"] = call.session_id
    return attributes


class CallObserver:
    """The endpoint call's span and the call counters: registered only while telemetry is on, so a call with it
    off does not even pass through a wrapper."""

    name = "telemetry:calls"

    def __init__(self, providers: Providers) -> None:
        self.providers = providers

    @hookimpl(wrapper=True, tryfirst=True)  # outer to policies and executors: their spans nest in the call's
    def call_endpoint(self, call: Any) -> Any:
        providers = self.providers
        attributes = _call_attributes(call)
        error_type: str | None = None
        try:
            if providers.tracer is None:
                try:
                    return (yield)
                except BaseException as exc:
                    error_type = _error_type(exc)
                    raise
            with providers.tracer.start_as_current_span(
                    f"mxcp.{call.endpoint.kind} {call.endpoint.key}", attributes=attributes,
                    record_exception=False, set_status_on_exception=False) as span:
                # The audit record (written inside this wrapper) then names the trace: logs and traces correlate.
                context = span.get_span_context()
                if context.is_valid:
                    call.trace_id = format(context.trace_id, "032x")
                try:
                    return (yield)
                except BaseException as exc:
                    error_type = _error_type(exc)
                    record_failure(span, exc, error_type)
                    raise
                finally:
                    decision = call.notes.get("policy_decision")
                    if decision:
                        span.set_attribute("mxcp.policy.decision", decision)
        finally:
            if providers.calls is not None:
                counted = {name: attributes[name] for name in
                           ("mxcp.endpoint.kind", "mxcp.endpoint.name", "mxcp.caller", "gen_ai.tool.name")
                           if name in attributes}
                if call.notes.get("policy_decision") == "deny":
                    providers.denials.add(1, counted)
                if error_type:
                    counted["error.type"] = error_type
                providers.calls.add(1, counted)


# -- per request (MCP server middleware) ----------------------------------------------------------------------


class RequestObserver:
    """Inside the SDK's server span: adds `mcp.session.id` to it, and records mcp.server.operation.duration."""

    def __init__(self, providers: Providers, runtime: Any) -> None:
        self.providers = providers
        self.runtime = runtime

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        from mcp import MCPError
        from mcp.types import INVALID_PARAMS
        from pydantic import ValidationError as PydanticValidationError

        session_id = _session_id(ctx)
        if session_id and self.providers.tracer is not None:
            from opentelemetry import trace

            trace.get_current_span().set_attribute("mcp.session.id", session_id)
        histogram = self.providers.operation_duration
        if histogram is None:
            return await call_next(ctx)
        started = time.perf_counter()
        error_type: str | None = None
        try:
            result = await call_next(ctx)
        except MCPError as exc:
            error_type = str(exc.error.code)
            raise
        except PydanticValidationError:
            error_type = str(INVALID_PARAMS)  # as the SDK's server span says: the request's params did not parse
            raise
        except BaseException as exc:  # a cancelled request too: never counted as a success
            error_type = _error_type(exc)
            raise
        else:
            if ctx.method == "tools/call" and _is_tool_error(result):
                error_type = "tool_error"
            return result
        finally:
            histogram.record(time.perf_counter() - started, self._attributes(ctx, error_type))

    def _attributes(self, ctx: Any, error_type: str | None) -> dict[str, Any]:
        method = ctx.method if ctx.method in KNOWN_METHODS else "_OTHER"
        attributes: dict[str, Any] = {"mcp.method.name": method}
        name = ctx.params.get("name") if isinstance(ctx.params, Mapping) else None
        # Only names that are served: a client's made-up names would each start a new time series.
        if isinstance(name, str):
            if method == "tools/call" and self.runtime.compiled_endpoint("tool", name) is not None:
                attributes["gen_ai.tool.name"] = name
            elif method == "prompts/get" and self.runtime.compiled_endpoint("prompt", name) is not None:
                attributes["gen_ai.prompt.name"] = name
        if error_type:
            attributes["error.type"] = error_type
        return attributes


def _session_id(ctx: Any) -> str | None:
    request = getattr(ctx, "request", None)
    headers = getattr(request, "headers", None)
    return headers.get("mcp-session-id") if headers is not None else None


def _is_tool_error(result: Any) -> bool:
    if isinstance(result, Mapping):
        return result.get("isError") is True
    return getattr(result, "is_error", False) is True
