"""The one place that decides what is secret or sensitive, and masks it in text.

Two kinds of values are hidden: the active profile's secret values (registered when a runtime starts, for the
life of the process) and the `sensitive` values of the current call (its arguments marked `sensitive: true`,
and the parts of a result the return type marks so). Every channel that can carry them — the client's error
text, the CLI's messages, log records, audit records, test failure messages — masks through `mask`, which
finds a value in every encoding text can carry it in (see `encodings`; docs/audit.md has the list).
"""
from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"
# Very short values ("1", "on") would mask ordinary words; real secrets are longer.
MIN_SECRET_LENGTH = 4
# A sensitive string is masked from this length on ("ab" would mask too much text); sensitive numbers always are.
MIN_SENSITIVE_LENGTH = 3
# Each line of a multi-line value (a PEM key, a service-account file) is masked on its own, since a traceback
# or a log line may quote just one. Lines shorter than this are left: they are "}", "---", "port: 5432" — words
# that occur in ordinary text — and under 12 characters of a key (9 bytes of base64) give an attacker nothing.
MIN_LINE_LENGTH = 12


@functools.lru_cache(maxsize=4096)
def encodings(value: str) -> frozenset[str]:
    """Every form in which `value`, or one line of it, can appear in text.

    As is; inside a Python repr or ascii() (either quote style: backslashes doubled, quotes, newlines and
    non-ASCII escaped); inside a JSON string (with and without ensure_ascii); and each of these escaped once
    more, since an error's repr or a JSON log line may quote a message that already quotes the value. Each
    line of a multi-line value (from MIN_LINE_LENGTH on) counts on its own.
    """
    parts = {value}
    if "\n" in value or "\r" in value:
        parts.update(line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_LINE_LENGTH)
    found: set[str] = set()
    for part in parts:
        level = {part}
        for _ in range(2):
            level = {escaped for text in level for escaped in _escaped(text)}
            found |= level
    return frozenset(found)


def _escaped(text: str) -> set[str]:
    """`text` itself and its escaped forms, without the surrounding quotes."""
    # repr picks its quote from the content; with both quotes appended it must use '...' and escape \' — the
    # form a value takes inside the repr of a larger string or container. ascii() also escapes non-ASCII.
    return {
        text,
        repr(text)[1:-1], repr(text + "'\"")[1:-4],
        ascii(text)[1:-1], ascii(text + "'\"")[1:-4],
        json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1],
    }


