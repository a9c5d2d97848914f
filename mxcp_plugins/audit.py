"""Builtin plugin: one JSONL audit record per endpoint call, sensitive values written as "[REDACTED]".

Enabled by the site profile's `audit.enabled` or MXCP_AUDIT_ENABLED=1; the file defaults to audit/logs-<profile>.jsonl.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from mxcp_core import ConfigSection, env_flag, hookimpl, mask, to_jsonable

SCHEMA_NAME = "mxcp.audit"
SCHEMA_VERSION = 1
_write_lock = threading.Lock()


@attrs.define
class AuditSettings:
    """`profiles.<name>.audit` of mxcp-site.yml."""

    enabled: bool = False
    path: str | None = None


@hookimpl
def config_sections():
    return [ConfigSection("audit", AuditSettings, scope="site_profile", description="the JSONL audit log")]


def audit_path(project: Any) -> Path | None:
    """Where records go for this project, or None when auditing is off."""
    settings = project.plugin_config("audit", scope="site_profile")
    env = env_flag("MXCP_AUDIT_ENABLED")
    enabled = env if env is not None else settings.enabled
    if not enabled:
        return None
    if settings.path:
        path = Path(settings.path)
        return path if path.is_absolute() else project.root / path
    return project.path("audit") / f"logs-{project.profile}.jsonl"


@hookimpl(wrapper=True, tryfirst=True)  # outermost: denials by other wrappers are recorded too
def call_endpoint(call: Any) -> Any:
    path = audit_path(call.runtime.context)
    if path is None:
        return (yield)
    started = time.perf_counter()
    status, error, result = "success", None, None
    try:
        result = yield
        return result
    except BaseException as exc:
        status, error = "error", str(exc) or type(exc).__name__
        raise
    finally:
        _write(path, call, status, error, result, (time.perf_counter() - started) * 1000)


def _write(path: Path, call: Any, status: str, error: str | None, result: Any, duration_ms: float) -> None:
    compiled = call.compiled
    inputs = compiled.parameters.redact(call.arguments) if compiled else {}
    outputs = compiled.returns.redact(result) if compiled and status == "success" else None
    if error:
        # Secret values and the call's sensitive arguments, as everywhere else.
        error = mask(error, call)
    record = {
        "schema_name": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "record_id": uuid.uuid4().hex,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "operation_type": call.endpoint.kind,
        "operation_name": call.endpoint.key,
        "operation_status": status,
        "duration_ms": round(duration_ms, 3),
        "caller_type": call.caller,
        "user_id": call.user.user_id if call.user else None,
        "session_id": call.session_id,
        "trace_id": call.trace_id,
        "input_data": to_jsonable(inputs),
        "output_data": to_jsonable(outputs),
        "error": error,
        "policies_evaluated": call.notes.get("policies_evaluated", []),
        "policy_decision": call.notes.get("policy_decision"),
        "policy_reason": call.notes.get("policy_reason"),
    }
    line = json.dumps(record, ensure_ascii=False, default=str)
    with _write_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
