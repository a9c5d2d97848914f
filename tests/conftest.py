"""Shared fixtures: every test runs isolated from the developer's ~/.mxcp, MXCP_* environment and plugins.

Plugins of other installed distributions (entry point group `mxcp`, e.g. examples/mxcp-plugin-example when
CI installs it) are disabled through MXCP_DISABLE_PLUGINS, so they add no tools to the projects tests build.
A test that wants them deletes that variable; the fixture `third_party_plugins` lists their names.

- `make_project(root, files)` writes a project (a default mxcp-site.yml unless `files` has one) and returns its root.
- `user_config(text)` writes a user config and points MXCP_CONFIG at it.
- `make_dist(...)` creates an installed-looking distribution with `mxcp` entry points on sys.path.
- `run_mxcp(*args, cwd=...)` runs the real `mxcp` command in a subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import pytest

DEFAULT_SITE = "mxcp: 1\nproject: demo\nprofile: default\n"
OWN = "mxcp-pluggy"  # the distribution whose entry points are the builtins

# Every variable the framework reads; none may leak in from the developer's shell.
MXCP_ENV = (
    "MXCP_CONFIG", "MXCP_PROFILE", "MXCP_DISABLE_PLUGINS", "MXCP_STRICT_PLUGINS", "MXCP_DUCKDB_PATH",
    "MXCP_READONLY", "MXCP_AUDIT_ENABLED", "MXCP_DEBUG", "MXCP_PROJECT_DIR",
    "MXCP_TELEMETRY_ENABLED",
    # and those the secret-store plugins read
    "VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_CACERT", "OP_SERVICE_ACCOUNT_TOKEN",
)


@pytest.fixture(scope="session")
def third_party_plugins() -> list[str]:
    """Names of installed `mxcp` plugins that are not this project's builtins."""
    return sorted(
        {ep.name for ep in metadata.entry_points(group="mxcp") if ep.dist is None or ep.dist.metadata["Name"] != OWN}
    )


@pytest.fixture(autouse=True)
def fresh_secret_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The masker is process-wide (a secret once seen stays masked); each test starts with none from the last."""
    from mxcp_core import redaction

    monkeypatch.setattr(redaction, "masker", redaction.SecretMasker())


@pytest.fixture(autouse=True)
def isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, third_party_plugins: list[str]
) -> Path:
    """A fresh empty HOME, no MXCP_* variables, other distributions' plugins disabled; returns the HOME folder."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in MXCP_ENV:
        monkeypatch.delenv(name, raising=False)
    if third_party_plugins:
        monkeypatch.setenv("MXCP_DISABLE_PLUGINS", ",".join(third_party_plugins))
    return home


def write_files(root: Path, files: Mapping[str, str]) -> None:
    """Write `{relative path: text}` under root; the text is dedented, folders are created."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


@pytest.fixture
def make_project() -> Callable[..., Path]:
    """`make_project(tmp_path, {"tools/x.yml": "..."})`: a project in `root` (project `demo`, profile `default`)."""

    def make(root: Path, files: Mapping[str, str] | None = None) -> Path:
        files = dict(files or {})
        files.setdefault("mxcp-site.yml", DEFAULT_SITE)
        root.mkdir(parents=True, exist_ok=True)
        write_files(root, files)
        return root

    return make


@pytest.fixture
def user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Path]:
    """`user_config("mxcp: 1\\nprojects: ...")`: writes the file and sets MXCP_CONFIG to it."""

    def write(text: str) -> Path:
        path = tmp_path / "user-config" / "config.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        monkeypatch.setenv("MXCP_CONFIG", str(path))
        return path

    return write


@attrs.define
class TokenProject:
    """A project whose user config a test writes, opened with a token in `token_env` (`token=None`: unset).

    Calling it opens the project; `error(...)` is the text of the ConfigError opening it raises instead.
    """

    root: Path
    write_config: Callable[[str], Path]
    monkeypatch: pytest.MonkeyPatch
    token_env: str
    token: str | None

    def __call__(self, text: str, token: Any = "default") -> Any:
        from mxcp_core import open_project

        self.write_config(text)
        token = self.token if token == "default" else token
        if token is None:
            self.monkeypatch.delenv(self.token_env, raising=False)
        else:
            self.monkeypatch.setenv(self.token_env, token)
        return open_project(self.root)

    def error(self, text: str, token: Any = "default") -> str:
        from mxcp_core import ConfigError

        with pytest.raises(ConfigError) as caught:
            self(text, token)
        return str(caught.value)


@pytest.fixture
def token_project(make_project, user_config, monkeypatch, tmp_path) -> Callable[[str, str | None], TokenProject]:
    """`token_project("VAULT_TOKEN", "root")`: see TokenProject (the project is `demo`, profile `default`)."""
    root = make_project(tmp_path / "p")
    return lambda token_env, token: TokenProject(root, user_config, monkeypatch, token_env, token)


@pytest.fixture
def make_dist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """`make_dist("acme-tools", {"acme_plugin": "source"}, {"acme": "acme_plugin"})`: a distribution on sys.path.

    It is a folder with the modules and a `<name>-<version>.dist-info` holding METADATA and entry_points.txt
    (group `mxcp`), which is all importlib.metadata needs. Returns the folder, e.g. for a subprocess PYTHONPATH.
    Its modules are dropped from sys.modules afterwards so another test may reuse the names.
    """

    def make(name: str, modules: Mapping[str, str], entry_points: Mapping[str, str], version: str = "1.0.0") -> Path:
        folder = tmp_path / f"dist-{name}"
        write_files(folder, {f"{module.replace('.', '/')}.py": text for module, text in modules.items()})
        info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[mxcp]\n{lines}", encoding="utf-8")
        monkeypatch.syspath_prepend(str(folder))
        for module in modules:
            monkeypatch.delitem(sys.modules, module, raising=False)
        return folder

    yield make
    # monkeypatch restores sys.modules entries it deleted, but not the modules the test imported since.
    for key in [k for k, v in sys.modules.items() if str(getattr(v, "__file__", "") or "").startswith(str(tmp_path))]:
        del sys.modules[key]


@pytest.fixture
def run_mxcp() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_mxcp("list", "--json-output", cwd=project, pythonpath=[folder])`: the real CLI in a subprocess."""

    def run(*args: str, cwd: Path, pythonpath: list[Path] | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, **(env or {})}
        if pythonpath:
            environ["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), environ.get("PYTHONPATH", "")])
        return subprocess.run(
            [sys.executable, "-c", "from mxcp_core.cli import main; main()", *args],
            cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout, check=False,
        )

    return run


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server on 127.0.0.1 for the session (tests/postgres_server.py); stopped at the end."""
    from postgres_server import start_postgres

    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(postgres: Any) -> str:
    """A fresh, empty database on the session's PostgreSQL server: its name."""
    return postgres.fresh_database()