def _replace(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            if _is_number_text(form):
                # A number is masked where it stands alone, never inside a longer one (5432 in 154320).
                text = re.sub(rf"(?<![0-9.]){re.escape(form)}(?!\.?[0-9])", MASK, text)
            else:
                text = text.replace(form, MASK)
    return text


def _longest_first(values: Iterable[str]) -> tuple[str, ...]:
    # Longest first, so a value containing another (the whole key and one of its lines) is masked whole.
    return tuple(sorted(values, key=len, reverse=True))


class SecretMasker:
    """The set of values to mask, shared by every handler's filter; runtimes add their project's secrets."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._values: tuple[str, ...] = ()  # every encoding of every secret, longest first
        self._numbers: frozenset[str] = frozenset()  # secrets that are numbers: masked as numbers in data too
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH} - self._secrets
        if fresh:
            with self._lock:
                self._secrets |= fresh
                self._values = _longest_first({form for v in self._secrets for form in encodings(v)})
                self._numbers = frozenset(v for v in self._secrets if _is_number_text(v))

    def mask(self, text: str, extra: Iterable[str] = ()) -> str:
        """`text` with every secret value, and each of `extra`, replaced by the mask in each of its encodings."""
        return _replace(text, self._forms(extra))

    def mask_data(self, value: Any, extra: Iterable[str] = ()) -> Any:
        """A JSON-shaped `value` with every string in it (mapping keys too) masked as `mask` masks text."""
        forms = self._forms(extra)
        # A secret or sensitive number echoed back as a number (not inside a string) is hidden too.
        numbers = {v for v in extra if v and _is_number_text(v)} | self._numbers

        def walk(item: Any) -> Any:
            if isinstance(item, str):
                return _replace(item, forms)
            if numbers and isinstance(item, (int, float)) and not isinstance(item, bool) and str(item) in numbers:
                return MASK
            if isinstance(item, Mapping):
                return {walk(k): walk(v) for k, v in item.items()}
            if isinstance(item, (list, tuple)):
                return [walk(v) for v in item]
            return item

        return walk(value) if forms else value

    def _forms(self, extra: Iterable[str]) -> tuple[str, ...]:
        extra = [v for v in extra if v]
        if not extra:
            return self._values
        return _longest_first({*self._values, *(form for v in extra for form in encodings(v))})

    @property
    def active(self) -> bool:
        return bool(self._values)


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


masker = SecretMasker()


# Parameters of a secret type that say where to connect, not how to prove who you are. Masking them would blank
# every "5432", "127.0.0.1" or database name in errors, logs and audit records. A value that came from a
# reference (vault://, file://, op://) is masked whatever its key (project.py registers those on resolving).
LOCATION_KEYS = {
    "postgres": frozenset({"host", "hostaddr", "port", "database", "dbname", "user", "username", "sslmode",
                           "application_name", "connect_timeout", "target_session_attrs"}),
}


def register_secrets(secrets: Iterable[Any]) -> None:
    """Mask these secrets' values (`SecretConfig` records) from now on, in every channel."""
    for secret in secrets:
        parameters = secret.parameters
        location = LOCATION_KEYS.get(str(getattr(secret, "type", "")).lower())
        if location and isinstance(parameters, Mapping):
            parameters = {key: value for key, value in parameters.items() if key not in location}
        masker.add(secret_values(parameters))


def secret_values(parameters: Any) -> Iterable[str]:
    """Every string inside a secret's parameters (nested mappings and lists included), and every number as text
    would show it (a numeric password from a vault is a secret too)."""
    if isinstance(parameters, str):
        yield parameters
    elif isinstance(parameters, (int, float)) and not isinstance(parameters, bool):
        yield str(parameters)
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
    """The sensitive values of `call` (default: the current call), computed only when needed: its arguments
    marked `sensitive`, and its caller's external token (an upstream credential, e.g. from get_user_external_token())."""
    if call is None:
        from .context import current_call

        call = current_call.get()
    token = getattr(getattr(call, "user", None), "external_token", None)
    compiled = getattr(call, "compiled", None)
    if (compiled is None or not call.arguments) and not token:
        return []
    # Once per call: every log line, error and audit record of the call asks again, and the arguments are fixed.
    notes = getattr(call, "notes", None)
    found = notes.get(_SENSITIVE_NOTE) if notes is not None else None
    if found is None:
        found = hidden_values(call.arguments, compiled.parameters.redact(call.arguments)) if (
            compiled is not None and call.arguments) else []
        if token:
            found = [*found, token]
        if notes is not None:
            notes[_SENSITIVE_NOTE] = found
    return found


_SENSITIVE_NOTE = "_sensitive_arguments"


def mask(value: Any, call: Any = None, *, extra: Iterable[str] = ()) -> Any:
    """`value` with secret values, the call's sensitive arguments (default: the current call's) and `extra` masked.

    A string is masked as text; a JSON-shaped value (mappings, lists) comes back as a copy with every string in
    it masked, for records that store data rather than text (the audit log's input and output).
    """
    extras = [*sensitive_arguments(call), *extra]
    if isinstance(value, str):
        return masker.mask(value, extras)
    return masker.mask_data(value, extras)


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
        if record.stack_info:
            record.stack_info = masker.mask(record.stack_info, extra)
        return True


def install(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Attach the filter to the given handlers (default: the root logger's), once each."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
