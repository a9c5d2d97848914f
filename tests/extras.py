"""Optional extras of pyproject.toml that some tests need, and the skip that names the extra to install.

`pip install -e ".[test]"` installs only what most of the suite needs; a test that needs an optional extra is
marked `@needs_extra("pandas")` (or calls `skip_without_extra`) and skips, naming the install command, when a
module of that extra is missing. CI installs every extra, so there these tests run.
"""
from __future__ import annotations

import importlib.util

import pytest

# Extra name in [project.optional-dependencies] -> the modules it provides that tests import.
EXTRAS: dict[str, tuple[str, ...]] = {
    "pandas": ("pandas",),
    "ml": ("sklearn", "pandas"),
    "redis": ("redis",),
    "keyring": ("keyring",),
    "cel": ("cel_expr_python",),
}


def available(module: str) -> bool:
    """True when `module` can be imported (found without importing it)."""
    return importlib.util.find_spec(module) is not None


def missing_from(extra: str) -> list[str]:
    """The modules of `extra` that are not installed."""
    return [module for module in EXTRAS[extra] if not available(module)]


def skip_reason(extra: str, missing: list[str] | None = None, who: str = "") -> str:
    """E.g. `example ml-classifier needs sklearn from the optional extra [ml]: pip install -e ".[ml]"`."""
    missing = missing_from(extra) if missing is None else missing
    needs = f"{who} needs" if who else "needs"
    return f"{needs} {', '.join(missing)} from the optional extra [{extra}]: pip install -e \".[{extra}]\""


def needs_extra(extra: str) -> pytest.MarkDecorator:
    """A skipif marker: skip the test (or parametrised case) when a module of `extra` is missing."""
    missing = missing_from(extra)
    return pytest.mark.skipif(bool(missing), reason=skip_reason(extra, missing) if missing else "")


def skip_without_extra(extra: str, who: str = "") -> None:
    """Skip the running test when a module of `extra` is missing (`who` starts the reason, e.g. an example)."""
    __tracebackhide__ = True  # the skip is reported at the test's line
    missing = missing_from(extra)
    if missing:
        pytest.skip(skip_reason(extra, missing, who))
