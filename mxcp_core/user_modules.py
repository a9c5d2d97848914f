"""Importing the project's own Python (python/, plugins/) without disturbing anyone else's modules.

User folders go on the import path after the standard library and before site-packages, so a user file named
`json.py` never shadows `json`. A file that cannot be imported under its own name (it is named like a standard
module, or another project loaded a module of that name) is loaded under a private name instead. When the
project closes, every module loaded from its folders leaves `sys.modules`, so another project in the same process
imports its own `utils` afresh.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


def add_to_import_path(folder: Path) -> bool:
    """Put `folder` on sys.path after the standard library; False when it was there already."""
    entry = str(folder)
    if entry in sys.path:
        return False
    position = next(
        (i for i, path in enumerate(sys.path) if "site-packages" in path or "dist-packages" in path), len(sys.path)
    )
    sys.path.insert(position, entry)
    importlib.invalidate_caches()
    return True


def remove_from_import_path(folder: Path) -> None:
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    importlib.invalidate_caches()


@contextmanager
def folder_on_path(folder: Path, *, keep_prefix: str | None = None) -> Iterator[None]:
    """`folder` on the import path while its modules import (for their sibling helpers), then off again.

    Helpers imported meanwhile leave sys.modules afterwards (their importers keep references), except those
    whose name starts with `keep_prefix` (modules loaded under private names).
    """
    if not folder.is_dir() or not add_to_import_path(folder):
        yield
        return
    try:
        yield
    finally:
        remove_from_import_path(folder)
        forget_modules_under(folder, keep_prefix=keep_prefix)


def load_private_module(name: str, file: Path) -> ModuleType:
    """Import `file` afresh as module `name` (a package when it is an `__init__.py`), replacing any module of that
    name in sys.modules (whoever imported the old one keeps it); a failed import leaves no trace."""
    package = file.name == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, file, submodule_search_locations=[str(file.parent)] if package else None
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def modules_under(folder: Path) -> list[str]:
    """Names of imported modules and packages living in `folder`, parents such as `utils` of `utils.validators`
    included (user code imports them implicitly, and another project may have its own under the same name)."""
    prefix = str(folder) + os.sep
    found = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        locations = [str(entry) for entry in (getattr(module, "__path__", None) or ())]
        if file.startswith(prefix) or any(entry == str(folder) or entry.startswith(prefix) for entry in locations):
            found.append(name)
    return found


def forget_modules_under(folder: Path, *, keep_prefix: str | None = None) -> None:
    """Drop the modules of `folder` from sys.modules (but those whose name starts with `keep_prefix`)."""
    resolved = folder.resolve()
    for name in set(modules_under(folder)) | set(modules_under(resolved)):
        if keep_prefix is None or not name.startswith(keep_prefix):
            sys.modules.pop(name, None)
    importlib.invalidate_caches()
