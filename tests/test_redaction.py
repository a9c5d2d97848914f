"""Secret values never reach a log line, a traceback in the log, or an error message."""
from __future__ import annotations

import json
import logging

import anyio
import mcp
import pytest
from mcp.client.stdio import StdioServerParameters, stdio_client

from mxcp_core import redaction
from server_helpers import mxcp_command, serve_env

SECRET = "s3cr3t-token-value"

LEAKY_TOOL = """\
mxcp: 1
tool:
  name: leaky
  description: Raises with the secret in its message, and logs it.
  language: python
  return: {type: object}
  source: {file: ../python/leaky.py}
"""

LEAKY_CODE = """\
import logging
from mxcp.runtime import get_secret

def leaky() -> dict:
    token = get_secret("api")["value"]
    logging.getLogger("user.code").warning("using token %s", token)
    raise RuntimeError(f"upstream rejected {token}")
"""


@pytest.fixture
def masker(monkeypatch: pytest.MonkeyPatch) -> redaction.SecretMasker:
    fresh = redaction.SecretMasker()
    monkeypatch.setattr(redaction, "masker", fresh)
    return fresh


def test_filter_masks_message_arguments_and_traceback(masker: redaction.SecretMasker) -> None:
    masker.add([SECRET, "abc"])  # too short to mask safely: ordinary words would vanish
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token=%s", (SECRET,), None)
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert redaction.RedactingFilter().filter(record)
    assert record.getMessage() == "token=[REDACTED]"
    assert SECRET not in record.exc_text and "bad [REDACTED]" in record.exc_text
    assert masker.mask("abc stays") == "abc stays"


def test_nested_secret_parameters_are_all_collected() -> None:
    values = set(redaction.secret_values({"a": "x1", "b": {"c": ["y2", {"d": "z3"}]}, "n": 5, "on": True}))
    assert values == {"x1", "y2", "z3", "5"}  # numbers as text shows them; booleans are not secrets


def test_a_numeric_secret_is_masked_in_text_and_data_but_never_inside_another_number() -> None:
    masker = redaction.SecretMasker()
    masker.add(redaction.secret_values({"pin": 84736251, "port": 5, "ratio": 0.12345, "year": 2026}))
    assert masker.mask("refused 84736251 at ratio 0.12345 on port 5") == (
        "refused [REDACTED] at ratio [REDACTED] on port 5")  # too short to be a secret: "5" is left alone
    assert masker.mask("read 120260 rows in 2026 batches, 2026.5 average, v1.2026") == (
        "read 120260 rows in [REDACTED] batches, 2026.5 average, v1.2026")
    assert masker.mask_data({"out": 84736251, "rows": 120260, "text": "pin=84736251"}) == (
        {"out": "[REDACTED]", "rows": 120260, "text": "pin=[REDACTED]"})


def test_cli_error_and_server_log_mask_the_secret(make_project, user_config, run_mxcp, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {"tools/leaky.yml": LEAKY_TOOL, "python/leaky.py": LEAKY_CODE})
    config = user_config(f"""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {{name: api, type: api, parameters: {{value: "{SECRET}"}}}}
        """)
    result = run_mxcp("run", "tool", "leaky", "--debug", cwd=root, env={"MXCP_CONFIG": str(config)})
    assert result.returncode == 1
    assert "upstream rejected [REDACTED]" in result.stderr
    assert "using token [REDACTED]" in result.stderr
    assert "Traceback" in result.stderr  # the log keeps the whole story, minus the value
    assert SECRET not in result.stderr + result.stdout


SENSITIVE_TOOL = """\
mxcp: 1
tool:
  name: check_pin
  language: python
  parameters:
    - {name: pin, type: string, sensitive: true}
  return: {type: object}
  source: {file: ../python/pins.py}
"""

SENSITIVE_CODE = """\
import logging

def check_pin(pin: str) -> dict:
    logging.getLogger("user.code").warning("checking %s", pin)
    raise ValueError(f"pin {pin} rejected")
"""


