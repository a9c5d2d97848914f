"""The third-party package examples/mxcp-plugin-example, served by `mxcp serve --transport stdio`.

When the package is installed (CI installs it), the installed copy is served. Otherwise the test lays the
package out as an installed distribution in a temporary folder (its modules plus a dist-info with the entry
points of its pyproject.toml) and puts that folder on the server's PYTHONPATH, so a developer can run the suite
without installing it.
"""
from __future__ import annotations

from importlib import metadata
import os
import shutil
import sys
import tomllib
from pathlib import Path

import anyio
import mcp
from mcp.client.stdio import StdioServerParameters, stdio_client

from mxcp_core.testing import build_project, tool_result

PACKAGE = Path(__file__).resolve().parent.parent / "examples" / "mxcp-plugin-example"

PROJECT = {
    "mxcp-site.yml": {"mxcp": 1, "project": "plugin-e2e", "profile": "default", "secrets": ["service"]},
    # The plugin's DuckDB function, from SQL.
    "tools/make_slug.yml": {"mxcp": 1, "tool": {
        "name": "make_slug", "parameters": [{"name": "title", "type": "string"}],
        "return": {"type": "string"}, "source": {"code": "SELECT slugify($title)"}}},
    # The plugin's secret provider, through the user config.
    "tools/token_hint.yml": {"mxcp": 1, "tool": {
        "name": "token_hint", "language": "python", "return": {"type": "object"},
        "source": {"file": "../python/token_hint.py"}}},
    "python/token_hint.py": (
        "from mxcp.runtime import get_secret\n\n"
        "def token_hint() -> dict:\n"
        "    token = get_secret('service')['token']\n"
        "    return {'length': len(token), 'starts': token[:3]}\n"
    ),
}

USER_CONFIG = """\
mxcp: 1
projects:
  plugin-e2e:
    profiles:
      default:
        secrets:
          - name: service
            type: custom
            parameters: {token: "demo-vault://service-token"}
"""


def mxcp_command() -> list[str]:
    """The installed `mxcp` script of this interpreter's environment, as a user runs it."""
    script = Path(sys.executable).with_name("mxcp")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from mxcp_core.cli import main; main()"]


def installed() -> bool:
    try:
        metadata.distribution("mxcp-plugin-example")
    except metadata.PackageNotFoundError:
        return False
    return True


def unpacked_distribution(folder: Path) -> Path:
    """The package as pip would install it, minimally: its modules and a dist-info with its entry points."""
    meta = tomllib.loads((PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    shutil.copytree(PACKAGE / "src" / "mxcp_plugin_example", folder / "mxcp_plugin_example",
                    ignore=shutil.ignore_patterns("__pycache__"))
    info = folder / f"mxcp_plugin_example-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in meta["entry-points"]["mxcp"].items())
    (info / "entry_points.txt").write_text(f"[mxcp]\n{lines}", encoding="utf-8")
    return folder


def test_plugin_tool_function_and_secret_served_over_stdio(tmp_path):
    root = build_project(tmp_path / "project", PROJECT)
    config = tmp_path / "config.yml"
    config.write_text(USER_CONFIG, encoding="utf-8")
    env = {
        "HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), "MXCP_CONFIG": str(config),
        "DEMO_VAULT_SERVICE_TOKEN": "tok-1234567",
    }
    if not installed():
        env["PYTHONPATH"] = str(unpacked_distribution(tmp_path / "site"))
    command = mxcp_command()
    params = StdioServerParameters(
        command=command[0], args=[*command[1:], "serve", "--transport", "stdio"], cwd=str(root), env=env,
    )
    errlog_path = tmp_path / "stderr.txt"

    async def main():
        with errlog_path.open("w") as errlog:
            async with mcp.Client(stdio_client(params, errlog=errlog)) as client:
                tools = {tool.name: tool for tool in (await client.list_tools()).tools}
                stats = await client.call_tool("word_stats", {"text": "to be or not to be", "top": 2})
                slug = await client.call_tool("make_slug", {"title": "Plugins, Served!"})
                hint = await client.call_tool("token_hint", {})
                invalid = await client.call_tool("word_stats", {"text": "x", "top": 0})
                return tools, stats, slug, hint, invalid

    tools, stats, slug, hint, invalid = anyio.run(main)
    assert "word_stats" in tools, errlog_path.read_text()
    assert {"word_stats", "make_slug", "token_hint"} <= set(tools)
    assert tools["word_stats"].annotations.title == "Word statistics"
    assert tool_result(stats) == {
        "words": 6, "unique": 4, "slug": "to-be-or-not-to-be",
        "top_words": [{"word": "be", "count": 2}, {"word": "to", "count": 2}],
    }
    assert tool_result(slug) == "plugins-served"
    assert tool_result(hint) == {"length": 11, "starts": "tok"}
    assert invalid.is_error and "top" in invalid.content[0].text
    # The secret itself never reaches the server's log.
    assert "tok-1234567" not in errlog_path.read_text()
