"""vault:// references against a real OpenBao server (`bao server -dev` on 127.0.0.1, see openbao_server.py).

Everything here is real: the server, its policies, AppRole, namespaces, TLS, and hvac talking to it. Only the
"server that never answers" is a plain socket, because that is what a hung server looks like on the wire.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor_helpers import python_tool, tool
from server_helpers import free_port, health, http_server, mxcp_command, run_http, serve_env, text, wait_for
from openbao_server import ROOT_TOKEN, OpenBao, seed


# One server for the module (a dev server starts in about a second); tests that stop the server or rotate its
# secrets use `fresh_openbao`.
@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    server = OpenBao(tmp_path_factory.mktemp("openbao"))
    server.start()
    try:
        seed(server)
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_openbao(tmp_path: Path) -> Iterator[OpenBao]:
    server = OpenBao(tmp_path / "openbao")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def vault_config(address: str, parameters: str, *, vault_extra: str = "", secret_type: str = "custom") -> str:
    """A user config with a `vault:` section and one secret `db` whose parameters are `parameters` (YAML flow)."""
    return (
        "mxcp: 1\n"
        f"vault:\n  enabled: true\n  address: {address}\n{vault_extra}"
        "projects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
        f"          - {{name: db, type: {secret_type}, parameters: {parameters}}}\n"
    )


@pytest.fixture
def open_with(token_project):
    """`open_with(user_config_text, token=...)` opens the project (VAULT_TOKEN: the root token by default)."""
    return token_project("VAULT_TOKEN", ROOT_TOKEN)


# -- reading ------------------------------------------------------------------------------------------------
def test_kv2_and_kv1_mounts_are_detected_and_read_with_a_token(openbao, open_with):
    project = open_with(vault_config(openbao.address, (
        "{user: 'vault://secret/db#user', password: 'vault://secret//db/#password', "
        "whole: 'vault://secret/db', api_key: 'vault://kv1/app#api_key', port: 5432}")))
    assert dict(project.context.secret("db")) == {
        "user": "alice", "password": "s3cret-v2-pass",  # empty segments are dropped: the same secret
        "whole": {"user": "alice", "password": "s3cret-v2-pass"},
        "api_key": "kv1-api-key",
        "port": 5432,
    }
    assert project.references_resolved == 4


def test_values_keep_their_json_types_and_numbers_are_masked(openbao, open_with):
    from mxcp_core import mask

    openbao.put_kv2("typed", {"pin": 84736251, "nothing": None, "nested": {"a": [1, "two"]}, "on": True})
    project = open_with(vault_config(openbao.address, (
        "{pin: 'vault://secret/typed#pin', nothing: 'vault://secret/typed#nothing', "
        "nested: 'vault://secret/typed#nested', flag: 'vault://secret/typed#on'}")))
    assert dict(project.context.secret("db")) == {"pin": 84736251, "nothing": None, "nested": {"a": [1, "two"]},
                                                  "flag": True}
    assert project.references_resolved == 4  # a key holding null is a value, not a reference nobody resolves
    assert mask("the warehouse refused 84736251") == "the warehouse refused [REDACTED]"


def test_the_path_is_the_one_vault_kv_get_takes(openbao, open_with):
    """`secret/data/x` is the secret `data/x` (as `bao kv get secret/data/x` reads it), never silently `x`."""
    openbao.put_kv2("data/nested", {"k": "under-data"})
    openbao.put_kv2("nested", {"k": "top-level"})
    project = open_with(vault_config(openbao.address, "{a: 'vault://secret/data/nested#k'}"))
    assert project.context.secret("db")["a"] == "under-data"
    message = open_with.error(vault_config(openbao.address, "{a: 'vault://secret/data/db#user'}"))
    assert "no secret at 'data/db'" in message and "leaves out 'data/'" in message
    assert "'secret/db'" in message


def test_each_secret_is_read_once_per_load(openbao, open_with):
    before = openbao.reads_of("secret/data/db")
    open_with(vault_config(openbao.address, (
        "{user: 'vault://secret/db#user', password: 'vault://secret/db#password', again: 'vault://secret/db'}")))
    # Three references, one read: #user and #password come from the same version of the secret.
    assert openbao.reads_of("secret/data/db") - before == 1
    open_with(vault_config(openbao.address, "{user: 'vault://secret/db#user'}"))
    assert openbao.reads_of("secret/data/db") - before == 2  # a new load reads afresh


def test_approle_login_with_ids_from_the_environment_and_a_file(openbao, open_with, monkeypatch, tmp_path):
    role_id, secret_id = openbao.approle("mxcp-app", "reader")
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id + "\n")
    monkeypatch.setenv("TEST_ROLE_ID", role_id)
    project = open_with(vault_config(openbao.address, "{password: 'vault://secret/db#password'}", vault_extra=(
        f"  approle:\n    role_id: ${{TEST_ROLE_ID}}\n    secret_id: file://{secret_file}\n")), token=None)
    assert project.context.secret("db")["password"] == "s3cret-v2-pass"


def test_a_refused_approle_login_is_one_clear_error(openbao, open_with):
    role_id, _ = openbao.approle("mxcp-app", "reader")
    message = open_with.error(vault_config(openbao.address, "{password: 'vault://secret/db#password'}",
                                              vault_extra=f"  approle: {{role_id: {role_id}, secret_id: wrong}}\n"),
                      token=None)
    assert "secret 'db'" in message and "vault://secret/db#password" in message
    assert "AppRole login at auth/approle" in message and "was refused" in message


def test_a_namespace_reads_its_own_mounts(openbao, open_with):
    project = open_with(vault_config(openbao.address, "{password: 'vault://secret/db#password'}",
                                     vault_extra="  namespace: team\n"))
    assert project.context.secret("db")["password"] == "team-namespace-pass"


def test_kv_versions_set_per_mount_are_used(openbao, open_with):
    project = open_with(vault_config(openbao.address, "{a: 'vault://secret/db#user', b: 'vault://kv1/app#api_key'}",
                                     vault_extra="  kv_mounts: {secret: 2, kv1/: 1}\n"))
    assert dict(project.context.secret("db")) == {"a": "alice", "b": "kv1-api-key"}
    # Told the wrong version, the plugin reads where that version keeps the secret, and finds nothing there.
    message = open_with.error(vault_config(openbao.address, "{b: 'vault://kv1/app#api_key'}",
                                              vault_extra="  kv_mounts: {kv1: 2}\n"))
    assert "no secret at 'app' in the KV v2 mount 'kv1/'" in message


# -- failures: one clear error naming the secret and the reference, never a value or the token ---------------
def test_a_path_the_policy_denies(openbao, open_with):
    token = openbao.token("reader")
    message = open_with.error(vault_config(openbao.address, "{key: 'vault://secret/private#key'}"), token=token)
    assert "secret 'db'" in message and "vault://secret/private#key" in message
    assert "permission denied" in message and "policies of the token in VAULT_TOKEN" in message
    assert token not in message and "never-readable" not in message


def test_an_invalid_token_is_named_as_such(openbao, open_with):
    message = open_with.error(vault_config(openbao.address, "{key: 'vault://secret/db#user'}"),
                      token="s.not-a-real-token")
    assert "invalid or expired" in message and "s.not-a-real-token" not in message


def test_a_missing_key_names_the_keys_there_but_no_value(openbao, open_with):
    message = open_with.error(vault_config(openbao.address, "{key: 'vault://secret/db#pasword'}"))
    assert "has no key 'pasword' (its keys: password, user)" in message
    assert "s3cret-v2-pass" not in message and "alice" not in message
    assert "projects.demo.profiles.default.secrets[0].parameters.key" in message


def test_a_missing_path(openbao, open_with):
    message = open_with.error(vault_config(openbao.address, "{key: 'vault://secret/nothing-here#x'}"))
    assert "no secret at 'nothing-here' in the KV v2 mount 'secret/'" in message


def test_a_path_outside_any_kv_mount(openbao, open_with):
    message = open_with.error(vault_config(openbao.address, "{key: 'vault://cubbyhole/x#y'}"))
    assert "of type 'cubbyhole'" in message and "not a KV secrets engine" in message


def test_a_stopped_server_is_unreachable(open_with):
    with socket.socket() as s:  # a port nothing listens on: what a stopped server leaves behind
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = open_with.error(vault_config(f"http://127.0.0.1:{port}", "{a: 'vault://secret/db#user'}"))
    assert f"Vault at http://127.0.0.1:{port} is unreachable" in message and "secret 'db'" in message


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: what a hung server looks like on the wire."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in accepted:
            conn.close()


def test_a_server_that_never_answers_times_out(open_with):
    with silent_server() as port:
        message = open_with.error(vault_config(f"http://127.0.0.1:{port}", "{a: 'vault://secret/db#user'}",
                                                  vault_extra="  timeout: 0.5\n"))
    assert "did not answer within 0.5s" in message and "vault.timeout" in message


def test_a_server_that_never_answers_costs_one_timeout_not_one_per_secret(open_with):
    import time

    with silent_server() as port:
        started = time.monotonic()
        message = open_with.error(vault_config(f"http://127.0.0.1:{port}", (
            "{a: 'vault://secret/one#x', b: 'vault://secret/two#x', c: 'vault://secret/three#x'}"),
            vault_extra="  timeout: 0.5\n"))
        elapsed = time.monotonic() - started
    assert "did not answer within 0.5s" in message
    assert elapsed < 1.4, elapsed  # three secrets, one wait


class Canned(http.server.BaseHTTPRequestHandler):
    """Answers every request with the class's `status` and `body`; `{token}` becomes the X-Vault-Token sent."""

    status = 200
    body = "<html>Welcome to the intranet</html>"
    content_type = "text/html"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        payload = self.body.replace("{token}", self.headers.get("X-Vault-Token", "")).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PUT = do_GET  # noqa: N815 - a login is a POST; the page answers it all the same

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def canned_server(**answer: object) -> Iterator[str]:
    handler = type("Answer", (Canned,), answer)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_address_that_is_not_a_vault_server(open_with):
    with canned_server() as address:
        message = open_with.error(vault_config(address, "{a: 'vault://secret/db#user'}"))
    assert "did not answer like a Vault server" in message and "vault.address" in message
    assert "secret 'db'" in message and "vault://secret/db#user" in message


