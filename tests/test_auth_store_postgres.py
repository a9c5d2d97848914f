"""The sign-in proxy's store in PostgreSQL (`auth.persistence: {type: postgres}`), against a real PostgreSQL 15.

The store contract as the SQLite store keeps it (expiry, grants, purge, `take` once under threads and across
processes), what a shared store adds (the table created by replicas starting together, one encryption key for
all, a reconnect after the server drops the connections), and two `mxcp serve` replicas in issuer mode sharing
the store: a sign-in through one is valid on the other, and a refresh token used on one is spent on both.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx2
import pytest
from auth_fixtures import auth_server  # noqa: F401
from server_helpers import free_port, mxcp_command, serve_env, stop_process, wait_for_port
from test_auth_proxy import refresh, register, sign_in
from test_sign_in import call, issuer_config, server_log, server_log_path, write_project

from mxcp_core import ConfigError, MxcpError, ProviderConnection, open_project
from mxcp_plugins.auth.proxy import SignInProxy
from mxcp_plugins.auth.store_postgres import PostgresSignInStore, open_sign_in_store

__all__ = ["auth_server"]

REPO = Path(__file__).resolve().parent.parent


def keywords(postgres: Any, db: str) -> dict[str, Any]:
    return {"host": postgres.host, "port": str(postgres.port), "dbname": db, "user": postgres.user,
            "password": postgres.password, "connect_timeout": 5}


@pytest.fixture
def store(postgres, pg_database) -> Iterator[PostgresSignInStore]:
    opened = PostgresSignInStore(keywords(postgres, pg_database))
    try:
        yield opened
    finally:
        opened.close()


def racing(count: int, action: Any) -> list[Any]:
    """`action(i)` in `count` threads released together; their answers in thread order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = action(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


# -- the contract ---------------------------------------------------------------------------------------------


def test_records_expiry_grants_and_purge(store, postgres, pg_database):
    now = time.time()
    store.put("access", "old", {"a": 1}, expires_at=now - 1, grant="g1")
    store.put("access", "new", {"a": 2, "nested": {"list": [1, "two"]}}, expires_at=now + 60, grant="g1")
    store.put("refresh", "r", {"a": 3}, grant="g1")
    store.put("refresh", "other", {"a": 4}, grant="g2")
    assert store.get("access", "old") is None and store.take("access", "old") is None  # expired: never returned
    assert store.get("access", "new") == {"a": 2, "nested": {"list": [1, "two"]}}
    assert store.get("nothing", "new") is None
    store.put("access", "old2", {"a": 1}, expires_at=now - 1)
    assert store.purge() == 1
    assert store.delete_grant("g1") == 2
    assert store.get("access", "new") is None and store.get("refresh", "r") is None
    assert store.get("refresh", "other") == {"a": 4}
    assert store.take("refresh", "other") == {"a": 4} and store.take("refresh", "other") is None
    store.put("key", "k", {"a": 5})
    store.put("key", "k", {"a": 6}, grant="g3")  # put replaces, grant included
    assert store.get("key", "k") == {"a": 6}
    assert store.delete_grant("g3") == 1
    store.put("key", "gone", {"a": 7})
    store.delete("key", "gone")
    assert store.get("key", "gone") is None
    # The rows are what another replica (or an operator with psql) reads: jsonb records, epoch expiries.
    store.put("access", "x", {"user": "alice"}, expires_at=now + 5, grant="g4")
    rows = postgres.sql("""SELECT kind, key, "grant", record->>'user', expires_at FROM mxcp_sign_in""", pg_database)
    assert rows == [("access", "x", "g4", "alice", pytest.approx(now + 5))]


def test_take_hands_a_record_out_once_to_racing_threads(postgres, pg_database):
    stores = [PostgresSignInStore(keywords(postgres, pg_database)) for _ in range(2)]
    try:
        for round_ in range(20):
            stores[0].put("code", f"k{round_}", {"n": round_})
            # 8 threads over two stores (two pools, as two replicas would have).
            results = racing(8, lambda i, key=f"k{round_}": stores[i % 2].take("code", key))
            assert [r for r in results if r is not None] == [{"n": round_}]
    finally:
        for s in stores:
            s.close()


TAKER = """
import json, os, sys, time
from pathlib import Path
from mxcp_plugins.auth.store_postgres import PostgresSignInStore
store = PostgresSignInStore(json.loads(os.environ["STORE_KEYWORDS"]))
go = Path(os.environ["GO_FILE"])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
taken = [key for key in json.loads(os.environ["KEYS"]) if store.take("code", key) is not None]
store.close()
print(json.dumps(taken), flush=True)
"""


def test_take_hands_a_record_out_once_across_processes(store, postgres, pg_database, tmp_path):
    keys = [f"k{i}" for i in range(300)]
    for key in keys:
        store.put("code", key, {"key": key})
    go = tmp_path / "go"
    env = {**os.environ, "STORE_KEYWORDS": json.dumps(keywords(postgres, pg_database)), "GO_FILE": str(go),
           "KEYS": json.dumps(keys), "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", TAKER], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    try:
        for p in processes:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        taken = [json.loads(p.communicate(timeout=60)[0]) for p in processes]
    finally:
        for p in processes:
            stop_process(p)
    assert all(p.returncode == 0 for p in processes)
    assert sorted(taken[0] + taken[1]) == sorted(keys)  # every record handed out once, to one of them
    assert not set(taken[0]) & set(taken[1])


def test_put_if_absent_keeps_the_first_writers_record(postgres, pg_database):
    stores = [PostgresSignInStore(keywords(postgres, pg_database)) for _ in range(2)]
    try:
        for round_ in range(10):
            answers = racing(6, lambda i, r=round_: stores[i % 2].put_if_absent("key", f"k{r}", {"writer": i}))
            assert len({json.dumps(a) for a in answers}) == 1, answers  # all agree on one record
            assert stores[0].get("key", f"k{round_}") == answers[0]
        # An expired record counts as absent.
        stores[0].put("key", "old", {"writer": "old"}, expires_at=time.time() - 1)
        assert stores[1].put_if_absent("key", "old", {"writer": "new"}) == {"writer": "new"}
    finally:
        for s in stores:
            s.close()


def test_replicas_starting_together_create_the_table_once(postgres, pg_database):
    for round_ in range(5):
        table = ("public", f"sign_in_{round_}")
        opened = racing(4, lambda _i, t=table: PostgresSignInStore(keywords(postgres, pg_database), table=t))
        try:
            opened[0].put("k", "v", {"round": round_})
            assert all(s.get("k", "v") == {"round": round_} for s in opened)
        finally:
            for s in opened:
                s.close()


def test_a_connection_the_server_dropped_is_replaced(store, postgres, pg_database):
    store.put("access", "t", {"a": 1})
    # Several pooled connections, then the server drops them all (a restart or failover looks the same).
    racing(4, lambda _i: store.get("access", "t"))
    killed = postgres.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{pg_database}' "
                          "AND pid <> pg_backend_pid()", pg_database)
    assert killed
    assert store.get("access", "t") == {"a": 1}
    assert store.take("access", "t") == {"a": 1}
    assert racing(4, lambda i: store.put("access", f"t{i}", {"i": i})) == [None] * 4


