"""Builtin plugin: `env://NAME` references read an environment variable."""
from __future__ import annotations

import os

from mxcp_core import ConfigError, SecretValue, hookimpl

PREFIX = "env://"


@hookimpl(trylast=True)
def resolve_secret(reference, project):
    if not reference.startswith(PREFIX):
        return None
    name = reference[len(PREFIX):]
    if name not in os.environ:
        raise ConfigError(f"environment variable '{name}' (from {PREFIX}{name}) is not set")
    return SecretValue(os.environ[name])