def test_an_approle_login_at_an_address_that_is_not_a_vault_server(open_with):
    with canned_server() as address:
        message = open_with.error(vault_config(address, "{a: 'vault://secret/db#user'}",
                                                  vault_extra="  approle: {role_id: r, secret_id: s}\n"), token=None)
    assert "did not answer like a Vault server while logging in with AppRole" in message


def test_a_server_echoing_the_token_in_its_error_never_shows_it(open_with):
    with canned_server(status=500, content_type="application/json",
                       body='{"errors": ["internal error: token {token} broke"]}') as address:
        message = open_with.error(vault_config(address, "{a: 'vault://secret/db#user'}"),
                          token="sup3r-secret-token")
    assert "internal error: token [token] broke" in message and "sup3r-secret-token" not in message


def test_an_approle_login_is_revoked_when_the_load_ends(openbao, open_with, monkeypatch):
    role_id, secret_id = openbao.approle("mxcp-app", "reader")
    monkeypatch.setenv("TEST_ROLE_ID", role_id)
    monkeypatch.setenv("TEST_SECRET_ID", secret_id)

    def live_tokens() -> int:
        return len(openbao.api("LIST", "auth/token/accessors")["data"]["keys"])

    before = live_tokens()
    for _ in range(3):
        open_with(vault_config(openbao.address, "{password: 'vault://secret/db#password'}", vault_extra=(
            "  approle: {role_id: '${TEST_ROLE_ID}', secret_id: '${TEST_SECRET_ID}'}\n")), token=None)
    assert live_tokens() == before


