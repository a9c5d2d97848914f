"""hookspecs.md and mxcp_core/hookspecs.py agree, and every hook is exercised by some test."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from mxcp_core import hookspecs
from mxcp_core.markers import PROJECT_NAME

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "hookspecs.md"
TESTS = Path(__file__).resolve().parent


def spec_functions() -> dict[str, object]:
    return {
        name: value for name, value in vars(hookspecs).items()
        if inspect.isfunction(value) and hasattr(value, f"{PROJECT_NAME}_spec")
    }


def code_signature(function) -> str:
    """`def name(arg: Type, ...) -> Return`, annotations as written (hookspecs uses postponed annotations)."""
    signature = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"def {function.__name__}({params}) -> {signature.return_annotation}"


def doc_sections() -> dict[str, str]:
    """Hook name → its section of hookspecs.md (from its `## \\`name\\`` heading to the next heading)."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## `([a-z_]+)`\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def doc_field(section: str, field: str) -> str:
    """The text of a `- **Field:** ...` item, continuation lines (indented) joined."""
    found = re.search(rf"^- \*\*{field}:\*\*\s*(.+(?:\n  .+)*)", section, flags=re.M)
    assert found, f"no '{field}' line"
    return " ".join(found.group(1).split())


def test_every_hook_is_documented_and_every_documented_hook_exists():
    assert sorted(doc_sections()) == sorted(spec_functions())


@pytest.mark.parametrize("name", sorted(spec_functions()))
def test_documented_signature_matches_code(name):
    section = doc_sections()[name]
    block = re.search(r"```python\n(def .+?)\n```", section, flags=re.S)
    assert block, f"hookspecs.md: {name} has no ```python def ...``` signature block"
    documented = " ".join(block.group(1).split())
    assert documented == code_signature(spec_functions()[name])


@pytest.mark.parametrize("name", sorted(spec_functions()))
def test_documented_firstresult_matches_code(name):
    documented = doc_field(doc_sections()[name], "firstresult")
    firstresult = getattr(spec_functions()[name], f"{PROJECT_NAME}_spec")["firstresult"]
    assert documented == ("yes" if firstresult else "no")


def builtin_sources() -> dict[str, Path]:
    """Builtin plugin name → its module file: every builtin entry point's module, and `core`."""
    from importlib import metadata

    sources = {
        ep.name: ROOT / (ep.value.replace(".", "/") + ".py")
        for ep in metadata.entry_points(group="mxcp") if ep.value.startswith("mxcp_plugins.")
    }
    # Modules of mxcp_plugins that no entry point names would implement hooks unseen: there must be none.
    listed = set(sources.values())
    stray = [p for p in (ROOT / "mxcp_plugins").rglob("*.py") if p not in listed and hookimpl_names(p)]
    assert stray == [], f"modules implementing hooks without an entry point: {stray}"
    sources["core"] = ROOT / "mxcp_core" / "plugin_manager.py"
    return sources


def documented_builtins(name: str) -> list[str]:
    """The backticked plugin names at the start of the hook's `Builtin:` line and after each `), `."""
    line = doc_field(doc_sections()[name], "Builtin")
    return [a or b for a, b in re.findall(r"^`([a-z_]+)`|\), `([a-z_]+)`|^none$", line) if a or b]


@pytest.mark.parametrize("name", sorted(spec_functions()))
def test_documented_builtins_are_exactly_those_implementing_the_hook(name):
    """The doc names every builtin implementing the hook, and only those (`core` is mxcp_core/plugin_manager.py)."""
    implementing = sorted(plugin for plugin, source in builtin_sources().items() if name in hookimpl_names(source))
    assert sorted(documented_builtins(name)) == implementing, (
        f"hookspecs.md: the Builtin line of {name} must name exactly the builtins implementing it"
    )


def hookimpl_names(source: Path) -> set[str]:
    """Names of functions and methods decorated with `@hookimpl` or `@hookimpl(...)` in a module."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Name) and target.id == "hookimpl":
                    names.add(node.name)
    return names


def test_every_hook_has_a_test_implementing_it():
    """Each hook is implemented by at least one test plugin (`def <hook>(`) outside this file."""
    texts = [p.read_text(encoding="utf-8") for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name]
    untested = [name for name in spec_functions() if not any(re.search(rf"\bdef {name}\(", t) for t in texts)]
    assert untested == []


def test_spec_docstrings_are_one_line():
    for name, function in spec_functions().items():
        doc = inspect.getdoc(function) or ""
        assert doc and "\n" not in doc, name