def test_a_database_that_went_away_fails_the_call_and_comes_back(postgres, pg_database):
    store = PostgresSignInStore(keywords(postgres, pg_database), connect_wait=1.0)
    try:
        store.put("access", "t", {"a": 1})
        postgres.sql(f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS false')
        postgres.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{pg_database}'")
        with pytest.raises(MxcpError) as caught:
            store.get("access", "t")  # an error, never "no such token" nor a stale answer
        assert f"/{pg_database} table mxcp_sign_in) could not read a record" in str(caught.value)
        assert postgres.password not in str(caught.value)
        postgres.sql(f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 15
        while True:
            try:
                assert store.get("access", "t") == {"a": 1}
                break
            except MxcpError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        postgres.sql(f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS true')
        store.close()


def test_a_statement_stuck_behind_a_lock_fails_instead_of_hanging(postgres, pg_database):
    """The proxy calls the store on its event loop: a statement waiting on a lock (an operator's LOCK TABLE, a
    long migration) must fail after the store's statement timeout, not freeze the replica until the lock goes."""
    import psycopg

    store = PostgresSignInStore(keywords(postgres, pg_database), statement_timeout=1.0)
    locker = psycopg.connect(postgres.conninfo(pg_database))
    try:
        store.put("access", "t", {"a": 1})
        locker.execute("LOCK TABLE mxcp_sign_in IN ACCESS EXCLUSIVE MODE")
        answers: list[Any] = []

        def read() -> None:
            try:
                answers.append(store.get("access", "t"))
            except MxcpError as exc:
                answers.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        started = time.monotonic()
        reader.start()
        reader.join(10)
        assert answers, "the store's read was still waiting for the lock after 10 s"
        assert isinstance(answers[0], MxcpError) and "statement timeout" in str(answers[0])
        assert time.monotonic() - started < 5
        locker.rollback()
        assert store.get("access", "t") == {"a": 1}  # the same pooled connections serve on once the lock is gone
    finally:
        locker.close()
        store.close()


def test_an_unreachable_store_names_itself_never_the_password(postgres, pg_database):
    wrong = {**keywords(postgres, pg_database), "password": "wrong-password-value"}
    with pytest.raises(MxcpError) as caught:
        PostgresSignInStore(wrong)
    message = str(caught.value)
    assert f"mxcp_test@127.0.0.1:{postgres.port}/{pg_database}" in message and "password authentication" in message
    assert "wrong-password-value" not in message
    down = {**keywords(postgres, pg_database), "port": str(free_port())}
    with pytest.raises(MxcpError, match="could not be opened"):
        PostgresSignInStore(down)


# -- configuration --------------------------------------------------------------------------------------------


def user_config_text(postgres: Any, db: str, auth: str = "", password: str | None = None) -> str:
    return f"""\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - name: pg_main
            type: postgres
            parameters:
              host: {postgres.host}
              port: {postgres.port}
              database: {db}
              user: {postgres.user}
              password: "{password or postgres.password}"
          - name: api
            type: custom
            parameters: {{token: x}}
{auth}"""


def test_the_hook_opens_the_store_of_the_named_secret(make_project, user_config, tmp_path, postgres, pg_database):
    root = make_project(tmp_path / "p")
    config = user_config(user_config_text(postgres, pg_database))
    project = open_project(root).context
    assert open_sign_in_store({"type": "sqlite"}, project) is None
    opened = open_sign_in_store({"type": "postgres", "secret": "pg_main", "table": "signin_state"}, project)
    try:
        opened.put("k", "v", {"x": 1})
        assert postgres.sql("SELECT count(*) FROM signin_state", pg_database) == [(1,)]
        assert "password" not in repr(opened) and postgres.password not in repr(opened)
    finally:
        opened.close()

    where = "projects.demo.profiles.default.auth.persistence"
    cases = [
        ({"type": "postgres"}, "secret", "names no secret"),
        ({"type": "postgres", "secret": "nope"}, "secret", "'nope' is not in the user config"),
        ({"type": "postgres", "secret": "api"}, "secret", "type 'custom'"),
        ({"type": "postgres", "secret": "pg_main", "table": "x; DROP TABLE y"}, "table", "not a table name"),
        ({"type": "postgres", "secret": "pg_main", "path": "/tmp/x.db"}, "path", "unknown key(s) path"),
    ]
    for persistence, key, expected in cases:
        with pytest.raises(ConfigError) as caught:
            open_sign_in_store(persistence, project)
        message = str(caught.value)
        assert expected in message and f"{where}.{key}" in message and str(config) in message, message


def test_two_proxies_racing_to_their_first_secret_share_one_encryption_key(postgres, pg_database):
    """Replicas create the proxy's encryption key on first use; racing ones must still read each other's data."""
    upstream = ProviderConnection(client_id="upstream")
    endpoints = SimpleNamespace(issuer=None, authorization_endpoint=None, token_endpoint=None, userinfo_endpoint=None)
    from mcp.shared.auth import OAuthClientInformationFull

    for round_ in range(8):
        stores = [PostgresSignInStore(keywords(postgres, pg_database), table=(f"race_{round_}",)) for _ in range(2)]
        try:
            proxies = [SignInProxy(store=s, upstream=upstream, endpoints=endpoints, provider_name="t",
                                   base_url="http://127.0.0.1:1", resource_url="http://127.0.0.1:1/mcp", http=None)
                       for s in stores]

            def register_one(i: int, proxies: list[SignInProxy] = proxies) -> None:
                info = OAuthClientInformationFull(client_id=f"c{i}", client_secret=f"secret-{i}",
                                                  redirect_uris=["http://127.0.0.1:9/cb"])
                asyncio.run(proxies[i].register_client(info))

            racing(2, register_one)
            for reader in proxies:
                for i in range(2):
                    client = asyncio.run(reader.get_client(f"c{i}"))
                    assert client is not None and client.client_secret == f"secret-{i}", (round_, i)
        finally:
            for s in stores:
                s.close()


# -- two replicas -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def replica(root: Path, config: Path, port: int, base_url: str, env: dict[str, str]) -> Iterator[str]:
    """`mxcp serve` over streamable HTTP on `port`, telling clients `base_url` (the shared public URL)."""
    with open(server_log_path(root), "ab") as log:
        process = subprocess.Popen(
            [*mxcp_command(), "serve", "--transport", "streamable-http", "--host", "127.0.0.1", "--port", str(port),
             "--base-url", base_url],
            cwd=root, env=serve_env({"MXCP_CONFIG": str(config), **env}), stdout=subprocess.DEVNULL, stderr=log)
    try:
        try:
            wait_for_port(port, process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{server_log(root)}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def test_two_replicas_sharing_the_store_accept_each_others_sign_ins(auth_server, postgres, pg_database, tmp_path):
    base_port, other_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{base_port}"  # what a load balancer would be; replica A answers there
    auth = issuer_config(auth_server, tmp_path / "unused.db").replace(
        "persistence: {type: sqlite, path: " + str(tmp_path / "unused.db") + "}",
        "persistence: {type: postgres, secret: pg_main}")
    assert "type: postgres" in auth
    # The password comes from the environment (`${VAR}`), as it would in production.
    config_text = user_config_text(postgres, pg_database, password="${MXCP_TEST_PG_PASSWORD}") + \
        auth.split("profiles:\n      default:\n", 1)[1]
    roots = [tmp_path / "replica-a", tmp_path / "replica-b"]
    configs = [write_project(root, config_text) for root in roots]
    env = {"MXCP_TEST_PG_PASSWORD": postgres.password}
    with replica(roots[0], configs[0], base_port, base_url, env) as a, \
            replica(roots[1], configs[1], other_port, base_url, env) as b:
        A, B = SimpleNamespace(url=a), SimpleNamespace(url=b)
        # A confidential client registered on A: its secret is encrypted with the key in the store.
        registered = register(A, auth_method="client_secret_post")
        assert registered.status_code == 201, registered.text
        client = registered.json()
        tokens = sign_in(A, auth_server, client)

        async def who(url: str, token: str, tool: str = "whoami") -> Any:
            return (await call(url, token, tool)).structured_content

        # The access token A issued works on B, with the upstream token B decrypts.
        assert anyio.run(who, b, tokens["access_token"])["username"] == "alice"
        assert anyio.run(who, b, tokens["access_token"], "whoami_py")["has_external_token"] is True
        # B refreshes (authenticating the client A registered), once.
        rotated = refresh(B, client, tokens["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        fresh = rotated.json()
        assert anyio.run(who, a, fresh["access_token"])["username"] == "alice"
        # The refresh token B took is spent on A too; its reuse revokes the whole sign-in on both.
        reused = refresh(A, client, tokens["refresh_token"])
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        # A login started on B (/authorize, the approval, /token) whose consent page and provider callback come
        # through the public URL, i.e. A.
        again = sign_in(B, auth_server, client)
        assert anyio.run(who, a, again["access_token"])["username"] == "alice"
        for url in (a, b):
            refused = httpx2.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                  headers={"Authorization": f"Bearer {fresh['access_token']}",
                                           "Accept": "application/json, text/event-stream"}, timeout=10)
            assert refused.status_code == 401
    # Nothing either replica logged holds the database password or a token.
    for root in roots:
        log = server_log(root)
        assert postgres.password not in log
        for value in (tokens["access_token"], tokens["refresh_token"], fresh["access_token"]):
            assert value not in log


def test_a_failing_purge_does_not_fail_the_record_being_stored(store, monkeypatch, caplog):
    """The purge of expired rows rides along with a `put` once a minute; if it fails (say, a large backlog running
    into the statement timeout) the put still stores its record."""
    from mxcp_plugins.auth import store_postgres

    def failing(now: float) -> int:
        raise store_postgres.SignInStoreError("sign-in store postgres (here) could not purge: canceling statement")

    monkeypatch.setattr(store, "_purge", failing)
    monkeypatch.setattr(store, "_last_purge", 0.0)
    with caplog.at_level("WARNING", logger=store_postgres.__name__):
        store.put("access", "t", {"a": 1}, expires_at=time.time() + 60)
    assert store.get("access", "t") == {"a": 1}
    assert "could not purge" in caplog.text
