"""The audit plugin: a wrapper around every call writing one JSONL record, sensitive values redacted."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from mxcp_core.errors import ConfigError, MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project

SITE = """\
mxcp: 1
project: audited
profile: default
profiles:
  default:
    audit: {enabled: true}
"""

LOGIN_TOOL = """\
mxcp: 1
tool:
  name: login
  description: Check a password.
  parameters:
    - {name: user, type: string}
    - {name: password, type: string, sensitive: true, minLength: 12}
  return:
    type: object
    properties:
      user: {type: string}
      token: {type: string, sensitive: true}
  source:
    code: "SELECT $user AS user, 'tok-' || $password AS token"
"""


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No user config at all: a missing ~/.mxcp/config.yml is an empty config.
    monkeypatch.delenv("MXCP_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MXCP_AUDIT_ENABLED", raising=False)
    monkeypatch.delenv("MXCP_DISABLE_PLUGINS", raising=False)
    (tmp_path / "mxcp-site.yml").write_text(SITE)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "login.yml").write_text(textwrap.dedent(LOGIN_TOOL))
    return tmp_path


def records(root: Path) -> list[dict]:
    path = root / "audit" / "logs-default.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_success_record_redacts_sensitive_input_and_output(audited: Path) -> None:
    with Runtime(open_project(audited)) as runtime:
        result = runtime.call("tool", "login", {"user": "ann", "password": "correct-horse-battery"})
    assert result == {"user": "ann", "token": "tok-correct-horse-battery"}
    (record,) = records(audited)
    assert record["operation_type"] == "tool" and record["operation_name"] == "login"
    assert record["operation_status"] == "success" and record["caller_type"] == "cli"
    assert record["input_data"] == {"user": "ann", "password": "[REDACTED]"}
    assert record["output_data"] == {"user": "ann", "token": "[REDACTED]"}
    assert "correct-horse" not in json.dumps(record)
    assert record["schema_name"] == "mxcp.audit" and record["duration_ms"] >= 0


def test_error_record_and_disabling_by_name(audited: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Runtime(open_project(audited)) as runtime:
        _, call = runtime.prepare_call("tool", "login", {"user": "bob", "password": "a-long-password"})
        # Force an execution error after validation: the wrapper records it and re-raises.
        call.endpoint = type(call.endpoint)(name="login", origin="test", language="sql",
                                            source=type(call.endpoint.source)(code="SELECT nope"))
        runtime.compiled[("tool", "login")].definition = call.endpoint
        with pytest.raises(MxcpError):
            runtime.invoke(call)
    (record,) = records(audited)
    assert record["operation_status"] == "error"
    assert "nope" in record["error"] and "a-long-password" not in json.dumps(record)

    (audited / "audit" / "logs-default.jsonl").unlink()
    # Disabling the plugin while the site asks for an audit log is refused, never silently unaudited.
    monkeypatch.setenv("MXCP_DISABLE_PLUGINS", "audit")
    with pytest.raises(ConfigError, match="section 'audit' .* is read by plugin 'audit', which is disabled") as caught:
        open_project(audited)
    assert (caught.value.key_path, caught.value.line) == ("profiles.default.audit", 6)
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    (audited / "mxcp-site.yml").write_text(SITE.replace("enabled: true", "enabled: false"))
    with pytest.raises(ConfigError, match="MXCP_AUDIT_ENABLED .* plugin 'audit', which is disabled"):
        open_project(audited)
    # Off in the file and the environment: the plugin's absence changes nothing, and nothing is written.
    monkeypatch.delenv("MXCP_AUDIT_ENABLED")
    with Runtime(open_project(audited)) as runtime:
        runtime.call("tool", "login", {"user": "ann", "password": "correct-horse-battery"})
    assert not (audited / "audit" / "logs-default.jsonl").exists()


def test_error_text_in_the_record_masks_secrets_and_sensitive_arguments(
    audited: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (audited / "python").mkdir()
    (audited / "python" / "leak.py").write_text(
        "from mxcp.runtime import get_secret\n\n"
        "def leak(creds: dict) -> dict:\n"
        "    raise RuntimeError(f\"rejected {get_secret('api')['value']} pin={creds['pin']}\")\n"
    )
    (audited / "tools" / "leak.yml").write_text(textwrap.dedent("""\
        mxcp: 1
        tool:
          name: leak
          language: python
          parameters:
            - name: creds
              type: object
              properties: {pin: {type: string, sensitive: true}}
          return: {type: object}
          source: {file: ../python/leak.py}
        """))
    config = audited / "config.yml"
    config.write_text(
        "mxcp: 1\nprojects:\n  audited:\n    profiles:\n      default:\n        secrets:\n"
        "          - {name: api, type: api, parameters: {value: s3cr3t-token-value}}\n"
    )
    monkeypatch.setenv("MXCP_CONFIG", str(config))
    with Runtime(open_project(audited)) as runtime:
        with pytest.raises(MxcpError):
            runtime.call("tool", "leak", {"creds": {"pin": "918273"}})
    (record,) = records(audited)
    assert record["error"] == "rejected [REDACTED] pin=[REDACTED]"
    assert record["input_data"] == {"creds": {"pin": "[REDACTED]"}}
