"""The plugin contract: plugins import only what `mxcp_core` exports, and use only the runtime's public view.

The builtin plugins and the example third-party package are held to it, the way test_layering holds the core
to never importing the plugins. hookspecs.md lists every exported name.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mxcp_core
from mxcp_core import EndpointCall, ProjectContext, RuntimeView, commands

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = sorted(
    [*(ROOT / "mxcp_plugins").rglob("*.py"), *(ROOT / "examples" / "mxcp-plugin-example" / "src").rglob("*.py")]
)
PUBLIC_MODULES = {"mxcp_core": set(mxcp_core.__all__), "mxcp_core.commands": set(commands.__all__)}
# Endpoint code's API is public too (`from mxcp.runtime import db`).
OTHER_PUBLIC = {"mxcp.runtime", "mxcp.plugins"}
RUNTIME_MEMBERS = {name for name in dir(RuntimeView) if not name.startswith("_")} | set(
    RuntimeView.__annotations__)
CALL_MEMBERS = {name for name in dir(EndpointCall) if not name.startswith("_")} | {
    f.name for f in __import__("attrs").fields(EndpointCall) if not f.name.startswith("_")}


def violations(source: Path) -> list[str]:
    """Imports of the core's private modules, and uses of a runtime beyond `RuntimeView`."""
    found = []
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mxcp_core") or alias.name.startswith("mxcp."):
                    if alias.name not in OTHER_PUBLIC and alias.name != "mxcp_core":
                        found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in PUBLIC_MODULES:
                private = [a.name for a in node.names if a.name not in PUBLIC_MODULES[node.module]]
                found += [f"line {node.lineno}: {node.module}.{name} is not exported" for name in private]
            elif node.module.split(".")[0] in {"mxcp_core", "mxcp_plugins"} or (
                    node.module.startswith("mxcp.") and node.module not in OTHER_PUBLIC):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
            owner = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
            if owner == "runtime" and node.attr not in RUNTIME_MEMBERS:
                found.append(f"line {node.lineno}: runtime.{node.attr} is not part of RuntimeView")
            if owner == "call" and node.attr not in CALL_MEMBERS:
                found.append(f"line {node.lineno}: call.{node.attr} is not part of EndpointCall")
    return sorted(found, key=lambda text: int(text.split(":")[0].split()[1]))


def test_plugin_sources_are_found():
    assert len(PLUGIN_SOURCES) >= 18


@pytest.mark.parametrize("source", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_use_only_the_public_api(source):
    assert violations(source) == []


def test_the_checker_sees_each_kind_of_violation(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import mxcp_core.records\nfrom mxcp_core.config import SiteConfig\nfrom mxcp_core import hookimpl, Hooks\n"
        "from mxcp_plugins import audit\nfrom mxcp.runtime import db\nfrom mxcp_core.commands import ok\n"
        "def f(runtime, call):\n    runtime.project.host\n    runtime.cursor()\n    call.runtime.compiled\n"
        "    call.compiled\n    call.secret_field\n"
    )
    assert violations(sample) == [
        "line 1: import mxcp_core.records",
        "line 2: from mxcp_core.config import ...",
        "line 3: mxcp_core.Hooks is not exported",
        "line 4: from mxcp_plugins import ...",
        "line 8: runtime.project is not part of RuntimeView",
        "line 10: runtime.compiled is not part of RuntimeView",
        "line 12: call.secret_field is not part of EndpointCall",
    ]


def test_every_exported_name_resolves_and_is_documented():
    documented = (ROOT / "hookspecs.md").read_text(encoding="utf-8")
    section = documented.split("## What a plugin may use", 1)[1].split("\n## ", 1)[0]
    for name in mxcp_core.__all__:
        assert getattr(mxcp_core, name) is not None
        if name != "hookspec":  # for the core's own hookspecs, not for plugins
            assert f"`{name}`" in section, f"hookspecs.md does not list {name}"
    for name in commands.__all__:
        assert f"`{name}`" in section, f"hookspecs.md does not list commands.{name}"


def test_importing_the_api_is_cheap():
    """A plugin's `from mxcp_core import hookimpl, ToolDefinition` must not load the type system, DuckDB or typer."""
    probe = ("import json, sys; from mxcp_core import hookimpl, ToolDefinition, ConfigSection, ConfigError; "
             "print(json.dumps(sorted(m for m in sys.modules if m in ('duckdb', 'typer', 'mxcp_core.typesystem', "
             "'mxcp_core.execution', 'mcp', 'cattrs'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_runtime_view_is_what_the_runtime_offers(make_project, tmp_path):
    from mxcp_core import Runtime, open_project

    with Runtime(open_project(make_project(tmp_path / "p"))) as runtime:
        assert isinstance(runtime, RuntimeView)
        assert isinstance(runtime.context, ProjectContext) and runtime.phase == "serving"
        with runtime.cursor() as cursor:
            assert cursor.execute("SELECT 1").fetchone() == (1,)
