"""Error types shared by the core and plugins; each carries what a user needs to fix the input."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class MxcpError(Exception):
    """Base class of every error the framework raises on purpose (shown without a traceback)."""


class ConfigError(MxcpError):
    """Bad configuration or endpoint YAML: names the file, the line where known, and the key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key_path: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.key_path = key_path
        super().__init__(self.format())

    def detail(self) -> str:
        """The error without its file: `line 3: tool.name: message`."""
        parts = [f"line {self.line}" if self.line else None, self.key_path, self.message]
        return ": ".join(p for p in parts if p)

    def format(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        if self.key_path:
            where = f"{where}: {self.key_path}" if where else self.key_path
        return f"{where}: {self.message}" if where else self.message


class ValidationError(MxcpError):
    """Arguments or results that do not match an endpoint's declared types."""


class ExecutionError(MxcpError):
    """An endpoint failed while running; the message is safe to show to a client."""


class NotFoundError(MxcpError):
    """An endpoint, secret or plugin that does not exist."""


class PluginLoadError(MxcpError):
    """A plugin failed to import or register (fatal only in strict mode)."""


def suggest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
