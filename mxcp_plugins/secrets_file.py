"""Builtin plugin: `file://path` references read a file (relative paths from the project root), stripped."""
from __future__ import annotations

from pathlib import Path

from mxcp_core import ConfigError, SecretValue, hookimpl

PREFIX = "file://"


@hookimpl(trylast=True)
def resolve_secret(reference, project):
    if not reference.startswith(PREFIX):
        return None
    path = Path(reference[len(PREFIX):]).expanduser()
    if not path.is_absolute() and project is not None:
        path = project.root / path
    try:
        return SecretValue(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        # The path is not secret; its content would be.
        raise ConfigError(f"cannot read {PREFIX} reference {path}: {exc.strerror}") from None
