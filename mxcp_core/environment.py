"""The MXCP_* environment variables, read one way everywhere."""
from __future__ import annotations

import os

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(name: str) -> bool | None:
    """A boolean variable: None when unset or empty, True for 1/true/yes/on, False for 0/false/no/off.

    Anything else is refused (ConfigError): read as false, `MXCP_AUDIT_ENABLED=ture` would switch off an audit log
    the site config turns on."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    from .errors import ConfigError

    raise ConfigError(f"{name}={raw.strip()!r} is not a boolean: use 1/true/yes/on or 0/false/no/off")


def env_list(name: str) -> list[str]:
    """A comma-separated variable as its non-empty items."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def debug_enabled(flag: bool = False) -> bool:
    """`--debug`, or MXCP_DEBUG set to a true value."""
    if flag:
        return True
    try:
        return bool(env_flag("MXCP_DEBUG"))
    except Exception:  # noqa: BLE001 - debug output only: a malformed value must not stop the command reporting
        return False
