"""Builtin plugin: `keyring://service/username` references read the system keyring (extra `keyring`).

The part after the last `/` is the username; everything before it is the service, which may itself
contain slashes.
"""
from __future__ import annotations

from mxcp_core import ConfigError, SecretValue, hookimpl

PREFIX = "keyring://"
EXTRA = "mxcp-pluggy[keyring]"


def parse_reference(reference: str) -> tuple[str, str]:
    service, slash, username = reference[len(PREFIX):].rpartition("/")
    if not slash or not service or not username:
        raise ConfigError(f"'{reference}' is not a keyring reference: expected {PREFIX}service/username")
    return service, username


@hookimpl(trylast=True)
def resolve_secret(reference, project):
    if not reference.startswith(PREFIX):
        return None
    service, username = parse_reference(reference)
    try:
        import keyring
        import keyring.errors
    except ImportError:
        raise ConfigError(
            f"{PREFIX} references need the keyring package, which is not installed: pip install '{EXTRA}'"
        ) from None
    try:
        password = keyring.get_password(service, username)
    except keyring.errors.KeyringError as exc:
        raise ConfigError(
            f"reading {PREFIX}{service}/{username} from the keyring failed: {type(exc).__name__}: {exc}"
        ) from None
    if password is None:
        raise ConfigError(f"the keyring has no entry for service '{service}', username '{username}'")
    return SecretValue(password)
