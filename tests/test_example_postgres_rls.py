"""examples/postgres-rls: one set of endpoints on DuckDB (default) and on PostgreSQL with row-level security (warehouse).

Each test copies the example, runs its setup script (setup/duckdb.sql through `mxcp query --file`, setup/postgres.sql
as the superuser on a fresh database of the session's real PostgreSQL), writes the user config from the example's
config.example.yml (the login role `mxcp_reader`, which owns nothing and is no superuser, so RLS applies), then
runs the real CLI. Over MCP, callers sign in with tokens of the real authorization server (tests/authserver), and
each sees only their own rows.
"""
from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp
import pytest
import yaml
from auth_fixtures import AuthServer, auth_server
from server_helpers import (
    free_port,
    mxcp_command,
    serve_env,
    stop_process,
    wait_for_port,
)

from mxcp_core.testing import build_project

__all__ = ["auth_server"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "postgres-rls"
YAML_TESTS = 11  # every test of the example's tools: none may silently disappear
ALICE = [1, 2, 4]
BOB = [3, 5]


def copy_example(tmp_path: Path) -> Path:
    return build_project(tmp_path / "postgres-rls", EXAMPLE)


def user_config(root: Path, postgres: Any, database: str, extra: dict[str, Any] | None = None) -> Path:
    """The example's config.example.yml pointed at the test server and database, plus `extra` per profile."""
    config = yaml.safe_load((EXAMPLE / "config.example.yml").read_text(encoding="utf-8"))
    profiles = config["projects"]["postgres-rls"]["profiles"]
    parameters = profiles["warehouse"]["secrets"][0]["parameters"]
    parameters.update(host=postgres.host, port=postgres.port, database=database)
    assert parameters["user"] == "mxcp_reader" and parameters["password"] == "${PG_PASSWORD}"
    for profile, settings in (extra or {}).items():
        profiles.setdefault(profile, {}).update(settings)
    path = root.parent / "config.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def reader_password(postgres: Any) -> str:
    """A fresh password for the example's login role (roles are server-wide; setup/postgres.sql reuses one)."""
    return secrets.token_urlsafe(16)


def set_up_postgres(postgres: Any, database: str, password: str) -> None:
    postgres.sql((EXAMPLE / "setup" / "postgres.sql").read_text(encoding="utf-8"), database)
    postgres.sql(f"ALTER ROLE mxcp_reader PASSWORD '{password}'", database)


def set_up_duckdb(root: Path, run_mxcp: Any) -> None:
    done = run_mxcp("query", "--file", "setup/duckdb.sql", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr


def passed_summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(done.stdout)
    failing = [t for t in payload["result"]["tests"] if t["status"] != "passed"]
    assert failing == []
    return payload["result"]["summary"]


def test_yaml_tests_pass_on_duckdb(tmp_path: Path, run_mxcp: Any):
    root = copy_example(tmp_path)
    set_up_duckdb(root, run_mxcp)
    summary = passed_summary(run_mxcp("test", "--json-output", cwd=root))
    assert summary == {"total": YAML_TESTS, "passed": YAML_TESTS, "failed": 0, "error": 0}


def require_engine() -> None:
    from mxcp_plugins import engine_postgres

    if not hasattr(engine_postgres, "open_sql_engine"):
        pytest.skip("mxcp_plugins/engine_postgres.py has no open_sql_engine yet (the PostgreSQL engine)")


def test_yaml_tests_pass_on_postgres_with_row_level_security(tmp_path: Path, run_mxcp: Any, postgres: Any,
                                                           pg_database: str, reader_password: str):
    require_engine()
    set_up_postgres(postgres, pg_database, reader_password)
    # The filter is PostgreSQL's: the superuser (which bypasses RLS) sees every row, the login role is no superuser.
    assert postgres.sql("SELECT count(*) FROM orders", pg_database) == [(6,)]
    assert postgres.sql("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'mxcp_reader'",
                        pg_database) == [(False, False)]
    root = copy_example(tmp_path)
    env = {"MXCP_CONFIG": str(user_config(root, postgres, pg_database)), "PG_PASSWORD": reader_password}
    # validate prepares each endpoint's SQL on the server, as the login role.
    validated = run_mxcp("validate", "--profile", "warehouse", cwd=root, env=env)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    done = run_mxcp("test", "--profile", "warehouse", "--json-output", cwd=root, env=env)
    summary = passed_summary(done)
    assert summary == {"total": YAML_TESTS, "passed": YAML_TESTS, "failed": 0, "error": 0}
    assert reader_password not in done.stdout + done.stderr


def test_without_the_policy_every_caller_would_see_every_row(tmp_path: Path, run_mxcp: Any, postgres: Any,
                                                            pg_database: str, reader_password: str):
    """The YAML tests pass because of the policy: with RLS off, bob's test sees alice's rows and fails."""
    require_engine()
    set_up_postgres(postgres, pg_database, reader_password)
    postgres.sql("ALTER TABLE orders DISABLE ROW LEVEL SECURITY", pg_database)
    root = copy_example(tmp_path)
    env = {"MXCP_CONFIG": str(user_config(root, postgres, pg_database)), "PG_PASSWORD": reader_password}
    done = run_mxcp("test", "--profile", "warehouse", "--json-output", cwd=root, env=env)
    assert done.returncode != 0
    failed = {t["name"] for t in json.loads(done.stdout)["result"]["tests"] if t["status"] != "passed"}
    assert {"bob_sees_only_his_two", "anonymous_sees_nothing"} <= failed


# -- over MCP, each caller signed in with a token of the real authorization server ---------------------------


def sign_in(auth: AuthServer) -> dict[str, Any]:
    """Verifier mode: the served profile accepts the authorization server's access tokens (JWT + JWKS)."""
    return {"auth": {"mode": "verifier", "provider": "oidc",
                     "oidc": {"config_url": auth.config_url, "client_id": "mxcp-server",
                              "client_secret": "mxcp-server-secret"},
                     "authorization": {"required_scopes": ["mcp:read"]}}}


@contextlib.contextmanager
def serving(root: Path, profile: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    log_path = root.parent / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*mxcp_command(), "serve", "--transport", "http", "--host", "127.0.0.1", "--port", str(port),
             "--profile", profile], cwd=root, env=serve_env(env), stdout=subprocess.DEVNULL, stderr=log)
    try:
        try:
            wait_for_port(port, process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


async def call(url: str, token: str, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http, \
            mcp.Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        result = await client.call_tool(tool, arguments or {})
    assert not result.is_error, result.content[0].text
    return result.structured_content["result"]


@pytest.mark.parametrize("profile", ["default", "warehouse"])
def test_each_signed_in_caller_sees_only_their_rows_over_mcp(profile: str, tmp_path: Path, run_mxcp: Any,
                                                            auth_server: AuthServer, request: pytest.FixtureRequest):
    root = copy_example(tmp_path)
    env: dict[str, str] = {}
    if profile == "warehouse":
        require_engine()
        postgres = request.getfixturevalue("postgres")
        database = request.getfixturevalue("pg_database")
        password = request.getfixturevalue("reader_password")
        set_up_postgres(postgres, database, password)
        config = user_config(root, postgres, database, {"warehouse": sign_in(auth_server)})
        env["PG_PASSWORD"] = password
    else:
        set_up_duckdb(root, run_mxcp)
        config = root.parent / "config.yml"
        config.write_text(json.dumps({"mxcp": 1, "projects": {"postgres-rls": {"profiles": {
            "default": sign_in(auth_server)}}}}), encoding="utf-8")
    env["MXCP_CONFIG"] = str(config)
    with serving(root, profile, env) as url:
        alice = auth_server.user_token("alice", resource=f"{url}/mcp")["access_token"]
        bob = auth_server.user_token("bob", resource=f"{url}/mcp")["access_token"]

        async def main() -> dict[str, Any]:
            # Interleaved, so a caller's setting left on a pooled connection would show in the next one's rows.
            return {
                "alice": await call(url, alice, "my_orders"),
                "bob": await call(url, bob, "my_orders"),
                "alice_again": await call(url, alice, "my_orders"),
                "bob_shipped": await call(url, bob, "orders_by_status", {"status": "shipped"}),
                "alice_shipped_200": await call(url, alice, "orders_by_status",
                                                {"status": "shipped", "min_amount": 200}),
                "bob_totals": await call(url, bob, "order_totals"),
            }

        seen = anyio.run(main)
    assert [row["id"] for row in seen["alice"]] == ALICE
    assert [row["id"] for row in seen["alice_again"]] == ALICE
    assert [row["id"] for row in seen["bob"]] == BOB
    assert seen["bob_shipped"] == [{"id": 3, "customer": "Umbrella", "amount": 42.0}]
    assert seen["alice_shipped_200"] == [{"id": 4, "customer": "Initech", "amount": 310.0}]
    assert seen["bob_totals"] == [{"status": "cancelled", "orders": 1, "total": 15.25},
                                  {"status": "shipped", "orders": 1, "total": 42.0}]
    if profile == "warehouse":
        assert env["PG_PASSWORD"] not in (root.parent / "server.log").read_text(errors="replace")
