"""OpenTelemetry (the `telemetry` plugin): `mxcp serve` exports to a real OTLP/HTTP receiver on 127.0.0.1.

The receiver (tests/otlp_receiver.py) decodes the protobuf requests the exporters send, so these tests see what a
collector would: the SDK's server span per request, ours nested under it, the semantic conventions' attributes,
the metrics, and that no secret, sensitive argument, argument value or SQL text is in any payload.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp.client.stdio import StdioServerParameters, stdio_client
from otlp_receiver import OtlpReceiver
from server_helpers import (
    free_port,
    health,
    http_server,
    mxcp_command,
    run_http,
    serve_env,
    wait_for,
)

from mxcp_core import ConfigError, open_project, tracing

SECRET = "s3cr3t-token-98765"
PASSWORD = "hunter2-sensitive-pw"
PLAIN_ARGUMENT = "plain-argument-value"
SQL_LITERAL = "literal-in-the-sql-text"
LOOKUP_SQL = (f"SELECT $id AS id, '{SQL_LITERAL}' AS tag, length($password) AS n, length($note) AS m "
              f"WHERE $password IS NOT NULL")
# Every value that must never reach the collector.
NEVER_EXPORTED = [SECRET, PASSWORD, PLAIN_ARGUMENT, SQL_LITERAL, "pw-for-the-failing-tool"]

PROJECT = {
    "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\n",
    "tools/lookup.yml": f"""\
        mxcp: 1
        tool:
          name: lookup
          parameters:
            - {{name: id, type: integer}}
            - {{name: password, type: string, sensitive: true}}
            - {{name: note, type: string, default: ""}}
          return: {{type: object, properties: {{id: {{type: integer}}, tag: {{type: string}}, n: {{type: integer}},
                    m: {{type: integer}}}}}}
          source: {{code: "{LOOKUP_SQL}"}}
          policies:
            input:
              - {{condition: "id == 13", action: deny, reason: "unlucky number"}}
        """,
    "tools/fail.yml": """\
        mxcp: 1
        tool:
          name: fail
          parameters: [{name: password, type: string, sensitive: true}]
          return: {type: string}
          source: {file: ../python/endpoints.py}
        """,
    "python/endpoints.py": """\
        from mxcp.runtime import get_secret

        def fail(password: str) -> str:
            raise RuntimeError(f"cannot log in with {password} and {get_secret('api')['value']}")
        """,
}


def telemetry_config(endpoint: str, **extra: Any) -> str:
    telemetry = {"enabled": True, "endpoint": endpoint, "service_name": "mxcp-test", "environment": "test",
                 "headers": {"x-collector-token": "collector-token-1"}, **extra}
    return textwrap.dedent(f"""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {{name: api, type: api, parameters: {{value: "{SECRET}"}}}}
                telemetry: {json.dumps(telemetry)}
        """)


@pytest.fixture
def project(make_project, user_config, tmp_path) -> Path:
    return make_project(tmp_path / "proj", PROJECT)


def run_legacy_http(url: str, body: Any) -> Any:
    """`await body(client)` over the classic (2025) protocol, which has sessions (`mcp-session-id`)."""
    async def main() -> Any:
        async with mcp.Client(url, mode="legacy") as client:
            return await body(client)

    return anyio.run(main)


def children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent_span_id"] == parent["span_id"] and s["trace_id"] == parent["trace_id"]]


def one(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def assert_nothing_sensitive(receiver: OtlpReceiver) -> None:
    payload = b"".join(receiver.raw)
    assert b"lookup" in payload, "the search would not find a string in the payloads"
    leaked = [value for value in NEVER_EXPORTED if value.encode() in payload]
    assert leaked == []


# -- HTTP ----------------------------------------------------------------------------------------------------


def test_http_serve_exports_the_sdk_server_span_our_nested_spans_and_metrics(project, user_config):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with OtlpReceiver() as receiver:
        user_config(telemetry_config(receiver.endpoint, metrics={"export_interval": 0.5}))
        with http_server(project, env={"MXCP_AUDIT_ENABLED": "1"}) as (base, _):
            async def body(client):
                ok = await client.call_tool("lookup", {"id": 1, "password": PASSWORD, "note": PLAIN_ARGUMENT})
                denied = await client.call_tool("lookup", {"id": 13, "password": PASSWORD})
                failed = await client.call_tool("fail", {"password": "pw-for-the-failing-tool"})
                traced = await client.call_tool("lookup", {"id": 2, "password": PASSWORD},
                                                meta={"traceparent": f"00-{trace_id}-{parent_id}-01"})
                return ok, denied, failed, traced

            ok, denied, failed, traced = run_legacy_http(f"{base}/mcp", body)
            assert ok.is_error is not True and ok.structured_content["tag"] == SQL_LITERAL
            assert denied.is_error and "unlucky number" in denied.content[0].text
            assert failed.is_error and traced.is_error is not True
            # Metrics are exported periodically while serving (every 0.5 s here).
            receiver.wait_for(lambda r: len([p for p in r.latest("mxcp.calls")]) >= 3)
        # SIGTERM: on_shutdown flushed the spans still batched.
        spans = receiver.wait_for(lambda r: [s for s in r.spans() if s["name"] == "mxcp.sql"] and r.spans())

    servers = [s for s in spans if s["kind"] == "server" and s["name"] == "tools/call lookup"]
    assert len(servers) == 3
    for server in servers:
        assert server["scope"] == "mcp-python-sdk"  # the SDK's own span, kept
        assert server["attributes"]["mcp.method.name"] == "tools/call"
        assert server["attributes"]["gen_ai.tool.name"] == "lookup"
        assert server["attributes"]["mcp.session.id"]  # added by the plugin: the HTTP session
        assert server["resource"]["service.name"] == "mxcp-test"
        assert server["resource"]["deployment.environment.name"] == "test"

    # The client's trace context (`params._meta.traceparent`) is honoured: same trace, the client's span as parent.
    remote = one([s for s in servers if s["trace_id"] == trace_id])
    assert remote["parent_span_id"] == parent_id
    call = one(children(spans, remote))
    assert call["name"] == "mxcp.tool lookup" and call["trace_id"] == trace_id

    # The allowed call: server span > call span > policy span and SQL span.
    first = min((s for s in servers if s["trace_id"] != trace_id and "error.type" not in s["attributes"]),
                key=lambda s: s["trace_id"])
    call = one(children(spans, first))
    assert call["kind"] == "internal" and call["scope"] == "mxcp"
    assert call["attributes"]["gen_ai.tool.name"] == "lookup"
    assert call["attributes"]["mcp.method.name"] == "tools/call"
    assert call["attributes"]["mcp.session.id"] == first["attributes"]["mcp.session.id"]
    assert call["attributes"]["mxcp.policy.decision"] == "allow"
    nested = {s["name"]: s for s in children(spans, call)}
    assert set(nested) == {"mxcp.policy input", "mxcp.sql"}
    assert nested["mxcp.policy input"]["attributes"]["mxcp.policy.decision"] == "allow"
    sql = nested["mxcp.sql"]["attributes"]
    assert sql["db.system"] == "duckdb" and sql["db.system.name"] == "duckdb"
    assert sql["db.operation.name"] == "SELECT"
    assert sql["mxcp.sql.sha256"] == hashlib.sha256(LOOKUP_SQL.encode()).hexdigest()
    assert sql["db.response.returned_rows"] == 1
    assert not any(key.startswith("db.query") for key in sql)

    # The denied call: the tool result is an error (the SDK's span says tool_error), the policy span says deny.
    refused = one([s for s in servers if s["attributes"].get("error.type") == "tool_error"])
    assert refused["status"] == "error"
    call = one(children(spans, refused))
    assert call["attributes"]["error.type"] == "PolicyDenied" and call["status"] == "error"
    assert call["attributes"]["mxcp.policy.decision"] == "deny"
    policy = one(children(spans, call))
    assert policy["name"] == "mxcp.policy input" and policy["attributes"]["mxcp.policy.decision"] == "deny"
    assert policy["attributes"]["error.type"] == "PolicyDenied"

    # The failing Python tool: its error's type is recorded, never its text (it quotes the password).
    failing = one([s for s in spans if s["kind"] == "server" and s["name"] == "tools/call fail"])
    assert failing["attributes"]["error.type"] == "tool_error"
    call = one(children(spans, failing))
    assert call["attributes"]["error.type"] == "ExecutionError" and call["status"] == "error"
    assert all(not s["status_message"] for s in spans), [s["status_message"] for s in spans if s["status_message"]]
    python = one(children(spans, call))
    assert python["name"] == "mxcp.python" and python["attributes"]["code.function.name"] == "fail"

    # The audit log names each call's trace, so a record leads to its trace and back.
    audited = [json.loads(line) for line in (project / "audit" / "logs-default.jsonl").read_text().splitlines()]
    assert {r["trace_id"] for r in audited if r["operation_name"] == "lookup"} == {s["trace_id"] for s in servers}

    assert_nothing_sensitive(receiver)
    assert all(headers.get("x-collector-token") == "collector-token-1" for _, headers in receiver.requests)

    durations = receiver.latest("mcp.server.operation.duration")
    lookups = {p["attributes"].get("error.type"): p for p in durations
               if p["attributes"].get("gen_ai.tool.name") == "lookup"}
    assert lookups[None]["value"] == 2 and lookups["tool_error"]["value"] == 1
    assert lookups[None]["unit"] == "s" and lookups[None]["kind"] == "histogram"
    assert lookups[None]["bounds"][:3] == [0.01, 0.02, 0.05]
    assert lookups[None]["attributes"]["mcp.method.name"] == "tools/call"
    fail_point = one([p for p in durations if p["attributes"].get("gen_ai.tool.name") == "fail"])
    assert fail_point["attributes"]["error.type"] == "tool_error" and fail_point["value"] == 1

    calls = {(p["attributes"]["mxcp.endpoint.name"], p["attributes"].get("error.type")): p["value"]
             for p in receiver.latest("mxcp.calls")}
    assert calls == {("lookup", None): 2, ("lookup", "PolicyDenied"): 1, ("fail", "ExecutionError"): 1}
    denials = one(receiver.latest("mxcp.policy.denials"))
    assert denials["value"] == 1 and denials["attributes"]["gen_ai.tool.name"] == "lookup"


def test_made_up_names_do_not_become_metric_series(project, user_config):
    """A client may send any tool name: only served ones are recorded by name, so series stay bounded."""
    with OtlpReceiver() as receiver:
        user_config(telemetry_config(receiver.endpoint))
        with http_server(project) as (base, _):
            async def body(client):
                for number in range(3):
                    with pytest.raises(mcp.MCPError):
                        await client.call_tool(f"no_such_tool_{number}", {})

            run_http(f"{base}/mcp", body)
        points = receiver.wait_for(lambda r: r.latest("mcp.server.operation.duration"))
    unknown = [p for p in points if p["attributes"]["mcp.method.name"] == "tools/call"]
    assert one(unknown)["value"] == 3 and "gen_ai.tool.name" not in unknown[0]["attributes"]
    assert unknown[0]["attributes"]["error.type"] == "-32602"  # the protocol error's code


def test_a_reload_keeps_telemetry_and_a_changed_section_asks_for_a_restart(project, user_config):
    with OtlpReceiver() as receiver:
        path = user_config(telemetry_config(receiver.endpoint))
        with http_server(project) as (base, process):
            def call(number: int) -> None:
                result = run_http(f"{base}/mcp", lambda client: client.call_tool(
                    "lookup", {"id": number, "password": PASSWORD}))
                assert result.structured_content["id"] == number

            call(1)
            process.send_signal(signal.SIGHUP)  # the same section: taken, telemetry goes on
            wait_for(lambda: health(base)[1].get("reloads") == 1)
            assert "config_problem" not in health(base)[1]
            call(2)
            path.write_text(telemetry_config(receiver.endpoint, service_name="renamed"))
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: health(base)[1].get("reloads") == 2)
            assert "telemetry section changed" in health(base)[1]["config_problem"]
            call(3)
        spans = receiver.wait_for(lambda r: len([s for s in r.spans() if s["name"] == "mxcp.sql"]) == 3 and r.spans())
    servers = [s for s in spans if s["name"] == "tools/call lookup"]
    assert len(servers) == 3 and {s["resource"]["service.name"] for s in spans} == {"mxcp-test"}
    for server in servers:
        assert one(children(spans, server))["name"] == "mxcp.tool lookup"


# -- stdio ---------------------------------------------------------------------------------------------------


def test_stdio_serve_exports_everything_when_the_client_leaves(project, user_config, tmp_path):
    with OtlpReceiver() as receiver:
        # The default export interval (60 s) is longer than the test: the metrics come from the shutdown flush.
        # Spans printed too (console_export) go to stderr: stdout carries the protocol.
        user_config(telemetry_config(receiver.endpoint, tracing={"console_export": True}))
        command = mxcp_command()
        params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--transport", "stdio"],
                                       cwd=project, env=serve_env())

        async def main() -> Any:
            with open(tmp_path / "stderr.txt", "w") as errlog:
                async with mcp.Client(stdio_client(params, errlog=errlog)) as client:
                    return await client.call_tool("lookup", {"id": 5, "password": PASSWORD})

        result = anyio.run(main)
        assert result.structured_content["id"] == 5
        points = receiver.wait_for(lambda r: r.latest("mxcp.calls"))
        spans = receiver.wait_for(lambda r: r.spans())
    server = one([s for s in spans if s["name"] == "tools/call lookup"])
    assert server["kind"] == "server" and "mcp.session.id" not in server["attributes"]  # stdio has no session id
    call = one(children(spans, server))
    assert call["attributes"]["mxcp.caller"] == "stdio"
    assert {s["name"] for s in children(spans, call)} == {"mxcp.policy input", "mxcp.sql"}
    assert one(points)["value"] == 1
    assert_nothing_sensitive(receiver)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert '"name": "mxcp.tool lookup"' in stderr and "Traceback" not in stderr
    assert PASSWORD not in stderr and SECRET not in stderr


def test_mxcp_run_exports_the_call_span(project, user_config, run_mxcp):
    with OtlpReceiver() as receiver:
        user_config(telemetry_config(receiver.endpoint))
        done = run_mxcp("run", "tool", "lookup", "--param", "id=3", "--param", f"password={PASSWORD}",
                        cwd=project, env={"MXCP_CONFIG": os.environ["MXCP_CONFIG"]})
        assert done.returncode == 0, done.stderr
        spans = receiver.wait_for(lambda r: r.spans())
    call = one([s for s in spans if s["name"] == "mxcp.tool lookup"])
    assert call["parent_span_id"] == "" and call["attributes"]["mxcp.caller"] == "cli"
    assert {s["name"] for s in children(spans, call)} == {"mxcp.policy input", "mxcp.sql"}
    assert_nothing_sensitive(receiver)


def test_metrics_without_tracing(project, user_config, run_mxcp):
    with OtlpReceiver() as receiver:
        user_config(telemetry_config(receiver.endpoint, tracing={"enabled": False}))
        done = run_mxcp("run", "tool", "lookup", "--param", "id=3", "--param", f"password={PASSWORD}",
                        cwd=project, env={"MXCP_CONFIG": os.environ["MXCP_CONFIG"]})
        assert done.returncode == 0, done.stderr
        points = receiver.wait_for(lambda r: r.latest("mxcp.calls"))
    assert one(points)["attributes"]["mxcp.caller"] == "cli" and receiver.spans() == []
    assert {path for path, _ in receiver.requests} == {"/v1/metrics"}


def test_an_unreachable_collector_costs_the_exit_a_bounded_wait_not_the_call(project, user_config, run_mxcp):
    user_config(telemetry_config(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    done = run_mxcp("run", "tool", "lookup", "--param", "id=4", "--param", f"password={PASSWORD}", "--json-output",
                    cwd=project, env={"MXCP_CONFIG": os.environ["MXCP_CONFIG"]})
    assert done.returncode == 0 and json.loads(done.stdout)["result"]["id"] == 4
    assert "the collector did not take the last spans and metrics" in done.stderr
    assert PASSWORD not in done.stderr


RELOAD_PROBE = """\
import sys, time
from pathlib import Path
from mxcp_core import Runtime, open_project

