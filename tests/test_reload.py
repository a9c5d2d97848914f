"""Runtime.reload and `reload_duckdb`: drain, close, a payload with the file to itself, reopen, hooks again."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from executor_helpers import log_text, python_tool, started, tool

# Rewrites the database from another process: it can only open the file when this process has closed it.
REWRITE = (
    "import duckdb, sys\n"
    "with duckdb.connect(sys.argv[1]) as conn:\n"
    "    conn.execute('CREATE OR REPLACE TABLE facts AS SELECT ' + sys.argv[2] + ' AS version')\n"
)


def rewrite_in_subprocess(path: str, version: int) -> None:
    subprocess.run([sys.executable, "-c", REWRITE, path, str(version)], check=True, timeout=60,
                   capture_output=True, text=True)


@pytest.fixture
def project(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "tools/version.yml": tool("version", 'code: "SELECT version FROM facts"', returns="{type: integer}"),
        "python/counters.py": """
            from mxcp.runtime import db, on_init, on_shutdown

            EVENTS = []

            @on_init
            def opened():
                # Hooks may use the database: it is open again when on_init runs after a reload.
                EVENTS.append(("init", db.execute("SELECT count(*) AS n FROM facts").fetchone()["n"]))

            @on_shutdown
            def closing():
                EVENTS.append(("shutdown", None))

            def events() -> list:
                return [list(event) for event in EVENTS]
        """,
        "tools/events.yml": python_tool("events", "counters.py", returns="{type: array}"),
        # The seed's reload example, with `dbt run` replaced by rewriting the file from a subprocess.
        "python/rebuild.py": """
            import subprocess
            import sys

            from mxcp.runtime import config, reload_duckdb

            def rebuild_database(version: int) -> dict:
                \"\"\"Trigger database rebuild\"\"\"
                path = config.get_setting("profiles.default.duckdb.path")

                def rebuild():
                    # Run with exclusive database access
                    script = ("import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                              "c.execute('CREATE OR REPLACE TABLE facts AS SELECT ' + sys.argv[2] + ' AS version')")
                    subprocess.run([sys.executable, "-c", script, path, str(version)], check=True)

                reload_duckdb(
                    payload_func=rebuild,
                    description="Rebuilding with dbt"
                )

                return {"status": "Reload scheduled"}
        """,
        "tools/rebuild_database.yml": python_tool("rebuild_database", "rebuild.py",
                                                  parameters="[{name: version, type: integer}]",
                                                  returns="{type: object}"),
    })
    database = root / "data" / "db.duckdb"
    database.parent.mkdir()
    (root / "mxcp-site.yml").write_text(
        f"mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    duckdb: {{path: '{database}'}}\n")
    with duckdb.connect(str(database)) as conn:
        conn.execute("CREATE TABLE facts AS SELECT 1 AS version")
    return root


def test_payload_rewrites_the_file_with_exclusive_access_and_hooks_rerun(project):
    with started(project) as runtime:
        path = runtime.context.duckdb_path
        assert runtime.call("tool", "version") == 1
        # While the runtime holds the file, another process cannot write it.
        with pytest.raises(subprocess.CalledProcessError):
            rewrite_in_subprocess(path, 99)
        seen_open = []

        def payload() -> None:
            seen_open.append(runtime.database.is_open)
            rewrite_in_subprocess(path, 2)

        runtime.reload(payload, "rewrite from a subprocess")
        runtime.wait_for_reloads(60)
        assert seen_open == [False]
        assert runtime.call("tool", "version") == 2
        assert runtime.call("tool", "events") == [["init", 1], ["shutdown", None], ["init", 1]]
        assert runtime.reload_count == 1


def test_reload_duckdb_from_an_endpoint_returns_at_once_and_applies(project):
    with started(project) as runtime:
        assert runtime.call("tool", "rebuild_database", {"version": 7}) == {"status": "Reload scheduled"}
        runtime.wait_for_reloads(60)
        assert runtime.call("tool", "version") == 7


def test_calls_from_many_threads_during_a_reload_all_succeed(project):
    failures: list[BaseException] = []
    results: list[int] = []
    with started(project) as runtime:
        path = runtime.context.duckdb_path
        payload_started = threading.Event()

        def payload() -> None:
            payload_started.set()
            time.sleep(0.3)  # calls keep arriving while the file is closed
            rewrite_in_subprocess(path, 3)

        def caller() -> None:
            try:
                for _ in range(10):
                    results.append(runtime.call("tool", "version"))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(20)]
        for index, thread in enumerate(threads):
            thread.start()
            if index == 5:
                runtime.reload(payload, "concurrent")
        for thread in threads:
            thread.join(60)
        runtime.wait_for_reloads(60)
        assert payload_started.is_set()
        assert failures == []
        assert len(results) == 200 and set(results) <= {1, 3} and 3 in results
        assert runtime.call("tool", "version") == 3


def test_a_failing_payload_is_logged_and_the_runtime_comes_back(project, caplog):
    caplog.set_level(logging.ERROR)
    with started(project) as runtime:
        def payload() -> None:
            raise RuntimeError("payload broke")

        runtime.reload(payload, "doomed")
        runtime.wait_for_reloads(60)
        assert runtime.call("tool", "version") == 1
    assert "reload payload failed (doomed)" in log_text(caplog) and "payload broke" in log_text(caplog)


def test_the_payload_cannot_reopen_the_database_behind_its_own_back(project, caplog):
    caplog.set_level(logging.ERROR)
    with started(project) as runtime:
        def payload() -> None:
            from mxcp.runtime import db

            db.execute("SELECT 1")

        runtime.reload(payload)
        runtime.wait_for_reloads(60)
        assert runtime.call("tool", "version") == 1
    assert "the database is closed while a reload payload runs" in log_text(caplog)


def test_stop_waits_for_a_scheduled_reload(project):
    with started(project) as runtime:
        path = runtime.context.duckdb_path
        runtime.reload(lambda: (time.sleep(0.2), rewrite_in_subprocess(path, 5)))
    with duckdb.connect(path, read_only=True) as conn:
        assert conn.execute("SELECT version FROM facts").fetchone()[0] == 5
