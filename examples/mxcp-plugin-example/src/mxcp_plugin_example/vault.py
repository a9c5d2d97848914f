"""Plugin `example_vault`: resolves `demo-vault://NAME` references in the user config.

A stand-in for a real secret store. A secret `NAME` is looked up in the environment variable
`DEMO_VAULT_<NAME>` (upper case, `-` and `.` become `_`), then in `demo-vault.json` at the project root.
Both can be changed in the plugin's own section of the user config:

```yaml
# ~/.mxcp/config.yml
demo_vault:
  file: secrets/vault.json      # relative to the project root
  env_prefix: ACME_VAULT_
```
"""
from __future__ import annotations

import json
import os
import re

import attrs

from mxcp_core import ConfigError, ConfigSection, SecretValue, hookimpl

SCHEME = "demo-vault://"


@attrs.define
class DemoVaultSettings:
    """The `demo_vault:` section of the user config."""

    file: str = "demo-vault.json"
    env_prefix: str = "DEMO_VAULT_"


@hookimpl
def config_sections():
    return [ConfigSection("demo_vault", DemoVaultSettings, scope="user", description="where demo-vault:// looks")]


def env_name(name: str, prefix: str = "DEMO_VAULT_") -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


@hookimpl
def resolve_secret(reference, project):
    if not reference.startswith(SCHEME):
        return None  # not ours: another provider may own the scheme
    name = reference[len(SCHEME):]
    if not name:
        raise ConfigError(f"{SCHEME} reference without a secret name")
    # The project being opened: its user-config sections are read before any reference is resolved.
    settings = project.plugin_config("demo_vault", scope="user") if project is not None else DemoVaultSettings()
    variable = env_name(name, settings.env_prefix)
    if variable in os.environ:
        return SecretValue(os.environ[variable])
    if project is not None:
        path = project.root / settings.file
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                # The file's content may be secret: name the file, never quote it.
                raise ConfigError(f"{settings.file} is not valid JSON") from None
            if name in stored:
                return SecretValue(stored[name])
    raise ConfigError(f"demo vault has no secret '{name}' (set {variable} or add it to {settings.file})")