with Runtime(open_project(Path(sys.argv[1]))) as runtime:
    runtime.call("tool", "lookup", {"id": 1, "password": "x"})
    started = time.monotonic()
    runtime.reload(description="probe", config=True)
    runtime.wait_for_reloads(timeout=60)
    print(f"reload {time.monotonic() - started:.2f} {runtime.config_problem}")
"""


def test_a_reload_does_not_wait_on_a_collector_that_does_not_answer(project, user_config, tmp_path):
    """Calls wait while a reload runs: flushing to a dead collector there (5 s) would hold every call."""
    user_config(telemetry_config(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    probe = tmp_path / "probe.py"
    probe.write_text(RELOAD_PROBE)
    done = subprocess.run([sys.executable, str(probe), str(project)], capture_output=True, text=True, timeout=120,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr
    took = float(done.stdout.split()[1])
    assert took < 3 and done.stdout.split()[2] == "None", done.stdout  # the flush alone would take 5 s


# -- switched off, misconfigured, missing ---------------------------------------------------------------------


OFF_PROBE = """\
import sys
from pathlib import Path
from mxcp_core import Runtime, open_project, tracing
from mxcp_core.server.app import create_server

with Runtime(open_project(Path(sys.argv[1]))) as runtime:
    assert runtime.call("tool", "lookup", {"id": 1, "password": "x"})["id"] == 1
    server = create_server(runtime)
    print(len(server.middleware), tracing.active(), "opentelemetry.sdk" in sys.modules)