def test_tls_with_the_servers_ca_file(open_with, tmp_path):
    server = OpenBao(tmp_path / "tls-bao", tls=True)
    server.start()
    try:
        server.put_kv2("db", {"password": "over-tls"})
        project = open_with(vault_config(server.address, "{p: 'vault://secret/db#password'}",
                                         vault_extra=f"  ca_cert: {server.ca_cert}\n"))
        assert project.context.secret("db")["p"] == "over-tls"
        message = open_with.error(vault_config(server.address, "{p: 'vault://secret/db#password'}"))
        assert "TLS verification failed" in message and "vault.ca_cert" in message
    finally:
        server.stop()


# -- configuration ------------------------------------------------------------------------------------------
def test_references_need_the_section_enabled(openbao, open_with):
    text = ("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
            "          - {name: db, type: custom, parameters: {a: 'vault://secret/db#user'}}\n")
    assert "vault.enabled is not true" in open_with.error(text)


def test_no_token_variable_is_named(openbao, open_with):
    message = open_with.error(vault_config(openbao.address, "{a: 'vault://secret/db#user'}",
                                              vault_extra="  token_env: MY_VAULT_TOKEN\n"))
    assert "environment variable MY_VAULT_TOKEN (vault.token_env) is not set" in message


@pytest.mark.parametrize("reference", ["vault://db", "vault://secret/db#", "vault://#key",
                                       "vault://secret/../sys/mounts#x", "vault://secret/./db#user"])
