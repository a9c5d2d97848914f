"""The two sign-in modes assembled from their parts: what `http_sign_in` returns for a checked `auth:` block.

`http_sign_in` runs in a worker thread of the server's event loop: the provider's metadata is fetched on that
loop (`anyio.from_thread.run`), so the HTTP client made here serves the whole life of the server.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from mxcp_core import ConfigError, HttpSignIn

TIMEOUT = 10.0


def _http_client() -> Any:
    import httpx2

    return httpx2.AsyncClient(timeout=TIMEOUT, follow_redirects=False)


def _scopes(active: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    required = tuple(active.settings.authorization.required_scopes)
    return required, tuple(dict.fromkeys([*required, *active.settings.scopes]))


def _on_loop(func: Any, *args: Any, **kwargs: Any) -> Any:
    import anyio.from_thread

    from .tokens import SignInError

    try:
        return anyio.from_thread.run(partial(func, *args, **kwargs))
    except SignInError as exc:
        raise ConfigError(f"sign-in ({args[0].config_url or 'provider'}): {exc}") from None


def verifier_sign_in(active: Any, connection: Any, *, resource_url: str) -> HttpSignIn:
    from .tokens import build_verifier

    http = _http_client()
    verifier, metadata = _on_loop(build_verifier, connection, resource_url=resource_url, http=http)
    required, supported = _scopes(active)
    issuer = metadata.issuer or connection.config_url
    return HttpSignIn(
        verifier=verifier, authorization_servers=(issuer,), required_scopes=required, scopes_supported=supported,
        description=f"sign-in: tokens issued by {issuer} (provider {active.provider.name}, mode verifier)",
        close=http.aclose,
    )


def issuer_sign_in(active: Any, connection: Any, *, base_url: str, resource_url: str, open_store: Any) -> HttpSignIn:
    import attrs

    from .proxy import SignInProxy
    from .tokens import discover

    settings = active.settings
    http = _http_client()
    metadata = _on_loop(discover, connection, http)
    for endpoint in ("authorization_endpoint", "token_endpoint"):
        if not getattr(metadata, endpoint):
            raise ConfigError(f"sign-in: provider '{active.provider.name}' has no {endpoint} (set auth_url/token_url "
                              "or a config_url whose metadata names it)")
    store = open_store(settings.persistence or {"type": "sqlite"})
    required, supported = _scopes(active)
    proxy = SignInProxy(
        store=store, upstream=connection, endpoints=metadata, provider_name=active.provider.name,
        base_url=base_url, resource_url=resource_url, http=http,
        clients=[attrs.asdict(client) for client in settings.clients], scopes=supported,
        access_ttl=settings.access_token_ttl, refresh_ttl=settings.refresh_token_ttl,
        allow_registration=settings.dynamic_registration,
        client_metadata_documents=settings.client_metadata_documents,
        allow_private_metadata_hosts=settings.allow_private_metadata_hosts,
    )

    async def close() -> None:
        await http.aclose()
        store.close()

    return HttpSignIn(
        verifier=proxy.verifier, authorization_servers=(base_url,), required_scopes=required,
        scopes_supported=supported, routes=tuple(proxy.routes()),
        description=(f"sign-in: this server issues tokens at {base_url}; users log in with "
                     f"{active.provider.name} (mode issuer)"),
        close=close,
    )
