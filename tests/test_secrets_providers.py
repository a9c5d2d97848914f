"""`resolve_secret` providers (env://, file://, keyring://) through a real project and user config.

The keyring package comes with the [test] extra (and [keyring]); the tests using it go through the
`memory_keyring` fixture, which skips them, naming the extra, when it is missing. The others run either way.
"""
from __future__ import annotations

import logging
import sys

import pytest

from extras import skip_without_extra
from mxcp_core.errors import ConfigError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project

SECRET_TOOL = """\
mxcp: 1
tool:
  name: secret_value
  parameters: [{name: name, type: string}]
  return: {type: object}
  source: {file: ../python/secret_value.py}
"""
SECRET_CODE = """\
from mxcp.runtime import config

def secret_value(name: str) -> dict:
    return config.get_secret(name)
"""


def user_config_with(secrets: str) -> str:
    return (
        "mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
        + "".join(f"          {line}\n" for line in secrets.strip().splitlines())
    )


@pytest.fixture
def project(make_project, tmp_path):
    return make_project(tmp_path / "p", {"tools/secret_value.yml": SECRET_TOOL, "python/secret_value.py": SECRET_CODE})


@pytest.fixture
def memory_keyring():
    skip_without_extra("keyring")
    import keyring
    from keyring.backend import KeyringBackend

    class MemoryKeyring(KeyringBackend):
        """A keyring backend holding passwords in a dict, so tests never touch the system keyring."""

        priority = 1

        def __init__(self, passwords: dict[tuple[str, str], str]) -> None:
            super().__init__()
            self.passwords = dict(passwords)

        def get_password(self, service, username):
            return self.passwords.get((service, username))

        def set_password(self, service, username, password):
            self.passwords[(service, username)] = password

        def delete_password(self, service, username):
            self.passwords.pop((service, username), None)

    previous = keyring.get_keyring()
    backend = MemoryKeyring({("mxcp/demo", "api"): "kr-s3cr3t-value"})
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def call_secret(root, name):
    with Runtime(open_project(root)) as runtime:
        return runtime.call("tool", "secret_value", {"name": name})


def test_env_and_file_references(project, user_config, monkeypatch):
    monkeypatch.setenv("TEST_API_TOKEN", "env-token-value")
    (project / "token.txt").write_text("file-token-value\n", encoding="utf-8")
    user_config(user_config_with("""
- {name: api, type: api, parameters: {token: "env://TEST_API_TOKEN", file_token: "file://token.txt"}}
"""))
    assert call_secret(project, "api") == {"token": "env-token-value", "file_token": "file-token-value"}


def test_missing_environment_variable_names_it(project, user_config):
    user_config(user_config_with('- {name: api, type: api, parameters: {token: "env://NOT_SET_ANYWHERE"}}'))
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        open_project(project)


def test_keyring_reference(project, user_config, memory_keyring):
    user_config(user_config_with('- {name: api, type: api, parameters: {token: "keyring://mxcp/demo/api"}}'))
    assert call_secret(project, "api") == {"token": "kr-s3cr3t-value"}


def test_keyring_missing_entry_names_service_and_user(project, user_config, memory_keyring):
    user_config(user_config_with('- {name: api, type: api, parameters: {token: "keyring://mxcp/demo/nobody"}}'))
    with pytest.raises(ConfigError) as info:
        open_project(project)
    assert "service 'mxcp/demo'" in str(info.value) and "username 'nobody'" in str(info.value)


def test_keyring_reference_needs_service_and_user(project, user_config, memory_keyring):
    user_config(user_config_with('- {name: api, type: api, parameters: {token: "keyring://justone"}}'))
    with pytest.raises(ConfigError, match="keyring://service/username"):
        open_project(project)


def test_keyring_not_installed_names_the_extra(project, user_config, monkeypatch):
    for name in [n for n in sys.modules if n == "keyring" or n.startswith("keyring.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "keyring", None)  # makes `import keyring` raise ImportError
    user_config(user_config_with('- {name: api, type: api, parameters: {token: "keyring://svc/user"}}'))
    with pytest.raises(ConfigError, match=r"mxcp-pluggy\[keyring\]"):
        open_project(project)


def test_unknown_scheme_names_secret_and_scheme(project, user_config):
    user_config(user_config_with('- {name: vault_token, type: api, parameters: {token: "vaultx://a/b"}}'))
    with pytest.raises(ConfigError) as info:
        open_project(project)
    assert "vault_token" in str(info.value) and "vaultx" in str(info.value)


def test_ordinary_urls_are_left_alone(project, user_config):
    user_config(user_config_with('- {name: site, type: api, parameters: {url: "https://example.com/x"}}'))
    assert call_secret(project, "site") == {"url": "https://example.com/x"}


def test_no_secret_value_in_errors_or_logs(project, user_config, monkeypatch, caplog, memory_keyring):
    """Resolve secrets of every provider, make DuckDB reject one, and look for the values everywhere."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_SECRET_A", "env-secret-value-A")
    (project / "secret.txt").write_text("file-secret-value-B", encoding="utf-8")
    values = ["env-secret-value-A", "file-secret-value-B", "kr-s3cr3t-value", "plain-secret-value-C"]
    user_config(user_config_with("""
- name: api_service
  type: http
  parameters:
    BEARER_TOKEN: "env://TEST_SECRET_A"
    EXTRA_HTTP_HEADERS: {X-File: "file://secret.txt", X-Keyring: "keyring://mxcp/demo/api"}
- {name: broken_http, type: http, parameters: {NOT_AN_OPTION: "plain-secret-value-C"}}
"""))
    runtime = Runtime(open_project(project))
    with pytest.raises(ConfigError) as info:
        runtime.start()
    message = str(info.value)
    assert "broken_http" in message  # the error says which secret...
    for value in values:  # ...and never what it holds
        assert value not in message
        assert value not in caplog.text
    assert not runtime.database.is_open
