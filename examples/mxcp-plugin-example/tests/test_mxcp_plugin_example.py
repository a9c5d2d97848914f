"""Tests of the example plugins, written with MXCP's pytest fixtures.

Each test registers the plugin it exercises with `mxcp_plugin`, so it passes whether or not the package is
installed (an installed copy gives way to the registered one); `test_entry_points_*` checks the installation.
"""
from importlib import metadata

import anyio
import pytest

from mxcp_core import ConfigError
from mxcp_core.testing import tool_result
from mxcp_plugin_example import functions, tools, vault

SQL_TOOL = {
    "mxcp": 1,
    "tool": {
        "name": "make_slug",
        "parameters": [{"name": "title", "type": "string"}],
        "return": {"type": "string"},
        "source": {"code": "SELECT slugify($title)"},
    },
}

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


def vault_config(reference: str, section: dict | None = None) -> dict:
    """A user config with one secret `service` whose token is `reference`, and the vault's own section if given."""
    config = {"mxcp": 1, "projects": {"test": {"profiles": {"default": {"secrets": [
        {"name": "service", "type": "custom", "parameters": {"token": reference}}]}}}}}
    if section is not None:
        config["demo_vault"] = section
    return config


# -- register_functions ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("title", "slug"),
    [("Hello, World!", "hello-world"), ("  Crème brûlée  ", "creme-brulee"), ("a--b__c", "a-b-c"), ("", "")],
)
def test_slugify_in_sql(mxcp_project_factory, mxcp_plugin, title, slug):
    mxcp_plugin(functions, name="example_functions")
    project = mxcp_project_factory({"tools/make_slug.yml": SQL_TOOL})
    assert project.tool("make_slug", title=title) == slug


