"""Builtin plugin: `vault://path#key` references read HashiCorp Vault or OpenBao KV secrets (extra `vault`: hvac).

    vault:                              # the user config's own section (the original's keys first)
      enabled: true
      address: https://vault.example.com:8200   # default: $VAULT_ADDR
      token_env: VAULT_TOKEN            # token auth: the variable holding the token (the default)
      approle:                          # or AppRole: a login per load instead of a token
        role_id: ${VAULT_ROLE_ID}
        secret_id: file:///run/secrets/vault-secret-id
        mount: approle
      namespace: team-a                 # default: $VAULT_NAMESPACE
      ca_cert: /etc/ssl/vault-ca.pem    # the server's CA; default: $VAULT_CACERT, else the system's
      timeout: 10                       # seconds per request
      kv_mounts: {secret: 2, legacy: 1} # KV versions; a mount not listed is detected

`vault://secret/db#password` reads the secret `db` of the KV mount `secret/` and takes its key `password`; without
`#key` the whole secret (a mapping) is the value. The mount is the longest `kv_mounts` entry the path starts with,
else Vault says which mount holds the path and its KV version (`sys/internal/ui/mounts`, as the `vault kv` CLI
does). Paths are those `vault kv get` takes: on a version 2 mount, `secret/db` (not the API path `secret/data/db`).

Once per load (opening the project, and again on each reload) it logs in once and reads each secret once, so
`#user` and `#password` of one secret come from one version of it. Errors name the reference and what went wrong,
never a value or the token.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import attrs

from mxcp_core import ConfigError, ConfigSection, Seconds, SecretValue, hookimpl

PREFIX = "vault://"
SECTION = "vault"
EXTRA = "mxcp-pluggy[vault]"
PLUGIN = "secrets_vault"


@attrs.define
class AppRoleSettings:
    """AppRole login: `${VAR}` or `file://path` for the ids keeps them out of the file."""

    role_id: str = attrs.field(repr=False)
    secret_id: str = attrs.field(repr=False)
    mount: str = "approle"


@attrs.define
class VaultSettings:
    enabled: bool = False
    address: str | None = None
    token_env: str = "VAULT_TOKEN"
    approle: AppRoleSettings | None = None
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: Seconds = Seconds(10.0)
    kv_mounts: dict[str, Literal[1, 2]] = attrs.Factory(dict)


@hookimpl
def config_sections():
    return [ConfigSection(SECTION, VaultSettings, scope="user", description="vault:// secret references")]


@hookimpl(trylast=True)
def resolve_secret(reference, project, load):
    if not reference.startswith(PREFIX):
        return None
    path, key = parse_reference(reference)
    settings = project.plugin_config(SECTION, scope="user") if project is not None else VaultSettings()
    if not settings.enabled:
        raise ConfigError(f"{reference}: vault:// references need `vault: {{enabled: true, address: ...}}` in the "
                          "user config (vault.enabled is not true)")
    session = load.cache.get(PLUGIN)
    if session is None:
        session = load.cache[PLUGIN] = VaultSession(settings)
        load.on_close(session.close)
    data = session.read(path, reference)
    if key is None:
        return SecretValue(dict(data))
    if key not in data:
        keys = ", ".join(sorted(map(str, data))) or "none"
        raise ConfigError(f"{reference}: the Vault secret '{path}' has no key '{key}' (its keys: {keys})")
    return SecretValue(data[key])


def parse_reference(reference: str) -> tuple[str, str | None]:
    """`vault://secret/db#password` -> ("secret/db", "password"); no `#` -> the whole secret (key None).

    Empty segments are dropped (`secret//db` is `secret/db`, one secret read once); `.` and `..` are refused:
    a reference names a secret, never a way around one.
    """
    path, hash_sign, key = reference[len(PREFIX):].partition("#")
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) < 2 or (hash_sign and not key) or any(s in (".", "..") for s in segments):
        raise ConfigError(f"'{reference}' is not a Vault reference: expected {PREFIX}mount/path#key "
                          f"(e.g. {PREFIX}secret/db#password)")
    return "/".join(segments), key if hash_sign else None


@attrs.define
class Located:
    """Where a path lives: its KV mount (with a trailing slash), the KV version, and the path inside the mount."""

    mount: str
    version: int
    inner: str


class VaultSession:
    """One load's connection: a client logged in once, the mounts found and the secrets read (or why not).

    A failure to reach the server at all (refused, timed out, TLS, sealed) is remembered for the whole load, so
    a server that does not answer costs one timeout, not one per secret.
    """

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self.address = (settings.address or os.environ.get("VAULT_ADDR") or "").rstrip("/")
        self.namespace = settings.namespace or os.environ.get("VAULT_NAMESPACE") or None
        # How messages name the server: its address, and the namespace when there is one.
        self.where = self.address + (f" (namespace '{self.namespace}')" if self.namespace else "")
        self._client: Any = None
        self._token = ""  # never shown: server texts are cleaned of it (a proxy or a bug may echo it)
        self._unreachable: ConfigError | None = None
        self._token_valid: bool | None = None  # found out on the first 403
        self._found_mounts: dict[str, int] = {}  # KV mounts Vault named, with their version
        self._read: dict[str, dict[str, Any] | ConfigError] = {}

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self.settings.approle is not None:
            # The login was for this load alone: revoke it rather than leave a live token behind.
            try:
                client.auth.token.revoke_self()
            except Exception:  # noqa: BLE001 - best effort: it expires with its TTL anyway
                pass
        client.adapter.close()

    # -- reading -------------------------------------------------------------------------------
    def read(self, path: str, reference: str) -> dict[str, Any]:
        """The secret at `path` (its data mapping), read once per load; a failure is remembered as well."""
        if path not in self._read:
            try:
                self._read[path] = self._fetch(path)
            except ConfigError as exc:
                self._read[path] = exc
        found = self._read[path]
        if isinstance(found, ConfigError):
            raise ConfigError(f"{reference}: {found.message}") from None
        return found

    def _fetch(self, path: str) -> dict[str, Any]:
        client = self._connected()
        import hvac.exceptions

        located = self._locate(client, path)
        try:
            if located.version == 2:
                response = client.secrets.kv.v2.read_secret_version(
                    path=located.inner, mount_point=located.mount, raise_on_deleted_version=True)
                body = _json(response, "data")
                data = _json(body, "data") if body is not None else None
            else:
                response = client.secrets.kv.v1.read_secret(path=located.inner, mount_point=located.mount)
                data = _json(response, "data")
        except hvac.exceptions.InvalidPath:
            hint = ""
            if located.version == 2:
                hint = " (or its latest version is deleted or destroyed)"
                if located.inner.startswith("data/"):
                    hint += (f"; on a KV v2 mount the path leaves out 'data/', as `vault kv get` takes it: "
                             f"'{located.mount}{located.inner[len('data/'):]}'")
            raise ConfigError(f"no secret at '{located.inner}' in the KV v{located.version} mount "
                              f"'{located.mount}' of {self.where}{hint}") from None
        except hvac.exceptions.Forbidden:
            raise ConfigError(self._denied(client, f"reading '{path}'")) from None
        except Exception as exc:  # noqa: BLE001 - requests' and hvac's errors alike become one clear message
            raise ConfigError(self._failure(exc, f"reading '{path}'")) from None
        if not isinstance(data, dict):
            raise ConfigError(f"the answer of {self.where} for '{path}' holds no key/value data (is "
                              "vault.address a Vault server?)")
        return data

    def _locate(self, client: Any, path: str) -> Located:
        configured = {mount.strip("/") + "/": version for mount, version in self.settings.kv_mounts.items()}
        for known in (configured, self._found_mounts):
            for mount in sorted(known, key=len, reverse=True):
                if path.startswith(mount):
                    return _located(mount, known[mount], path)
        import hvac.exceptions

        try:
            response = client.adapter.get(f"/v1/sys/internal/ui/mounts/{path}")
        except hvac.exceptions.Forbidden:
            # Vault answers 403 for a path under no mount as well (it never says what is not mounted).
            raise ConfigError(self._denied(client, f"finding the mount of '{path}'", maybe_absent=True)) from None
        except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest):
            raise ConfigError(f"no secrets engine is mounted at '{path}' on {self.where}") from None
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(self._failure(exc, f"finding the mount of '{path}'")) from None
        info = _json(response, "data")
        if not isinstance(info, dict):
            raise ConfigError(f"{self.where} did not answer like a Vault server when asked for the mount of "
                              f"'{path}' (is vault.address right?)")
        mount, kind = str(info.get("path") or ""), info.get("type")
        if kind not in ("kv", "generic") or not mount:
            raise ConfigError(f"'{path}' is in the mount '{mount or '?'}' of type '{kind}' on {self.where}, "
                              "not a KV secrets engine")
        version = 2 if str((info.get("options") or {}).get("version") or "1") == "2" else 1
        self._found_mounts[mount] = version
        return _located(mount, version, path)

    # -- connecting ----------------------------------------------------------------------------
    def _connected(self) -> Any:
        if self._unreachable is not None:
            raise self._unreachable
        if self._client is None:
            try:
                self._client = self._connect()
            except ConfigError as exc:
                self._unreachable = exc  # the login failed: every reference of this load would fail alike
                raise
        return self._client

    def _connect(self) -> Any:
        try:
            import hvac
        except ImportError:
            raise ConfigError(f"vault:// references need the hvac package, which is not installed: "
                              f"pip install '{EXTRA}'") from None
        settings = self.settings
        if not self.address:
            raise ConfigError("no Vault address: set vault.address in the user config (or VAULT_ADDR)")
        if not self.address.startswith(("http://", "https://")):
            raise ConfigError(f"vault.address must be an http:// or https:// URL, got '{self.address}'")
        verify: bool | str = True
        ca_cert = settings.ca_cert or os.environ.get("VAULT_CACERT")
        if ca_cert:
            ca_path = Path(ca_cert).expanduser()
            if not ca_path.is_file():
                raise ConfigError(f"vault.ca_cert: no file at {ca_path}")
            verify = str(ca_path)
        if settings.approle is None:
            if not settings.token_env:
                raise ConfigError("vault.token_env is empty: name the environment variable holding the token")
            self._token = os.environ.get(settings.token_env, "")
            if not self._token:
                raise ConfigError(f"no Vault token: the environment variable {settings.token_env} (vault.token_env) "
                                  "is not set (or set vault.approle)")
        # The token is passed explicitly (even empty): hvac would otherwise fall back to ~/.vault-token unasked.
        client = hvac.Client(url=self.address, token=self._token, verify=verify, timeout=settings.timeout,
                             namespace=self.namespace)
        if settings.approle is not None:
            self._login_approle(client, settings.approle)
            self._token = client.token or ""
        return client

    def _login_approle(self, client: Any, approle: AppRoleSettings) -> None:
        import hvac.exceptions

        role_id = _value_or_file(approle.role_id, "vault.approle.role_id")
        secret_id = _value_or_file(approle.secret_id, "vault.approle.secret_id")
        self._token = secret_id  # cleaned from server texts during the login as the token is afterwards
        where = f"auth/{approle.mount} of {self.where}"
        try:
            client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=approle.mount)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            raise ConfigError(f"AppRole login at {where} was refused: {self._reason(exc)} (check "
                              "vault.approle.mount, and the role and secret ids)") from None
        except hvac.exceptions.InvalidPath:
            raise ConfigError(f"no AppRole auth method at {where} (vault.approle.mount)") from None
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(self._failure(exc, f"logging in with AppRole at auth/{approle.mount}")) from None

    # -- messages ------------------------------------------------------------------------------
    def _denied(self, client: Any, doing: str, *, maybe_absent: bool = False) -> str:
        """Vault answers 403 both to a bad token and to a policy that forbids the path: tell which."""
        credential = ("the AppRole login's token" if self.settings.approle is not None
                      else f"the token in {self.settings.token_env}")
        if self._token_valid is None:
            try:
                client.auth.token.lookup_self()
                self._token_valid = True
            except Exception:  # noqa: BLE001 - the token itself is refused (invalid, expired, revoked)
                self._token_valid = False
        if not self._token_valid:
            return f"permission denied {doing} on {self.where}: {credential} is invalid or expired"
        if maybe_absent:
            return (f"permission denied {doing} on {self.where}: no secrets engine is mounted there, or the "
                    f"policies of {credential} do not allow it (if the token may not look mounts up, name the "
                    "mount's KV version under vault.kv_mounts, e.g. kv_mounts: {secret: 2})")
        return f"permission denied {doing} on {self.where}: the policies of {credential} do not allow it"

    def _failure(self, exc: Exception, doing: str) -> str:
        """The message for `exc`; failing to reach the server at all is remembered for the rest of the load."""
        import hvac.exceptions
        import requests

        if isinstance(exc, hvac.exceptions.VaultError) and not isinstance(exc, hvac.exceptions.VaultDown):
            return f"{self.where} refused {doing}: {self._reason(exc)}"
        # The server as a whole fails: the message is about it, not about this one request.
        if isinstance(exc, requests.exceptions.SSLError):
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                message = f"TLS verification failed for Vault at {self.address} (is vault.ca_cert the server's CA?)"
            else:
                message = f"TLS failed for Vault at {self.address} (does the server speak https?)"
        elif isinstance(exc, requests.exceptions.Timeout):
            message = f"Vault at {self.address} did not answer within {self.settings.timeout:g}s (vault.timeout)"
        elif isinstance(exc, requests.exceptions.ConnectionError):
            message = f"Vault at {self.address} is unreachable (connection refused or no route)"
        elif isinstance(exc, hvac.exceptions.VaultDown):
            message = f"Vault at {self.address} is sealed or down"
        else:
            # Neither an HTTP failure nor a Vault error: an answer hvac could not read (an HTML page, say).
            return (f"{self.where} did not answer like a Vault server while {doing} (is vault.address right? "
                    f"{type(exc).__name__})")
        self._unreachable = ConfigError(message)
        return message

    def _reason(self, exc: Any) -> str:
        """What the server said (its `errors`), cleaned of the credential in case it echoes it."""
        reason = ", ".join(str(e) for e in (getattr(exc, "errors", None) or [])) or type(exc).__name__
        return reason.replace(self._token, "[token]") if self._token else reason


def _json(response: Any, key: str) -> Any:
    """`response[key]` of a JSON object answer; None for anything else (an HTML page from a wrong address)."""
    return response.get(key) if isinstance(response, dict) else None


def _located(mount: str, version: int, path: str) -> Located:
    inner = path[len(mount):].lstrip("/") if path.startswith(mount) else ""
    if not inner:
        raise ConfigError(f"'{path}' names the mount '{mount}' itself, not a secret in it")
    return Located(mount=mount, version=version, inner=inner)


def _value_or_file(value: str, key: str) -> str:
    """A value of the vault section, or the content of `file://path` (the user's own config: any path)."""
    if not value.startswith("file://"):
        return value
    from mxcp_core import read_text_file

    path = Path(value[len("file://"):]).expanduser()
    try:
        return read_text_file(path).strip()
    except ConfigError as exc:
        raise ConfigError(f"{key}: {path}: {exc.message}") from None
