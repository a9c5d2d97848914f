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
        # Longest first, so a secret containing another is masked whole.
        self._values: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH} - set(self._values)
        if fresh:
            with self._lock:
                self._values = tuple(sorted({*self._values, *fresh}, key=len, reverse=True))

    def mask(self, text: str, extra: Iterable[str] = ()) -> str:
        """`text` with every secret value, and each of `extra`, replaced by the mask."""
        values = self._values
        if extra:
            values = tuple(sorted({*values, *extra}, key=len, reverse=True))
        for value in values:
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


def sensitive_arguments() -> tuple[str, ...]:
    """Values of the current call's `sensitive` arguments (computed only when something is logged)."""
    from .context import current_call

    call = current_call.get()
    if call is None:
        return ()
    compiled = call.runtime.compiled.get((call.endpoint.kind, call.endpoint.key))
    if compiled is None:
        return ()
    redacted = compiled.parameters.redact(call.arguments)
    found: list[str] = []
    for name, value in call.arguments.items():
        if redacted.get(name) != value:
            found.extend(v for v in secret_values(value) if len(v) >= 3)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.append(str(value))
    return tuple(found)


class RedactingFilter(logging.Filter):
    """Masks secret values and the current call's sensitive arguments in the message and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        extra = sensitive_arguments()
        if not masker.active and not extra:
            return True
        message = record.getMessage()
        masked = masker.mask(message, extra)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = masker.mask(record.exc_text, extra)
        return True


def install(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Attach the filter to the given handlers (default: the root logger's), once each."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