def test_malformed_references(openbao, open_with, reference):
    message = open_with.error(vault_config(openbao.address, f"{{a: '{reference}'}}"))
    assert "is not a Vault reference: expected vault://mount/path#key" in message


def test_bad_section_values_name_the_key(openbao, open_with):
    message = open_with.error(vault_config(openbao.address, "{a: 'vault://secret/db#user'}",
                                              vault_extra="  kv_mounts: {secret: 3}\n"))
    assert "vault.kv_mounts.secret: 3 not in literal" in message


def test_without_hvac_the_error_names_the_extra(openbao, open_with, monkeypatch):
    monkeypatch.setitem(sys.modules, "hvac", None)  # what a missing package looks like to `import hvac`
    message = open_with.error(vault_config(openbao.address, "{a: 'vault://secret/db#user'}"))
    assert "pip install 'mxcp-pluggy[vault]'" in message and "secret 'db'" in message


def test_vault_section_with_the_plugin_disabled_is_refused(openbao, open_with, monkeypatch):
    monkeypatch.setenv("MXCP_DISABLE_PLUGINS", "secrets_vault")
    message = open_with.error(vault_config(openbao.address, "{a: plain}"))
    assert "secrets_vault" in message and "disabled" in message


# -- mxcp validate ------------------------------------------------------------------------------------------
def test_validate_reports_every_reference_that_fails_with_json_output(openbao, open_with, user_config, run_mxcp):
    path = user_config(vault_config(openbao.address, (
        "{user: 'vault://secret/db#user', missing_key: 'vault://secret/db#nope', "
        "missing_path: 'vault://secret/gone#x', kv1: 'vault://kv1/app#api_key'}")))
    env = {"VAULT_TOKEN": ROOT_TOKEN}
    checked = run_mxcp("validate", "--json-output", cwd=open_with.root, env=env)
    assert checked.returncode == 1
    result = json.loads(checked.stdout)["result"]
    assert result["references"] == {"resolved": 2, "failed": 2} and result["valid"] is False
    problems = {p["message"].split(":")[0]: p for p in result["problems"]}
    key = "projects.demo.profiles.default.secrets[0].parameters"
    assert set(problems) == {f"{key}.missing_key", f"{key}.missing_path"}
    assert problems[f"{key}.missing_key"]["file"] == f"{path}:10"  # the secret's line
    assert "vault://secret/db#nope" in problems[f"{key}.missing_key"]["message"]
    assert "s3cret-v2-pass" not in checked.stdout and ROOT_TOKEN not in checked.stdout

    user_config(vault_config(openbao.address, "{user: 'vault://secret/db#user', kv1: 'vault://kv1/app#api_key'}"))
    fine = run_mxcp("validate", cwd=open_with.root, env=env)
    assert fine.returncode == 0 and "2 secret references resolved" in fine.stdout


