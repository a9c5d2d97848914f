"""Every project in examples/ passes its own YAML tests with the real `mxcp test`, run in a temporary copy.

The copy keeps DuckDB files, saved models and caches out of the repository. Examples needing an optional
extra are skipped when it is missing, the reason naming the extra to install; CI installs every extra and
redis-server.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from extras import skip_without_extra
from mxcp_core.testing import ProjectHandle, build_project

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@attrs.frozen
class Example:
    folder: str
    tests: int  # how many YAML tests it has: tests cannot silently disappear
    env: dict[str, str] = attrs.Factory(dict)
    extra: str | None = None  # the optional extra of pyproject.toml it needs (see extras.EXTRAS)
    redis: bool = False
    setup: str | None = None  # SQL the project's README has you run first (`mxcp query --file`)


CATALOGUE = [
    Example("seed-patterns", tests=20, env={"SEED_API_KEY": "demo-key-12345"}),
    Example("pandas-analysis", tests=6, extra="pandas"),
    Example("ml-classifier", tests=7, extra="ml"),
    Example("redis-cache", tests=4, extra="redis", redis=True),
    Example("original-style", tests=7, env={"WEATHER_API_KEY": "demo-weather-key"}, extra="cel"),
    Example("access-control", tests=12, extra="cel"),
    Example("postgres-rls", tests=11, setup="setup/duckdb.sql"),  # its PostgreSQL profile: test_example_postgres_rls
]


def test_every_example_project_is_in_the_catalogue():
    projects = {path.parent.name for path in EXAMPLES.glob("*/mxcp-site.yml")}
    assert projects == {example.folder for example in CATALOGUE}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A throwaway redis-server on 127.0.0.1 with a free port, no persistence; stopped afterwards."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with code {process.returncode} before accepting connections")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not accept connections within 15 s")
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def require_modules(example: Example) -> None:
    __tracebackhide__ = True  # the skip is reported at the test's line
    if example.extra is not None:
        skip_without_extra(example.extra, who=f"example {example.folder}")


def copy_example(example: Example, tmp_path: Path) -> Path:
    return build_project(tmp_path / example.folder, EXAMPLES / example.folder)


def example_env(example: Example, root: Path, home: Path, redis_port: int | None = None) -> dict[str, str]:
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", ""), **example.env}
    if (root / "config.yml").exists():
        env["MXCP_CONFIG"] = str(root / "config.yml")
    if redis_port is not None:
        env["REDIS_PORT"] = str(redis_port)
    return env


@pytest.mark.parametrize("example", CATALOGUE, ids=lambda example: example.folder)
def test_mxcp_test_passes_in_example(example: Example, tmp_path: Path, request: pytest.FixtureRequest):
    require_modules(example)
    port = request.getfixturevalue("redis_port") if example.redis else None
    root = copy_example(example, tmp_path)
    env = example_env(example, root, tmp_path, port)
    if example.setup is not None:
        subprocess.run([sys.executable, "-c", "from mxcp_core.cli import main; main()", "query", "--file", example.setup],
                       cwd=root, env=env, capture_output=True, text=True, timeout=180, check=True)
    done = subprocess.run(
        [sys.executable, "-c", "from mxcp_core.cli import main; main()", "test", "--json-output"],
        cwd=root, env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, f"mxcp test failed in {example.folder}:\n{done.stdout}\n{done.stderr}"
    summary = json.loads(done.stdout)["result"]["summary"]
    assert summary == {"total": example.tests, "passed": example.tests, "failed": 0, "error": 0}


# -- what YAML tests cannot show ------------------------------------------------------------------------
def example_handle(folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> ProjectHandle:
    example = next(e for e in CATALOGUE if e.folder == folder)
    root = copy_example(example, tmp_path)
    for key, value in example_env(example, root, tmp_path).items():
        if key != "PATH":
            monkeypatch.setenv(key, value)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return ProjectHandle(root)


def test_seed_reload_payload_runs_and_later_calls_see_its_writes(tmp_path, monkeypatch):
    handle = example_handle("seed-patterns", tmp_path, monkeypatch)
    with handle.runtime() as runtime:
        assert runtime.call("tool", "snapshot_labels") == []
        assert runtime.call("tool", "rebuild_snapshot", {"label": "v1"}) == {"status": "scheduled", "label": "v1"}
        runtime.wait_for_reloads(timeout=30)
        assert runtime.reload_count == 1
        assert runtime.call("tool", "snapshot_labels") == ["v1"]
        # The lifecycle hooks ran again around the reload: the client is a fresh, open one.
        assert runtime.call("tool", "client_status")["closed"] is False


def test_seed_secrets_never_returned(tmp_path, monkeypatch):
    handle = example_handle("seed-patterns", tmp_path, monkeypatch)
    summary = handle.tool("secret_summary")
    assert summary["api_key_length"] == len("demo-key-12345")
    text = json.dumps(list(summary.values()))
    # Not even a piece of either secret (5 characters or more) is among the returned values.
    for secret in ("demo-key-12345", "demo-bearer-token-123"):
        assert not any(secret[i:i + 5] in text for i in range(len(secret) - 4)), secret


def test_ml_model_saved_by_training_is_loaded_at_next_start(tmp_path, monkeypatch):
    require_modules(next(e for e in CATALOGUE if e.folder == "ml-classifier"))
    handle = example_handle("ml-classifier", tmp_path, monkeypatch)
    trained = handle.tool(
        "train_classifier", table_name="flowers", target_column="species",
        feature_columns=["petal_width"], model_name="widths",
    )
    assert trained["test_accuracy"] >= 0.9
    assert (handle.root / "models" / "widths.pkl").is_file()
    # A new runtime (a server restart) loads the saved model in @on_init.
    names = [model["name"] for model in handle.tool("list_models")]
    assert names == ["default", "widths"]
    assert handle.tool("predict", model_name="widths", features={"petal_width": 2.2})["prediction"] == "virginica"


def test_redis_client_closed_on_shutdown(tmp_path, monkeypatch, redis_port):
    require_modules(next(e for e in CATALOGUE if e.folder == "redis-cache"))
    import redis

    handle = example_handle("redis-cache", tmp_path, monkeypatch, REDIS_PORT=str(redis_port))
    observer = redis.Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
    try:
        observer.client_setname("observer")

        def others() -> int:
            return sum(1 for client in observer.client_list() if client.get("name") != "observer")

        with handle.runtime() as runtime:
            assert runtime.call("tool", "cache_remember", {"key": "k", "value": "v"})["found"] is True
            assert others() >= 1
        assert others() == 0  # @on_shutdown closed the example's connections
        assert observer.get("k") == "v"
    finally:
        observer.close()


def test_access_control_over_mcp_gives_each_configured_caller_what_its_tests_say(tmp_path, monkeypatch, user_config):
    """In-process MCP client: the caller is the user config's identity, as for stdio serving."""
    skip_without_extra("cel", who="example access-control")
    from mxcp_core.testing import ClientFactory

    handle = example_handle("access-control", tmp_path, monkeypatch)

    async def session(client):
        names = sorted(t.name for t in (await client.list_tools()).tools)
        employee = await client.call_tool("employee", {"id": 2})
        alice = await client.call_tool("employee", {"id": 1})
        expenses = await client.call_tool("my_expenses", {})
        return names, employee, alice, expenses

    def as_user(context: str) -> tuple:
        user_config(f"mxcp: 1\nprojects:\n  access-control:\n    profiles:\n      default:\n        user_context: {context}\n")
        return ClientFactory().run(handle, session)

    names, employee, alice, expenses = as_user("{username: hana, role: hr}")
    assert names == ["employee", "my_expenses", "whoami"]  # payroll_export is for admins only
    assert employee.structured_content == {"id": 2, "username": "bob", "name": "Bob Baker", "department": "engineering",
                                           "salary": 95000, "ssn": "****", "private": {"department": "engineering"}}
    assert alice.structured_content["name"] == "Alice Archer"  # HR may read Alice's record
    assert expenses.structured_content == {"result": []}  # hana has no expense claims

    names, employee, alice, expenses = as_user("{username: bob, role: user}")
    assert "salary" not in employee.structured_content and employee.structured_content["ssn"] == "****"
    assert alice.is_error and alice.content[0].text == (
        "denied by input policy 2 of tool 'employee': Only Alice and HR may read Alice's record")
    assert expenses.structured_content == {"result": [{"id": 12, "note": "conference ticket", "amount": 450.0}]}

    names, employee, _, _ = as_user("{username: root, role: admin}")
    assert names == ["employee", "my_expenses", "payroll_export", "whoami"]
    assert employee.structured_content["private"]["home_address"] == "2 Oak Ave"