def test_slugify_keeps_null(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(functions, name="example_functions")
    project = mxcp_project_factory()
    with project.runtime() as runtime, runtime.database.cursor() as cursor:
        assert cursor.execute("SELECT slugify(NULL) AS s").fetchone() == (None,)


# -- resolve_secret -------------------------------------------------------------------------------------
def test_vault_secret_from_environment(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(
        {"tools/token_length.yml": SECRET_TOOL, "python/token_length.py": TOKEN_LENGTH_PY},
        user_config=vault_config("demo-vault://service-token"),
        env={"DEMO_VAULT_SERVICE_TOKEN": "abc123"},
    )
    assert project.tool("token_length") == 6


def test_vault_secret_from_project_file(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(
        {"tools/token_length.yml": SECRET_TOOL, "python/token_length.py": TOKEN_LENGTH_PY,
         "demo-vault.json": '{"service-token": "from-the-file"}'},
        user_config=vault_config("demo-vault://service-token"),
    )
    assert project.tool("token_length") == len("from-the-file")


def test_unknown_vault_secret_names_it_without_values(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(
        {"demo-vault.json": '{"other": "top-secret-value"}'}, user_config=vault_config("demo-vault://missing"),
    )
    with pytest.raises(ConfigError) as caught:
        project.open()
    message = str(caught.value)
    assert "missing" in message and "DEMO_VAULT_MISSING" in message
    assert "top-secret-value" not in message


def test_vault_ignores_other_schemes(mxcp_project_factory):
    assert vault.resolve_secret(reference="file://x", project=None) is None


# -- config_sections: the vault's own `demo_vault:` section of the user config ---------------------------
def test_section_moves_the_vault_file_and_the_variable_prefix(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(
        {"tools/token_length.yml": SECRET_TOOL, "python/token_length.py": TOKEN_LENGTH_PY,
         "secrets/vault.json": '{"from-file": "12345678"}'},
        user_config=vault_config("demo-vault://from-file", {"file": "secrets/vault.json", "env_prefix": "ACME_"}),
        env={"ACME_FROM_ENV": "abc"},
    )
    assert project.tool("token_length") == 8
    opened = project.open()
    assert opened.context.plugin_config("demo_vault", scope="user") == vault.DemoVaultSettings(
        file="secrets/vault.json", env_prefix="ACME_")


def test_section_defaults_when_absent(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(user_config=vault_config("demo-vault://x"), env={"DEMO_VAULT_X": "value"})
    assert project.open().context.plugin_config("demo_vault", scope="user") == vault.DemoVaultSettings()


def test_a_wrong_key_in_the_section_names_file_line_and_key(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(vault, name="example_vault")
    project = mxcp_project_factory(user_config=vault_config("plain", {"fiel": "x.json"}))
    with pytest.raises(ConfigError) as caught:
        project.open()
    error = caught.value
    assert error.key_path == "demo_vault.fiel" and error.line is not None
    assert "did you mean 'file'?" in error.message and error.file.endswith("config.yml")


def test_the_section_without_the_plugin_is_an_unknown_key(mxcp_project_factory, mxcp_plugin):
    project = mxcp_project_factory(user_config=vault_config("plain", {"file": "x.json"}))
    with pytest.raises(ConfigError, match="unknown key 'demo_vault'"):
        project.open(disabled_plugins=["example_vault"])


# -- provide_tool ---------------------------------------------------------------------------------------
def test_word_stats_tool(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(tools, name="example_tools")
    project = mxcp_project_factory()
    result = project.tool("word_stats", text="the cat and the hat and the bat", top=2)
    assert result == {
        "words": 8, "unique": 5, "slug": "the-cat-and-the-hat-and-the-bat",
        "top_words": [{"word": "the", "count": 3}, {"word": "and", "count": 2}],
    }


def test_word_stats_validates_arguments(mxcp_project_factory, mxcp_plugin):
    from mxcp_core import ValidationError

    mxcp_plugin(tools, name="example_tools")
    project = mxcp_project_factory()
    with pytest.raises(ValidationError, match="top"):
        project.tool("word_stats", text="x", top=99)


def test_word_stats_over_mcp(mxcp_project_factory, mxcp_plugin, mxcp_client):
    mxcp_plugin(tools, name="example_tools")
    project = mxcp_project_factory()

    async def main():
        async with mxcp_client(project) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            called = await client.call_tool("word_stats", {"text": "Hello hello world"})
            return listed, called

    listed, called = anyio.run(main)
    assert listed["word_stats"].input_schema["properties"]["top"]["maximum"] == 20
    assert tool_result(called)["top_words"][0] == {"word": "hello", "count": 2}


def test_word_stats_error_is_a_tool_error(mxcp_project_factory, mxcp_plugin, mxcp_client_call):
    mxcp_plugin(tools, name="example_tools")
    result = mxcp_client_call(mxcp_project_factory(), lambda client: client.call_tool("word_stats", {}))
    assert result.is_error
    assert "text" in result.content[0].text


# -- packaging ------------------------------------------------------------------------------------------
def _installed() -> bool:
    try:
        metadata.distribution("mxcp-plugin-example")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="mxcp-plugin-example is not installed (pip install it to check entry points)")
def test_entry_points_make_every_plugin_available(mxcp_project_factory):
    project = mxcp_project_factory({"tools/make_slug.yml": SQL_TOOL})
    names = {info.name for info in project.open().host.plugins()}
    assert {"example_functions", "example_vault", "example_tools"} <= names
    assert project.tool("make_slug", title="Entry Points") == "entry-points"
    assert project.tool("word_stats", text="a b a")["unique"] == 2


@pytest.mark.skipif(not _installed(), reason="mxcp-plugin-example is not installed (pip install it to check entry points)")
def test_each_plugin_can_be_disabled(mxcp_project_factory):
    project = mxcp_project_factory(site={"mxcp": 1, "project": "test", "profile": "default",
                                         "disable_plugins": ["example_tools"]})
    assert "word_stats" not in project.open().endpoints().tools
