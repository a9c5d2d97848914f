"""Secret values never reach a log line, a traceback in the log, or an error message."""
from __future__ import annotations

import logging

import pytest

from mxcp_core import redaction

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
    values = set(redaction.secret_values({"a": "x1", "b": {"c": ["y2", {"d": "z3"}]}, "n": 5}))
    assert values == {"x1", "y2", "z3"}


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
