"""Plugin `example_vault`: resolves `demo-vault://NAME` references in the user config.

A stand-in for a real secret store. A secret `NAME` is looked up in the environment variable
`DEMO_VAULT_<NAME>` (upper case, `-` and `.` become `_`), then in `demo-vault.json` at the project root.
"""
from __future__ import annotations

import json
import os
import re

from mxcp_core import hookimpl
from mxcp_core.errors import ConfigError
from mxcp_core.records import SecretValue

SCHEME = "demo-vault://"
VAULT_FILE = "demo-vault.json"


def env_name(name: str) -> str:
    return "DEMO_VAULT_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


@hookimpl
def resolve_secret(reference, project):
    if not reference.startswith(SCHEME):
        return None  # not ours: another provider may own the scheme
    name = reference[len(SCHEME):]
    if not name:
        raise ConfigError(f"{SCHEME} reference without a secret name")
    if env_name(name) in os.environ:
        return SecretValue(os.environ[env_name(name)])
    if project is not None:
        path = project.root / VAULT_FILE
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                # The file's content may be secret: name the file, never quote it.
                raise ConfigError(f"{VAULT_FILE} is not valid JSON") from None
            if name in stored:
                return SecretValue(stored[name])
    raise ConfigError(f"demo vault has no secret '{name}' (set {env_name(name)} or add it to {VAULT_FILE})")
