"""The sign-in hooks from a third party's side: a new identity provider, a whole sign-in, a store type."""
from __future__ import annotations

from importlib import metadata

import anyio
import httpx2
import pytest
from auth_fixtures import auth_server  # noqa: F401
from server_helpers import free_port
from test_sign_in import call, post_initialize, serving, write_project

from mxcp_core import ConfigError
from mxcp_core.plugin_manager import load_plugins

__all__ = ["auth_server"]

# An identity provider the builtins do not have, as a plugin package would add it (docs/sign-in.md shows it).
CORP_PROVIDER = '''
import attrs
from mxcp_core import IdentityProvider, ProviderConnection, hookimpl


@attrs.define
class CorpSettings:
    tenant_url: str
    client_id: str
    client_secret: str | None = None


def connect(settings):
    if not settings.tenant_url.startswith("http"):
        raise ValueError("tenant_url must be an http(s) URL")
    return ProviderConnection(client_id=settings.client_id, client_secret=settings.client_secret,
                              config_url=settings.tenant_url.rstrip("/") + "/.well-known/openid-configuration",
                              claim_mappings={"groups": {"eng": ["engineering"]}})


@hookimpl
def sign_in_providers(project):
    return [IdentityProvider("corp", CorpSettings, connect, modes=("verifier",), description="Corp SSO")]
'''

# A whole sign-in of its own: fixed development tokens, no OAuth at all.
STATIC_TOKENS = '''
from mxcp_core import HttpSignIn, hookimpl

USERS = {"dev-token-alice": "alice"}


class StaticTokens:
    def __init__(self, resource):
        self.resource = resource

    async def verify_token(self, token):
        from mcp.server.auth.provider import AccessToken

        name = USERS.get(token)
        if name is None:
            return None
        return AccessToken(token=token, client_id="dev", scopes=["mcp"], resource=self.resource, subject=name,
                           claims={"sub": name, "preferred_username": name})


@hookimpl
def http_sign_in(project, base_url, resource_url, providers, open_store):
    return HttpSignIn(verifier=StaticTokens(resource_url), authorization_servers=("https://login.example.com",),
                      required_scopes=("mcp",), description="sign-in: development tokens")


@hookimpl
def identify_caller(transport, request, project):
    from mxcp_core import UserContext

    user = request.scope.get("user") if request is not None else None
    token = getattr(user, "access_token", None)
    return UserContext(user_id=token.subject, username=token.subject) if token else None
'''


def corp_config(auth_server, tenant_url: str | None = None) -> str:
    return f"""\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        auth:
          mode: verifier
          provider: corp
          corp: {{tenant_url: {tenant_url or auth_server.issuer}, client_id: mxcp-server,
                  client_secret: mxcp-server-secret}}
"""


def test_a_third_party_identity_provider_signs_callers_in(auth_server, make_dist, tmp_path, monkeypatch):
    folder = make_dist("mxcp-corp-sso", {"corp_sso": CORP_PROVIDER}, {"corp_sso": "corp_sso"})
    monkeypatch.setenv("PYTHONPATH", str(folder))
    root = tmp_path / "p"
    config = write_project(root, corp_config(auth_server))
    with serving(root, config) as (url, _):
        token = auth_server.user_token("alice", resource=f"{url}/mcp")["access_token"]

        async def main():
            return (await call(url, token, "whoami_py")).structured_content

        found = anyio.run(main)
        assert found["username"] == "alice" and found["capabilities"] == ["engineering"]
        assert post_initialize(url, None).status_code == 401


def test_a_third_party_providers_settings_errors_name_the_key(auth_server, make_dist, tmp_path, run_mxcp):
    folder = make_dist("mxcp-corp-sso", {"corp_sso": CORP_PROVIDER}, {"corp_sso": "corp_sso"})
    root = tmp_path / "p"
    config = write_project(root, corp_config(auth_server, tenant_url="ftp://nowhere"))
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    pythonpath=[folder], env={"MXCP_CONFIG": str(config)})
    assert done.returncode != 0
    assert "projects.demo.profiles.default.auth.corp" in done.stderr and "tenant_url must be" in done.stderr
    config.write_text(corp_config(auth_server).replace("client_id: mxcp-server", "client: mxcp-server"))
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    pythonpath=[folder], env={"MXCP_CONFIG": str(config)})
    assert done.returncode != 0 and "auth.corp" in done.stderr


