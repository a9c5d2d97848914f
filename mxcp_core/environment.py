"""The MXCP_* environment variables, read one way everywhere."""
from __future__ import annotations

import os

_TRUE = frozenset({"1", "true", "yes", "on"})


def env_flag(name: str) -> bool | None:
    """A boolean variable: None when unset or empty, True for 1/true/yes/on; anything else is False."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return raw.strip().lower() in _TRUE


def env_list(name: str) -> list[str]:
    """A comma-separated variable as its non-empty items."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def debug_enabled(flag: bool = False) -> bool:
    """`--debug`, or MXCP_DEBUG set to a true value."""
    return flag or bool(env_flag("MXCP_DEBUG"))