def test_sensitive_arguments_are_masked_in_the_log_and_the_error(make_project, run_mxcp, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {"tools/check_pin.yml": SENSITIVE_TOOL, "python/pins.py": SENSITIVE_CODE})
    result = run_mxcp("run", "tool", "check_pin", "-p", "pin=918273", "--debug", cwd=root)
    assert result.returncode == 1
    assert "pin [REDACTED] rejected" in result.stderr and "checking [REDACTED]" in result.stderr
    assert "918273" not in result.stderr + result.stdout


# -- every encoding of a value: repr, JSON, one line of a multi-line value ----------------------------------

BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
# Quotes of both kinds, a backslash and a non-ASCII letter: repr, ascii() and JSON each write this line differently.
QUIRKY = "q'uo\"te\\slash-\u00e9-line"
PEM = f"-----BEGIN PRIVATE KEY-----\n{BODY}\n{QUIRKY}\nAB==\n-----END PRIVATE KEY-----\n"


def leaks(text: str) -> list[str]:
    """Recognisable pieces of PEM left in `text`, whatever escaping they went through."""
    return [piece for piece in ("BEGIN PRIVATE", BODY[:20], "slash-", "END PRIVATE") if piece in text]


def test_every_encoding_of_a_multi_line_secret_is_masked(masker: redaction.SecretMasker) -> None:
    masker.add([PEM])
    samples = [
        PEM,
        repr(PEM),
        repr([PEM, {"k": PEM}]),
        f"{PEM!a}",
        json.dumps(PEM),
        json.dumps(PEM, ensure_ascii=False),
        repr(RuntimeError(f"bad key {PEM!r}")),  # a repr quoting a repr: escapes doubled
        json.dumps({"error": f"bad key {PEM!r}"}),  # a JSON log line quoting a repr
        f"line 2 of the key: {BODY}",
        f"the odd line: {QUIRKY!r} / {json.dumps(QUIRKY)}",
    ]
    for sample in samples:
        masked = masker.mask(sample)
        assert leaks(masked) == [] and redaction.MASK in masked, (sample, masked)
    # A line under MIN_LINE_LENGTH is not masked alone: "AB==" would hide ordinary text for nothing gained.
    assert masker.mask("AB== in a sentence") == "AB== in a sentence"
    assert len("AB==") < redaction.MIN_LINE_LENGTH <= len("-----END PRIVATE KEY-----")


def test_mask_walks_json_shaped_data(masker: redaction.SecretMasker) -> None:
    masker.add([SECRET])
    data = {"token": SECRET, "nested": [f"Bearer {SECRET!r}", 5, None, {SECRET: True}], "plain": "ok"}
    assert redaction.mask(data, extra=["918273"]) == {
        "token": "[REDACTED]", "nested": ["Bearer '[REDACTED]'", 5, None, {"[REDACTED]": True}], "plain": "ok"}
    assert redaction.mask(["pin 918273"], extra=["918273"]) == ["pin [REDACTED]"]


PEM_TOOL = """\
mxcp: 1
tool:
  name: pem
  language: python
  parameters: [{name: mode, type: string}]
  return: {type: object}
  source: {file: ../python/pem.py}
"""

# Logs the key in each encoding, then fails quoting it (or returns it) the way `mode` says.
PEM_CODE = """\
import json
import logging
from mxcp.runtime import get_secret

log = logging.getLogger("user.code")

def pem(mode: str) -> dict:
    key = get_secret("tls")["value"]
    log.warning("repr %r", key)
    log.warning("json %s / %s", json.dumps(key), json.dumps(key, ensure_ascii=False))
    log.warning("one line: %s", key.splitlines()[1])
    if mode == "return":
        return {"key": key, "line": key.splitlines()[2]}
    if mode == "repr":
        raise RuntimeError(f"bad key {key!r}")
    if mode == "json":
        raise ValueError(json.dumps({"key": key}))
    raise ValueError(f"bad line {key.splitlines()[1]}")
"""


