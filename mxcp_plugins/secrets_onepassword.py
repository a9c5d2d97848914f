"""Builtin plugin: `op://vault/item/[section/]field` references read 1Password (extra `onepassword`: the official SDK).

    onepassword:                         # the user config's own section (the original's keys first)
      enabled: true
      token_env: OP_SERVICE_ACCOUNT_TOKEN   # the variable holding the service account token (the default)
      timeout: 30                        # seconds for signing in and for each reference

The reference is 1Password's own secret reference syntax (`?attribute=otp` and the like included), checked by the
SDK before anything is sent. Once per load (opening the project, and again on each reload) the SDK signs in once
and reads each reference once. Errors name the reference and what went wrong, never a value or the token.
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from mxcp_core import ConfigError, ConfigSection, Seconds, SecretValue, hookimpl

if TYPE_CHECKING:
    import asyncio
    import threading

PREFIX = "op://"
SECTION = "onepassword"
EXTRA = "mxcp-pluggy[onepassword]"
PLUGIN = "secrets_onepassword"
INTEGRATION = "mxcp"


@attrs.define
class OnePasswordSettings:
    enabled: bool = False
    token_env: str = "OP_SERVICE_ACCOUNT_TOKEN"
    timeout: Seconds = Seconds(30.0)


@hookimpl
def config_sections():
    return [ConfigSection(SECTION, OnePasswordSettings, scope="user", description="op:// secret references")]


@hookimpl(trylast=True)
def resolve_secret(reference, project, load):
    if not reference.startswith(PREFIX):
        return None
    settings = project.plugin_config(SECTION, scope="user") if project is not None else OnePasswordSettings()
    if not settings.enabled:
        raise ConfigError(f"{reference}: op:// references need `onepassword: {{enabled: true}}` in the user config "
                          "(onepassword.enabled is not true)")
    sdk = _sdk()
    try:
        sdk.Secrets.validate_secret_reference(reference)
    except Exception as exc:  # noqa: BLE001 - the SDK raises plain Exception with its parser's message
        raise ConfigError(f"'{reference}' is not a 1Password secret reference: {exc}") from None
    session = load.cache.get(PLUGIN)
    if session is None:
        session = load.cache[PLUGIN] = OnePasswordSession(settings)
        load.on_close(session.close)
    return SecretValue(session.resolve(reference))


def _sdk() -> Any:
    try:
        import onepassword
    except ImportError:
        raise ConfigError(f"op:// references need the 1Password SDK (onepassword-sdk), which is not installed: "
                          f"pip install '{EXTRA}'") from None
    return onepassword


async def authenticate(token: str) -> Any:
    """A signed-in SDK client (the one seam the tests replace: no 1Password service runs offline)."""
    from importlib import metadata

    try:
        version = metadata.version("mxcp-pluggy")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return await _sdk().Client.authenticate(auth=token, integration_name=INTEGRATION, integration_version=version)


class OnePasswordSession:
    """One load's client: signed in once, each reference read once (a failure is remembered as well).

    The SDK is async; it runs on a loop of this session's own, in a thread of its own, so resolving works the same
    whether or not the caller is itself inside an event loop.
    """

    def __init__(self, settings: OnePasswordSettings) -> None:
        self.settings = settings
        self._token = ""
        self._client: Any = None
        self._connect_error: ConfigError | None = None
        self._resolved: dict[str, str | ConfigError] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def resolve(self, reference: str) -> str:
        if reference not in self._resolved:
            try:
                self._resolved[reference] = self._fetch(reference)
            except ConfigError as exc:
                self._resolved[reference] = exc
        found = self._resolved[reference]
        if isinstance(found, ConfigError):
            raise ConfigError(f"{reference}: {found.message}") from None
        return found

    def close(self) -> None:
        import asyncio
        import concurrent.futures

        loop, self._loop = self._loop, None
        if loop is not None and self._thread is not None:
            # A read given up after the timeout is still a task: cancel it and let it end before the loop does.
            try:
                asyncio.run_coroutine_threadsafe(_cancel_pending(), loop).result(timeout=5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                loop.close()
        self._client = None

    def _fetch(self, reference: str) -> str:
        client = self._connected()
        value = self._run(lambda: client.secrets.resolve(reference), "reading it")
        if not isinstance(value, str):
            raise ConfigError(f"1Password returned {type(value).__name__}, not text")
        return value

    def _connected(self) -> Any:
        if self._connect_error is not None:
            raise self._connect_error
        if self._client is None:
            token = os.environ.get(self.settings.token_env, "")
            if not token:
                self._connect_error = ConfigError(
                    f"no 1Password service account token: the environment variable {self.settings.token_env} "
                    "(onepassword.token_env) is not set")
                raise self._connect_error
            self._token = token
            try:
                self._client = self._run(lambda: authenticate(token), "signing in")
            except ConfigError as exc:
                self._connect_error = exc
                raise
        return self._client

    def _run(self, make: Callable[[], Awaitable[Any]], doing: str) -> Any:
        # Imported here: every command loads this plugin, few resolve an op:// reference.
        import asyncio
        import concurrent.futures

        future = asyncio.run_coroutine_threadsafe(_awaited(make), self._own_loop())
        try:
            return future.result(timeout=self.settings.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ConfigError(f"1Password did not answer within {self.settings.timeout:g}s {doing} "
                              "(onepassword.timeout)") from None
        except Exception as exc:  # noqa: BLE001 - the SDK raises plain Exception with 1Password's message
            raise ConfigError(f"1Password refused {doing}: {self._safe(exc)}") from None

    def _safe(self, exc: Exception) -> str:
        """The SDK's message (it names what is missing: vault, item, field), never the token."""
        text = str(exc) or type(exc).__name__
        return text.replace(self._token, "[token]") if self._token else text

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio
        import threading

        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="mxcp-onepassword", daemon=True)
            self._thread.start()
            self._loop = loop
        return self._loop


async def _awaited(make: Callable[[], Awaitable[Any]]) -> Any:
    return await make()


async def _cancel_pending() -> None:
    import asyncio

    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