# -- serving: a DuckDB secret and get_secret from Vault, rotated, reloaded, and the server gone ------------------
SERVED = {
    "python/secret_tools.py": """
        from mxcp.runtime import config, get_secret

        def app_password() -> str:
            return config.get_secret("app")["password"]

        def leak() -> str:
            raise ValueError("the warehouse refused " + get_secret("app")["password"])
    """,
    "tools/app_password.yml": python_tool("app_password", "secret_tools.py", returns="{type: string}"),
    "tools/leak.yml": python_tool("leak", "secret_tools.py", returns="{type: string}"),
    # DuckDB shows an http secret's proxy in clear (its token redacted): what the database was given.
    "tools/web_secret.yml": tool("web_secret", 'code: "SELECT secret_string FROM duckdb_secrets() WHERE name = \'web\'"',
                                 returns="{type: string}"),
}


def served_config(address: str) -> str:
    return (
        f"mxcp: 1\nvault: {{enabled: true, address: '{address}'}}\n"
        "projects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
        "          - {name: app, type: custom, parameters: {password: 'vault://secret/app#password'}}\n"
        "          - name: web\n            type: http\n"
        "            parameters: {BEARER_TOKEN: 'vault://secret/web#token', HTTP_PROXY: 'vault://secret/web#proxy'}\n"
    )


def test_serving_with_vault_secrets_picks_up_a_rotation_on_sighup_and_fails_clearly_without_vault(
        fresh_openbao, make_project, user_config, tmp_path):
    bao = fresh_openbao
    bao.put_kv2("app", {"password": "pass-one"})
    bao.put_kv2("web", {"token": "web-token-one", "proxy": "http://proxy-one:3128"})
    site = "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    audit: {enabled: true}\n"
    root = make_project(tmp_path / "served", {**SERVED, "mxcp-site.yml": site})
    user_config(served_config(bao.address))
    env = {"VAULT_TOKEN": ROOT_TOKEN}

    async def read_all(client):
        return {name: text(await client.call_tool(name, {})) for name in ("app_password", "web_secret")}

    async def leak(client):
        return await client.call_tool("leak", {})

    with http_server(root, env=env) as (base, process):
        url = f"{base}/mcp"
        first = run_http(url, read_all)
        assert first["app_password"] == "pass-one"
        assert "http_proxy=http://proxy-one:3128" in first["web_secret"]
        assert "web-token-one" not in first["web_secret"]  # DuckDB redacts the token itself

        bao.put_kv2("app", {"password": "pass-two"})
        bao.put_kv2("web", {"token": "web-token-two", "proxy": "http://proxy-two:3128"})
        assert run_http(url, read_all) == first  # resolved once per load: no read per call

        process.send_signal(signal.SIGHUP)
        wait_for(lambda: health(base)[1].get("reloads") == 1)
        second = run_http(url, read_all)
        assert second["app_password"] == "pass-two"
        assert "http_proxy=http://proxy-two:3128" in second["web_secret"]

        refused = run_http(url, leak)
        assert refused.is_error and "the warehouse refused" in text(refused)
        assert "pass-two" not in text(refused)  # a resolved secret never leaves in an error

        # Vault goes away: a reload keeps serving what it had, and says why on /health.
        bao.stop()
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: health(base)[1].get("reloads") == 2)
        status, body = health(base)
        assert status == 200 and "vault://secret/app#password" in body["config_problem"]
        assert "unreachable" in body["config_problem"]
        assert run_http(url, read_all) == second

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        log = process.stderr.read().decode()
    assert "kept the previous definitions and configuration" in log
    audit = (root / "audit" / "logs-default.jsonl").read_text()
    assert audit.count('"operation_status": "success"') >= 6  # the calls above were audited
    for value in ("pass-one", "pass-two", "web-token-one", "web-token-two", ROOT_TOKEN):
        assert value not in log and value not in audit

    # Starting without Vault: one clear message naming the secret and the reference, and no server.
    started = subprocess.run(
        [*mxcp_command(), "serve", "--transport", "streamable-http", "--host", "127.0.0.1", "--port",
         str(free_port())], cwd=root, env=serve_env(env), capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    said = started.stderr.strip()
    assert "secret 'app'" in said and "vault://secret/app#password" in said and "unreachable" in said
    assert "Traceback" not in said and len(said.splitlines()) == 1, said
