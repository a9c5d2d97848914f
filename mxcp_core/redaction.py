"""The one place that decides what is secret or sensitive, and masks it in text.

Two kinds of values are hidden: the active profile's secret values (registered when a runtime starts, for the
life of the process) and the `sensitive` values of the current call (its arguments marked `sensitive: true`,
and the parts of a result the return type marks so). Every channel that can carry them — the client's error
text, the CLI's messages, log records, audit records, test failure messages — masks through `mask`.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"
# Very short values ("1", "on") would mask ordinary words; real secrets are longer.
MIN_SECRET_LENGTH = 4
# A sensitive string is masked from this length on ("ab" would mask too much text); sensitive numbers always are.
MIN_SENSITIVE_LENGTH = 3


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
        extra = [v for v in extra if v]
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


def register_secrets(secrets: Iterable[Any]) -> None:
    """Mask these secrets' values (`SecretConfig` records) from now on, in every channel."""
    for secret in secrets:
        masker.add(secret_values(secret.parameters))


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


def hidden_values(value: Any, redacted: Any) -> list[str]:
    """The parts of `value` that its redacted form replaced, as text would show them (strings and numbers)."""
    if value == redacted:
        return []
    found: list[str] = []
    if isinstance(value, Mapping) and isinstance(redacted, Mapping):
        for key, item in value.items():
            found += hidden_values(item, redacted.get(key))
    elif isinstance(value, (list, tuple)) and isinstance(redacted, (list, tuple)) and len(value) == len(redacted):
        for item, masked in zip(value, redacted):
            found += hidden_values(item, masked)
    else:
        from .typesystem import to_jsonable

        found += [v for v in secret_values(to_jsonable(value)) if len(v) >= MIN_SENSITIVE_LENGTH]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(str(value))
    return found


def sensitive_arguments(call: Any = None) -> list[str]:
    """The `sensitive` argument values of `call` (default: the current call), computed only when needed."""
    if call is None:
        from .context import current_call

        call = current_call.get()
    compiled = getattr(call, "compiled", None)
    if compiled is None or not call.arguments:
        return []
    return hidden_values(call.arguments, compiled.parameters.redact(call.arguments))


def mask(text: str, call: Any = None, *, extra: Iterable[str] = ()) -> str:
    """`text` with secret values, the call's sensitive arguments (default: the current call's) and `extra` masked."""
    return masker.mask(text, [*sensitive_arguments(call), *extra])


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