"""


def test_telemetry_off_installs_nothing_and_loads_no_sdk(project, user_config, tmp_path):
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        telemetry: {enabled: false}\n")
    done = subprocess.run([sys.executable, "-c", OFF_PROBE, str(project)], capture_output=True, text=True,
                          env=serve_env(), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    # Only the core's request tracking and error guard: the SDK's OpenTelemetry middleware stays out.
    assert done.stdout.split() == ["2", "False", "False"]
    assert tracing.span("anything", {"a": 1}) is tracing.NO_SPAN


# A simulation of an install without the `otel` extra: the SDK's modules are made unimportable in the subprocess.
HIDE_SDK = """\
import sys

class HideOpenTelemetrySdk:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, HideOpenTelemetrySdk())
"""


def test_missing_extra_is_a_clear_error_at_start(project, user_config, tmp_path, run_mxcp):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_SDK)
    user_config(telemetry_config("http://127.0.0.1:9"))
    env = {"MXCP_CONFIG": os.environ["MXCP_CONFIG"]}
    done = run_mxcp("run", "tool", "lookup", "--param", "id=1", "--param", "password=x", cwd=project,
                    pythonpath=[hide], env=env)
    assert done.returncode != 0
    assert "pip install 'mxcp-pluggy[otel]'" in done.stderr and "Traceback" not in done.stderr
    done = run_mxcp("run", "tool", "lookup", "--param", "id=1", "--param", "password=x", "--json-output",
                    cwd=project, pythonpath=[hide], env=env)
    answer = json.loads(done.stdout)
    assert answer["status"] == "error" and "mxcp-pluggy[otel]" in answer["error"]
    # Served: the start fails the same way.
    served = subprocess.run([*mxcp_command(), "serve", "--transport", "stdio"], cwd=project, input="",
                            env={**serve_env(), "PYTHONPATH": str(hide)}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert served.returncode != 0 and "pip install 'mxcp-pluggy[otel]'" in served.stderr
    assert served.stdout == ""


def test_telemetry_configured_with_the_plugin_disabled_is_refused(project, user_config, monkeypatch):
    path = user_config(telemetry_config("http://127.0.0.1:9"))
    with pytest.raises(ConfigError) as caught:
        open_project(project, disabled_plugins=["telemetry"])
    assert "plugin 'telemetry', which is disabled" in caught.value.message
    assert caught.value.key_path == "projects.demo.profiles.default.telemetry" and caught.value.file == str(path)
    user_config("mxcp: 1\n")
    monkeypatch.setenv("MXCP_TELEMETRY_ENABLED", "1")
    with pytest.raises(ConfigError, match="MXCP_TELEMETRY_ENABLED is set, but .* plugin 'telemetry'"):
        open_project(project, disabled_plugins=["telemetry"])
    # Switched off, the section configures nothing: no plugin is needed.
    monkeypatch.delenv("MXCP_TELEMETRY_ENABLED")
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        telemetry: {enabled: false}\n")
    assert open_project(project, disabled_plugins=["telemetry"]).context.profile == "default"


@pytest.mark.parametrize(("telemetry", "key_path", "said"), [
    ("{enabled: true, metrics: {export_interval: 0}}", "telemetry.metrics.export_interval", "greater than 0"),
    ("{enabled: true, sampling: 0.5}", "telemetry", "unknown key 'sampling'"),
    ("{enabled: yes-please}", "telemetry.enabled", "expected true or false"),
    ("{enabled: true, endpoint: 'collector:4317'}", "telemetry", "endpoint must be an http:// or https:// URL"),
])
def test_a_bad_telemetry_section_names_its_key(project, user_config, telemetry, key_path, said):
    user_config(f"mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        telemetry: {telemetry}\n")
    with pytest.raises(ConfigError) as caught:
        open_project(project)
    assert caught.value.key_path.startswith(f"projects.demo.profiles.default.{key_path}")
    assert said in caught.value.message


def test_environment_switches(project, user_config, monkeypatch):
    from mxcp_plugins import telemetry

    user_config(telemetry_config("http://127.0.0.1:9"))
    context = open_project(project).context
    assert telemetry.effective_settings(context).endpoint == "http://127.0.0.1:9"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.effective_settings(context) is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry.effective_settings(context).tracing.enabled is False
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert telemetry.effective_settings(context) is None
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.delenv("OTEL_METRICS_EXPORTER")
    monkeypatch.setenv("MXCP_TELEMETRY_ENABLED", "0")
    assert telemetry.effective_settings(context) is None
    user_config("mxcp: 1\n")
    monkeypatch.setenv("MXCP_TELEMETRY_ENABLED", "1")
    assert telemetry.effective_settings(open_project(project).context).endpoint is None  # OTEL_EXPORTER_OTLP_*


def test_a_reload_that_changes_telemetry_is_refused(project, user_config):
    from mxcp_plugins import telemetry

    user_config(telemetry_config("http://127.0.0.1:9"))
    before = open_project(project).context
    assert telemetry.check_reload(project=before, fresh=open_project(project).context) is None
    user_config(telemetry_config("http://127.0.0.1:10"))
    reason = telemetry.check_reload(project=before, fresh=open_project(project).context)
    assert "telemetry section changed" in reason


def test_no_error_text_leaves_the_process_only_its_type(tmp_path):
    """Error texts quote arguments, SQL literals and secrets (DuckDB's conversion errors, a protocol error naming a
    URI, a long sensitive value cut short by a limit): no exported span carries one, whoever recorded it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from mxcp_plugins import telemetry

    # An in-memory exporter behind the plugin's own wrapper: the wrapper is what the OTLP exporter gets too.
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(telemetry._without_error_texts(kept)))
    tracer = provider.get_tracer("t")
    long_secret = "LONGSECRETPW" + "klmnopqrst" * 40
    with tracer.start_as_current_span("sdk-like") as span:  # as the SDK's server span records an exception
        span.record_exception(ValueError(f"cannot log in with {long_secret}"))
        span.set_status(StatusCode.ERROR, f"Could not convert string 'sql-literal-777' {long_secret}")
    with tracer.start_as_current_span("ours", record_exception=False, set_status_on_exception=False) as span:
        telemetry.record_failure(span, RuntimeError(f"bad {long_secret}"))
    exported = kept.get_finished_spans()
    assert [s.name for s in exported] == ["sdk-like", "ours"]
    for span in exported:
        assert span.status.status_code is StatusCode.ERROR and not span.status.description
        assert not [e for e in span.events if e.name == "exception"]
        assert "LONGSECRETPW" not in repr(span.to_json()) and "sql-literal" not in span.to_json()
    assert exported[1].attributes["error.type"] == "RuntimeError"


@pytest.mark.parametrize(("name", "value"), [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                                            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                                            ("OTEL_TRACES_EXPORTER", "zipkin")])
def test_an_exporter_or_protocol_mxcp_does_not_implement_is_refused_not_replaced(monkeypatch, name, value):
    from mxcp_core import MxcpError
    from mxcp_plugins import telemetry

    monkeypatch.setenv(name, value)
    with pytest.raises(MxcpError, match=f"{name}={value} is not supported; mxcp exports over OTLP/HTTP"):
        telemetry.build_providers(telemetry.TelemetrySettings(enabled=True))