@pytest.fixture
def pem_project(make_project, user_config, tmp_path):
    root = make_project(tmp_path / "proj", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    audit: {enabled: true}\n",
        "tools/pem.yml": PEM_TOOL,
        "python/pem.py": PEM_CODE,
    })
    # A JSON string is a valid YAML double-quoted scalar: the key's newlines and quotes arrive intact.
    user_config(f"""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {{name: tls, type: custom, parameters: {{value: {json.dumps(PEM)}}}}}
        """)
    return root


def test_repr_json_and_line_forms_are_masked_in_the_cli_the_log_and_the_audit(pem_project, run_mxcp) -> None:
    for mode in ("repr", "json", "line"):
        result = run_mxcp("run", "tool", "pem", "-p", f"mode={mode}", "--debug", cwd=pem_project)
        assert result.returncode == 1
        assert leaks(result.stderr + result.stdout) == [], mode
        assert "Error: bad" in result.stderr or 'Error: {"key": "[REDACTED]"}' in result.stderr
        assert "repr '[REDACTED]'" in result.stderr and 'json "[REDACTED]" / "[REDACTED]"' in result.stderr
        assert "one line: [REDACTED]" in result.stderr and "Traceback" in result.stderr
    returned = run_mxcp("run", "tool", "pem", "-p", "mode=return", cwd=pem_project)
    assert returned.returncode == 0
    audit = (pem_project / "audit" / "logs-default.jsonl").read_text()
    assert leaks(audit) == []
    errors = [r["error"] for r in map(json.loads, audit.splitlines()) if r["error"]]
    assert errors == ["bad key '[REDACTED]'", '{"key": "[REDACTED]"}', "bad line [REDACTED]"]
    assert json.loads(audit.splitlines()[-1])["output_data"] == {
        "key": "[REDACTED]", "line": "[REDACTED]"}


def test_repr_json_and_line_forms_are_masked_for_a_served_client(pem_project, tmp_path) -> None:
    command = mxcp_command()
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--transport", "stdio"],
                                   cwd=pem_project, env=serve_env())
    errlog = tmp_path / "stderr.txt"

    async def main():
        with open(errlog, "w") as log:
            async with mcp.Client(stdio_client(params, errlog=log)) as client:
                return [await client.call_tool("pem", {"mode": mode}) for mode in ("repr", "json", "line")]

    answers = anyio.run(main)
    assert [a.is_error for a in answers] == [True, True, True]
    texts = [a.content[0].text for a in answers]
    assert texts == ["bad key '[REDACTED]'", '{"key": "[REDACTED]"}', "bad line [REDACTED]"]
    stderr = errlog.read_text()
    assert leaks(stderr) == [] and "repr '[REDACTED]'" in stderr
    assert leaks((pem_project / "audit" / "logs-default.jsonl").read_text()) == []


def test_a_sensitive_number_echoed_as_a_number_is_masked_in_data():
    from mxcp_core.redaction import MASK, masker

    masked = masker.mask_data({"echo": 987654, "text": "pin 987654", "other": 12, "flag": True}, ["987654"])
    assert masked == {"echo": MASK, "text": f"pin {MASK}", "other": 12, "flag": True}


def test_a_postgres_secret_masks_its_password_not_where_it_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masking host, port, database and user would blank every "5432" or "orders" in results and audit records."""
    from mxcp_core.config import SecretConfig

    fresh = redaction.SecretMasker()
    monkeypatch.setattr(redaction, "masker", fresh)
    redaction.register_secrets([
        SecretConfig("pg_main", "postgres", {"host": "db.internal", "port": 5432, "database": "orders",
                                             "user": "mxcp_reader", "password": "pg-pass-4821"}),
        SecretConfig("api", "custom", {"host": "api.internal", "token": "tok-99173"}),
    ])
    text = "db.internal:5432/orders as mxcp_reader with pg-pass-4821; api.internal tok-99173"
    assert redaction.mask(text) == (f"db.internal:5432/orders as mxcp_reader with {redaction.MASK}; "
                                    f"{redaction.MASK} {redaction.MASK}")
