"""A small OTLP/HTTP receiver on 127.0.0.1: what an OpenTelemetry collector gets, decoded with opentelemetry-proto.

    with OtlpReceiver() as receiver:          # a free port, served from a thread
        ... export to receiver.endpoint ...   # http://127.0.0.1:<port> (/v1/traces, /v1/metrics are added)
        receiver.wait_for(lambda r: r.spans())
        receiver.spans(), receiver.metric_points(), receiver.raw

The payloads are the real protobuf requests (`ExportTraceServiceRequest`, `ExportMetricsServiceRequest`); `raw`
keeps their bytes, so a test can check that a value appears nowhere in what was exported.
"""
from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

SPAN_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS_CODES = {0: "unset", 1: "ok", 2: "error"}


def plain(value: AnyValue) -> Any:
    """An OTLP attribute value as Python."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [plain(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which) if which else None


def attributes(items: Any) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in items}


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf exports of traces and metrics; keeps them decoded and raw."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.raw: list[bytes] = []
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) of each export
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path == "/v1/traces":
                    request, response = ExportTraceServiceRequest(), ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    request, response = ExportMetricsServiceRequest(), ExportMetricsServiceResponse()
                else:
                    self.send_error(404)
                    return
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.raw.append(body)
                    receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                    (receiver.traces if self.path == "/v1/traces" else receiver.metrics).append(request)
                payload = response.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # -- what was received ------------------------------------------------------------------------------------
    def spans(self) -> list[dict[str, Any]]:
        """Every span received, flattened: ids in hex, attributes and resource attributes as dicts."""
        with self.lock:
            requests = list(self.traces)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append({
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "kind": SPAN_KINDS.get(span.kind, str(span.kind)),
                            "attributes": attributes(span.attributes),
                            "status": STATUS_CODES.get(span.status.code, str(span.status.code)),
                            "status_message": span.status.message,
                            "events": [(event.name, attributes(event.attributes)) for event in span.events],
                            "scope": scope_spans.scope.name,
                            "resource": resource,
                        })
        return found

    def metric_points(self) -> list[dict[str, Any]]:
        """Every data point received: {name, unit, kind, attributes, value (sum or count), resource}."""
        with self.lock:
            requests = list(self.metrics)
        found = []
        for request in requests:
            for resource_metrics in request.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            value = point.count if kind in ("histogram", "exponential_histogram") else (
                                point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)
                            found.append({
                                "name": metric.name, "unit": metric.unit, "kind": kind,
                                "attributes": attributes(point.attributes), "value": value,
                                "bounds": list(getattr(point, "explicit_bounds", [])),
                                "resource": resource,
                            })
        return found

    def latest(self, name: str) -> list[dict[str, Any]]:
        """The data points of the last export that has metric `name` (cumulative: the last is the total)."""
        points = [p for p in self.metric_points() if p["name"] == name]
        if not points:
            return []
        # Each export repeats every series with its running total: keep the last point per attribute set.
        last: dict[tuple[Any, ...], dict[str, Any]] = {}
        for point in points:
            last[tuple(sorted((k, repr(v)) for k, v in point["attributes"].items()))] = point
        return list(last.values())

    def wait_for(self, predicate: Callable[[OtlpReceiver], Any], timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate(self)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError("the OTLP receiver did not get what was expected in time")
