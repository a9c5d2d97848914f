"""Keeping secret values out of log output: a logging filter that masks every configured secret value."""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"
# Very short values ("1", "on") would mask ordinary words; real secrets are longer.
MIN_SECRET_LENGTH = 4


class SecretMasker:
    """The set of values to mask, shared by every handler's filter; runtimes add their project's secrets."""

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}
        if fresh - self._values:
            with self._lock:
                # Longest first, so a secret containing another is masked whole.
                self._values = frozenset(self._values | fresh)

    def mask(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

    @property
    def active(self) -> bool:
        return bool(self._values)


masker = SecretMasker()


def secret_values(parameters: Any) -> Iterable[str]:
    """Every string inside a secret's parameters (nested mappings and lists included)."""
    if isinstance(parameters, str):
        yield parameters
    elif isinstance(parameters, Mapping):
        for value in parameters.values():
            yield from secret_values(value)
    elif isinstance(parameters, (list, tuple)):
        for value in parameters:
            yield from secret_values(value)


class RedactingFilter(logging.Filter):
    """Masks secret values in the message and in the formatted traceback of each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not masker.active:
            return True
        message = record.getMessage()
        masked = masker.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = masker.mask(record.exc_text)
        return True


def install(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Attach the filter to the given handlers (default: the root logger's), once each."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
