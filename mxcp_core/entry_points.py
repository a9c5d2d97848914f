"""The entry points of one group, found as `importlib.metadata.entry_points(group=...)` finds them, without importing
`importlib.metadata` (with the email package it pulls in, ~10 ms of every `mxcp` command's start).

The plain case of the discovery Python 3.11 documents, written here: `*.dist-info` / `*.egg-info` folders in the
folders of `sys.path`, the first distribution of each normalized name winning, their `entry_points.txt` read in
that order (tests/test_entry_points.py compares the result with importlib.metadata's).
Anything else (another Python, another finder of distributions, a zip or an egg on the path, a name taken from the
metadata rather than the folder, a file it cannot read or parse) is left to `importlib.metadata` itself, so the
entry points, their order and any error are always the standard library's. Each entry point loads as
`EntryPoint.load` does; its `dist` is the `PathDistribution` importlib.metadata would give, built when asked for.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

# importlib.metadata.EntryPoint.pattern (Python 3.11)
_PATTERN = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_SEPARATORS = re.compile(r"[-_.]+")
_READ_SUPPRESSED = (FileNotFoundError, IsADirectoryError, KeyError, NotADirectoryError, PermissionError)


class _Unusual(Exception):
    """A case this module does not cover: importlib.metadata decides."""


class EntryPoint:
    """An entry point of a distribution folder (name, value, group), loaded as importlib.metadata loads one."""

    def __init__(self, name: str, value: str, group: str, dist_path: Path) -> None:
        self.name = name
        self.value = value
        self.group = group
        self._dist_path = dist_path

    @functools.cached_property
    def dist(self) -> Any:
        from importlib import metadata

        return metadata.PathDistribution(self._dist_path)

    def load(self) -> Any:
        match = _PATTERN.match(self.value)
        module = import_module(match.group("module"))  # type: ignore[union-attr] - as the standard library
        attrs = filter(None, (match.group("attr") or "").split("."))  # type: ignore[union-attr]
        return functools.reduce(getattr, attrs, module)

    def __repr__(self) -> str:
        return f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r})"


def entry_points(group: str) -> list[Any]:
    """The entry points of `group`, in importlib.metadata's order."""
    if sys.version_info[:2] == (3, 11) and _only_the_path_finder():
        try:
            return _scan(group)
        except _Unusual:
            pass
    from importlib import metadata

    return list(metadata.entry_points(group=group))


def _only_the_path_finder() -> bool:
    from importlib.machinery import PathFinder

    return all(finder is PathFinder or getattr(finder, "find_distributions", None) is None
               for finder in sys.meta_path)


def _normalize(name: str) -> str:
    return _SEPARATORS.sub("-", name).lower().replace("-", "_")


def _children(root: str) -> list[str]:
    try:
        return os.listdir(root or ".")
    except Exception:  # noqa: BLE001 - as FastPath.children
        if os.path.exists(root or "."):
            raise _Unusual from None  # a zip file (or an unreadable folder): the standard library's case
        return []


def _scan(group: str) -> list[EntryPoint]:
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for root in sys.path:
        base_is_egg = os.path.basename(root).lower().endswith(".egg")
        infos: dict[str, list[str]] = {}
        for child in _children(root):
            low = child.lower()
            if low.endswith((".dist-info", ".egg-info")):
                infos.setdefault(_normalize(low.rpartition(".")[0].partition("-")[0]), []).append(child)
            elif base_is_egg and low == "egg-info":
                raise _Unusual
        for children in infos.values():
            for child in children:
                stem, ext = os.path.splitext(child)
                key = _normalize(stem.partition("-")[0]) if ext in (".dist-info", ".egg-info") else ""
                if not key:
                    raise _Unusual  # the name would come from the metadata
                if key in seen:
                    continue
                seen.add(key)
                dist_path = Path(root, child)
                found.extend(_group_of(dist_path, group))
    return found


def _group_of(dist_path: Path, group: str) -> list[EntryPoint]:
    try:
        text = dist_path.joinpath("entry_points.txt").read_text(encoding="utf-8")
    except _READ_SUPPRESSED:
        return []
    except Exception:  # noqa: BLE001 - e.g. not UTF-8: importlib.metadata raises it
        raise _Unusual from None
    section = None
    found = []
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section is None:
            continue
        if "=" not in line:
            raise _Unusual  # importlib.metadata raises
        name, value = line.split("=", 1)
        if section == group:
            found.append(EntryPoint(name.strip(), value.strip(), section, dist_path))
    return found
