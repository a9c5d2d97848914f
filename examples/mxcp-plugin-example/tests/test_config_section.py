"""The example vault owns a section of the user config (`demo_vault:`), declared through `config_sections`."""
import pytest

from mxcp_core import ConfigError
from mxcp_plugin_example import vault

SECRET_TOOL = {
    "mxcp": 1,
    "tool": {
        "name": "token_length",
        "language": "python",
        "return": {"type": "integer"},
        "source": {"file": "../python/token_length.py"},
    },
}
TOKEN_LENGTH_PY = """
    from mxcp.runtime import get_secret

    def token_length() -> int:
        return len(get_secret("service")["token"])
"""


def user_config(reference: str, section: dict | None = None) -> dict:
    config = {"mxcp": 1, "projects": {"test": {"profiles": {"default": {"secrets": [
        {"name": "service", "type": "custom", "parameters": {"token": reference}}]}}}}}
    if section is not None:
        config["demo_vault"] = section
    return config


def test_section_moves_the_vault_file_and_the_variable_prefix(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(
        {"tools/token_length.yml": SECRET_TOOL, "python/token_length.py": TOKEN_LENGTH_PY,
         "secrets/vault.json": '{"from-file": "12345678"}'},
        user_config=user_config("demo-vault://from-file", {"file": "secrets/vault.json", "env_prefix": "ACME_"}),
        env={"ACME_FROM_ENV": "abc"},
    )
    assert project.tool("token_length") == 8
    opened = project.open()
    assert opened.context.plugin_config("demo_vault", scope="user") == vault.DemoVaultSettings(
        file="secrets/vault.json", env_prefix="ACME_")


def test_section_defaults_when_absent(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(user_config=user_config("demo-vault://x"), env={"DEMO_VAULT_X": "value"})
    assert project.open().context.plugin_config("demo_vault", scope="user") == vault.DemoVaultSettings()


def test_a_wrong_key_in_the_section_names_file_line_and_key(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(user_config=user_config("plain", {"fiel": "x.json"}))
    with pytest.raises(ConfigError) as caught:
        project.open()
    error = caught.value
    assert error.key_path == "demo_vault.fiel" and error.line is not None
    assert "did you mean 'file'?" in error.message and error.file.endswith("config.yml")


def test_the_section_without_the_plugin_is_an_unknown_key(mxcp_project_factory, mxcp_plugin):
    project = mxcp_project_factory(user_config=user_config("plain", {"file": "x.json"}))
    with pytest.raises(ConfigError, match="unknown key 'demo_vault'"):
        project.open(disabled_plugins=["example_vault"])
