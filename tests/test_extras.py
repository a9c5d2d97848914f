"""The optional extras that skip reasons name (tests/extras.py) exist in pyproject.toml and provide the modules."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from extras import EXTRAS

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
DISTRIBUTION = {"sklearn": "scikit-learn", "cel_expr_python": "cel-expr-python"}  # module -> distribution, where the names differ


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_each_extra_named_in_skip_reasons_installs_its_modules():
    optional = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert extra in optional, f"extra [{extra}] is not in pyproject.toml"
        names = requirement_names(optional[extra])
        for module in modules:
            assert DISTRIBUTION.get(module, module) in names, f"[{extra}] does not install {module}"
