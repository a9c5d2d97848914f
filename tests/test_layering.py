"""Layering: the core never imports the builtin plugins, and light commands stay free of heavy imports."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mxcp_core

CORE = Path(mxcp_core.__file__).resolve().parent
HEAVY = ("mcp", "uvicorn", "pandas")

# Runs the real CLI in-process, then reports which heavy top-level packages ended up imported.
PROBE_TEMPLATE = """\
import json, sys
from mxcp_core.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
heavy = sorted({name.split(".")[0] for name in sys.modules} & {HEAVY})
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
"""
PROBE = PROBE_TEMPLATE.replace("{HEAVY}", repr(set(HEAVY)))


def plugin_imports(source: Path) -> list[str]:
    """Every way `source` reaches mxcp_plugins: import statements and import_module / __import__ calls."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "mxcp_plugins"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "mxcp_plugins":
                found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            target = node.args[0].value
            if function in {"import_module", "__import__"} and str(target).split(".")[0] == "mxcp_plugins":
                found.append(target)
    return found


def test_core_modules_are_found():
    assert len(list(CORE.rglob("*.py"))) > 10


@pytest.mark.parametrize("source", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_never_imports_plugins(source):
    assert plugin_imports(source) == []


def test_the_scanner_sees_each_form_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import mxcp_plugins.audit\nfrom mxcp_plugins import secrets_env\n"
        "import importlib\nimportlib.import_module('mxcp_plugins.lint')\n__import__('mxcp_plugins.audit')\n"
        "from .x import mxcp_plugins_like\nPREFIX = 'mxcp_plugins'\n"
    )
    assert sorted(plugin_imports(sample)) == [
        "mxcp_plugins", "mxcp_plugins.audit", "mxcp_plugins.audit", "mxcp_plugins.lint"
    ]


@pytest.fixture
def bootstrapped(run_mxcp, tmp_path) -> Path:
    assert run_mxcp("init", "--bootstrap", "demo", cwd=tmp_path).returncode == 0
    return tmp_path / "demo"


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json-output"]], ids=" ".join)
def test_light_commands_do_not_import_heavy_packages(bootstrapped, args):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=bootstrapped, capture_output=True, text=True, timeout=60, check=False,
    )
    report = json.loads(done.stderr.rsplit("PROBE ", 1)[-1])
    assert report == {"code": 0, "heavy": []}
    assert "hello_world" in done.stdout or args == ["--help"]