def test_a_plugin_can_bring_its_own_sign_in(make_dist, tmp_path, monkeypatch):
    folder = make_dist("mxcp-dev-tokens", {"dev_tokens": STATIC_TOKENS}, {"dev_tokens": "dev_tokens"})
    monkeypatch.setenv("PYTHONPATH", str(folder))
    root = tmp_path / "p"
    config = write_project(root, "mxcp: 1\n")
    with serving(root, config) as (url, _):
        refused = post_initialize(url, "dev-token-bob")
        assert refused.status_code == 401
        assert 'resource_metadata="' in refused.headers["www-authenticate"]
        assert 'scope="mcp"' in refused.headers["www-authenticate"]
        prm = httpx2.get(f"{url}/.well-known/oauth-protected-resource/mcp").json()
        assert prm["authorization_servers"] == ["https://login.example.com"]

        async def main():
            return (await call(url, "dev-token-alice", "whoami_py")).structured_content

        assert anyio.run(main)["username"] == "alice"


def test_an_unknown_store_type_stops_issuer_mode(auth_server, tmp_path, run_mxcp):
    root = tmp_path / "p"
    config = write_project(root, f"""\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        auth:
          provider: oidc
          oidc: {{config_url: {auth_server.config_url}, client_id: mxcp-server, client_secret: mxcp-server-secret}}
          persistence: {{type: redis, url: "redis://127.0.0.1:1"}}
""")
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    env={"MXCP_CONFIG": str(config)})
    assert done.returncode != 0
    assert "no loaded plugin opens a sign-in store of type 'redis'" in done.stderr


# -- the facade, in process -----------------------------------------------------------------------------------


@pytest.fixture
def host():
    builtins = [ep for ep in metadata.entry_points(group="mxcp") if ep.value.startswith("mxcp_plugins.")]
    return load_plugins(entry_points=builtins)


def test_store_types_go_to_the_plugin_that_opens_them(host):
    from mxcp_core.markers import hookimpl

    opened: list[dict] = []

    class MemoryStore:
        """A store type of a third party's."""

        @hookimpl
        def open_sign_in_store(self, persistence, project):
            if persistence.get("type") != "memory":
                return None
            opened.append(persistence)
            return {"kind": "memory store"}

    host.register(MemoryStore(), "memory_store")
    assert host.hooks.open_sign_in_store({"type": "memory", "size": 3}, project=None) == {"kind": "memory store"}
    assert opened == [{"type": "memory", "size": 3}]
    assert host.hooks.open_sign_in_store({"type": "etcd"}, project=None) is None


def test_two_providers_with_one_name_are_an_error_naming_both(host):
    from mxcp_core.markers import hookimpl
    from mxcp_core.sign_in import IdentityProvider

    class Impostor:
        @hookimpl
        def sign_in_providers(self, project):
            return [IdentityProvider("github", dict, lambda s: None)]

    assert {"github", "google", "keycloak", "oidc", "atlassian", "salesforce"} <= set(host.hooks.sign_in_providers(None))
    host.register(Impostor(), "impostor")
    with pytest.raises(ConfigError, match="two sign-in providers named 'github': plugin '(auth_github|impostor)' "
                                          "and plugin '(impostor|auth_github)'"):
        host.hooks.sign_in_providers(None)


def test_builtin_providers_connect_with_the_originals_keys():
    """Each builtin provider turns its section (the original's keys) into endpoints, without network."""
    from mxcp_plugins.auth import provider_atlassian, provider_github, provider_keycloak, provider_salesforce

    github = provider_github.connect(provider_github.GitHubSettings(client_id="id", client_secret="s"))
    assert github.authorization_endpoint == "https://github.com/login/oauth/authorize"
    assert github.userinfo_endpoint == "https://api.github.com/user" and github.callback_path == "/github/callback"
    assert github.profile({"id": 7, "login": "octo"})["preferred_username"] == "octo"
    assert github.profile({"id": 7, "login": "octo"})["sub"] == "7"
    keycloak = provider_keycloak.connect(provider_keycloak.KeycloakSettings(
        client_id="mxcp", server_url="https://sso.example.com/", realm="staff"))
    assert keycloak.config_url == "https://sso.example.com/realms/staff/.well-known/openid-configuration"
    sandbox = provider_salesforce.connect(provider_salesforce.OAuthAppSettings(
        client_id="c", token_url="https://test.salesforce.com/services/oauth2/token"))
    assert sandbox.userinfo_endpoint == "https://test.salesforce.com/services/oauth2/userinfo"
    atlassian = provider_atlassian.connect(provider_atlassian.OAuthAppSettings(client_id="a"))
    assert atlassian.authorize_params["audience"] == "api.atlassian.com"
    assert atlassian.profile({"account_id": "557", "nickname": "ann"})["preferred_username"] == "ann"
    with pytest.raises(ValueError, match="'realm' is required"):
        provider_keycloak.connect(provider_keycloak.KeycloakSettings(client_id="x", server_url="https://sso"))
