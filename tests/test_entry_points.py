"""mxcp_core.entry_points finds what importlib.metadata.entry_points(group=...) finds, in the same order, with
the same distributions; cases it does not copy are answered by importlib.metadata itself."""
from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

from mxcp_core import entry_points as light


def described(eps):
    return [(ep.name, ep.value, ep.group, str(ep.dist._path), ep.dist.metadata["Name"], ep.dist.version)
            for ep in eps]


def dist(folder: Path, dirname: str, name: str, text: str | bytes | None, version: str = "1.0") -> None:
    info = folder / dirname
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    if isinstance(text, bytes):
        (info / "entry_points.txt").write_bytes(text)
    elif text is not None:
        (info / "entry_points.txt").write_text(text, encoding="utf-8")


@pytest.mark.parametrize("group", ["mxcp", "console_scripts", "pytest11", "nothing"])
def test_the_installed_entry_points_are_the_standard_librarys(group):
    assert described(light.entry_points(group)) == described(metadata.entry_points(group=group))


def test_tricky_folders_read_as_the_standard_library_reads_them(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    dist(first, "Alpha_Pkg-1.0.dist-info", "Alpha-Pkg",
         "# comment\n\n[mxcp]\n a = alpha.plugin \nb=alpha.other:thing.attr [extra]\n[other]\nc = x\n")
    dist(first, "beta-2.0.egg-info", "beta", "[mxcp]\r\nbeta = beta_mod\r\n")
    dist(first, "no_entry_points-1.0.dist-info", "no-entry-points", None)
    dist(second, "alpha.pkg-3.0.dist-info", "alpha.pkg", "[mxcp]\nshadowed = never\n")  # same normalized name
    dist(second, "gamma-1.0.dist-info", "gamma", "[mxcp]\na = gamma.dup\n; semicolon = not a comment\n")
    (second / "not-a-dist.txt").write_text("x", encoding="utf-8")
    monkeypatch.setattr(sys, "path", [str(first), str(tmp_path / "missing"), str(second), *sys.path])
    found = light._scan("mxcp")
    assert described(found) == described(metadata.entry_points(group="mxcp"))
    ours = sorted(ep.name for ep in found if str(tmp_path) in str(ep.dist._path))
    assert ours == ["; semicolon", "a", "a", "b", "beta"]  # `shadowed`: alpha.pkg is the first folder's


@pytest.mark.parametrize("layout", ["uppercase extension", "malformed line", "not UTF-8", "zip on the path"])
def test_cases_it_does_not_copy_go_to_the_standard_library(layout, tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    entry = folder
    if layout == "uppercase extension":
        dist(folder, "Odd-1.0.DIST-INFO", "Odd", "[mxcp]\nodd = odd_mod\n")
    elif layout == "malformed line":
        dist(folder, "bad-1.0.dist-info", "bad", "[mxcp]\nno equals sign here\n")
    elif layout == "not UTF-8":
        dist(folder, "latin-1.0.dist-info", "latin", b"[mxcp]\nname = caf\xe9\n")
    else:
        entry = tmp_path / "archive.zip"
        entry.write_bytes(b"not really a zip")
    monkeypatch.setattr(sys, "path", [str(entry), *sys.path])
    with pytest.raises(light._Unusual):
        light._scan("mxcp")

    def outcome(find):
        try:
            return described(find())
        except Exception as exc:  # noqa: BLE001 - the error itself is compared
            return (type(exc).__name__, str(exc))

    assert outcome(lambda: light.entry_points("mxcp")) == outcome(lambda: metadata.entry_points(group="mxcp"))


def test_an_entry_point_loads_as_the_standard_librarys():
    ours = {ep.name: ep for ep in light.entry_points("mxcp")}
    for ep in metadata.entry_points(group="mxcp"):
        if ep.value.startswith("mxcp_plugins."):
            assert ours[ep.name].load() is ep.load()
    bad = light.EntryPoint("x", "not a valid value!", "mxcp", Path("."))
    with pytest.raises(AttributeError):
        bad.load()
