"""The Python executor: finding functions, imports from python/, sync vs async, errors, validation."""
from __future__ import annotations

import json
import logging
import sys
import threading

import anyio
import pytest

from executor_helpers import log_text, python_tool, started
from mxcp_core.errors import ExecutionError, MxcpError, ValidationError
from mxcp_core.project import open_project
from mxcp_core.validation import validate_project


@pytest.fixture
def project(make_project, tmp_path):
    return make_project(tmp_path / "p", {
        "tools/process_user.yml": python_tool(
            "process_user", "main_tool.py", parameters="[{name: email, type: string}]", returns="{type: object}"),
        # The seed's shared-module example, as written.
        "python/utils/validators.py": """
            def validate_email(email: str) -> bool:
                import re
                return bool(re.match(r'^[\\w\\.-]+@[\\w\\.-]+\\.\\w+$', email))
        """,
        "python/main_tool.py": """
            import json

            from utils.validators import validate_email

            def process_user(email: str) -> dict:
                if not validate_email(email):
                    return {"error": "Invalid email"}
                return {"status": "ok", "encoded": json.dumps({"email": email})}
        """,
        # A user module named like a standard library module must not replace it.
        "python/json.py": """
            SHADOW = True

            def json(text: str) -> dict:
                return {"length": len(text)}
        """,
        "tools/json.yml": python_tool("json", "json.py", parameters="[{name: text, type: string}]",
                                      returns="{type: object}"),
        "tools/threads.yml": python_tool("where_sync", "threads.py", returns="{type: object}"),
        "tools/threads_async.yml": python_tool("where_async", "threads.py", returns="{type: object}"),
        "python/threads.py": """
            import asyncio
            import threading

            def where_sync() -> dict:
                return {"thread": threading.get_ident()}

            async def where_async() -> dict:
                await asyncio.sleep(0)
                return {"thread": threading.get_ident()}
        """,
        "tools/explode.yml": python_tool("explode", "errors.py", parameters="[{name: why, type: string}]"),
        "python/errors.py": """
            def explode(why: str):
                helper_that_fails(why)

            def helper_that_fails(why):
                raise ValueError(f"cannot do that: {why}")
        """,
        # No language: the .py extension decides (the original ran it as SQL).
        "tools/inferred.yml": python_tool("inferred", "inferred.py", returns="{type: integer}", language=None),
        "python/inferred.py": "def inferred() -> int:\n    return 42\n",
        "tools/one_row.yml": python_tool("one_row", "shapes.py", returns="{type: object}"),
        "tools/wrong_type.yml": python_tool("wrong_type", "shapes.py", returns="{type: integer}"),
        "python/shapes.py": """
            def one_row():
                return [{"id": 1}]

            def wrong_type():
                return "not a number"
        """,
        "resources/by_main.yml": """
            mxcp: 1
            resource:
              uri: "res://main/{key}"
              parameters: [{name: key, type: string}]
              language: python
              source: {file: ../python/res_main.py}
        """,
        "python/res_main.py": "def main(key: str):\n    return {'via': 'main', 'key': key}\n",
        "resources/by_stem.yml": """
            mxcp: 1
            resource:
              uri: "res://stem"
              source: {file: ../python/res_stem.py}
        """,
        "python/res_stem.py": "def res_stem():\n    return {'via': 'stem'}\n",
    })


def test_shared_modules_import_from_python_folder(project):
    with started(project) as runtime:
        assert runtime.call("tool", "process_user", {"email": "ada@example.com"}) == {
            "status": "ok", "encoded": '{"email": "ada@example.com"}'}
        assert runtime.call("tool", "process_user", {"email": "nope"}) == {"error": "Invalid email"}


def test_a_user_json_module_does_not_shadow_the_standard_library(project):
    with started(project) as runtime:
        assert runtime.call("tool", "json", {"text": "abc"}) == {"length": 3}
        import json as json_again

        assert not hasattr(json_again, "SHADOW") and json_again is json
        assert json.dumps([1]) == "[1]"
    assert sys.modules["json"] is json


def test_plain_functions_run_in_a_worker_thread_and_async_on_the_runtime_loop(project):
    with started(project) as runtime:

        async def main() -> tuple[int, dict, dict, dict]:
            loop_thread = threading.get_ident()
            sync_result = await runtime.call_async("tool", "where_sync")
            first = await runtime.call_async("tool", "where_async")
            second = await runtime.call_async("tool", "where_async")
            return loop_thread, sync_result, first, second

        loop_thread, sync_result, first, second = anyio.run(main)
        assert sync_result["thread"] != loop_thread
        # Coroutines are awaited on the runtime's own loop, never the caller's (server's) loop, which endpoint
        # code must not be able to block; every call uses the same loop.
        assert first["thread"] != loop_thread and first["thread"] == second["thread"]
        # Without an event loop of the caller's (`Runtime.call`), the coroutine is awaited the same way.
        assert runtime.call("tool", "where_async") == first


def test_an_exception_gives_the_caller_its_message_and_the_log_its_traceback(project, caplog):
    caplog.set_level(logging.ERROR)
    with started(project) as runtime:
        with pytest.raises(ExecutionError) as caught:
            runtime.call("tool", "explode", {"why": "no reason"})
    assert str(caught.value) == "cannot do that: no reason"
    assert "Traceback" not in str(caught.value)
    logged = log_text(caplog)
    assert "Traceback" in logged and "helper_that_fails" in logged and "errors.py" in logged


def test_a_py_source_without_language_runs_as_python(project):
    with started(project) as runtime:
        assert runtime.compiled[("tool", "inferred")].definition.language == "python"
        assert runtime.call("tool", "inferred") == 42


def test_result_shaping_and_return_validation_apply_to_python(project):
    with started(project) as runtime:
        assert runtime.call("tool", "one_row") == {"id": 1}
        with pytest.raises(ValidationError, match="^Return value: expected integer, got string"):
            runtime.call("tool", "wrong_type")


def test_resources_call_main_else_the_function_named_like_the_file(project):
    with started(project) as runtime:
        assert runtime.call("resource", "res://main/k1") == {"via": "main", "key": "k1"}
        assert runtime.call("resource", "res://stem") == {"via": "stem"}


def test_validate_checks_functions_exist_with_matching_parameters(make_project, tmp_path):
    root = make_project(tmp_path / "v", {
        "tools/missing.yml": python_tool("missing", "funcs.py"),
        "tools/extra_param.yml": python_tool(
            "extra_param", "funcs.py", parameters="[{name: a, type: integer}, {name: b, type: integer}]"),
        "tools/needs_more.yml": python_tool("needs_more", "funcs.py", parameters="[{name: a, type: integer}]"),
        "tools/fine.yml": python_tool("fine", "funcs.py", parameters="[{name: a, type: integer}]"),
        "python/funcs.py": """
            def extra_param(a):
                return a

            def needs_more(a, c):
                return a

            def fine(a, optional=1):
                return a
        """,
    })
    problems = {p.endpoint: p.message for p in validate_project(open_project(root))}
    assert problems["missing"] == "function 'missing' not found in funcs.py"
    assert problems["extra_param"] == "function extra_param() has no parameter(s) b declared in the YAML"
    assert problems["needs_more"] == "function needs_more() requires c, not declared in the YAML"
    assert "fine" not in problems


def test_two_projects_in_one_process_each_get_their_own_modules(make_project, tmp_path):
    def project_with(name: str, answer: str):
        return make_project(tmp_path / name, {
            "tools/answer.yml": python_tool("answer", "entry.py", returns="{type: string}"),
            "python/helpers/values.py": f"ANSWER = {answer!r}\n",
            "python/entry.py": "from helpers.values import ANSWER\n\ndef answer():\n    return ANSWER\n",
        })

    first, second = project_with("one", "first"), project_with("two", "second")
    with started(first) as runtime:
        assert runtime.call("tool", "answer") == "first"
    with started(second) as runtime:
        assert runtime.call("tool", "answer") == "second"
    # Nothing of either project stays imported: not the module, nor its implicit parent package.
    assert "helpers.values" not in sys.modules and "helpers" not in sys.modules


def test_a_module_that_fails_to_import_is_reported_with_its_file(make_project, tmp_path):
    root = make_project(tmp_path / "bad", {
        "tools/ok.yml": python_tool("ok", "broken.py"),
        "python/broken.py": "import not_a_real_module_xyz\n\ndef ok():\n    return 1\n",
    })
    path_before = list(sys.path)
    # Only the endpoints of the broken module fail (tests/test_import_isolation.py has the rest of the story).
    with started(root) as runtime:
        with pytest.raises(MxcpError, match=r"python/broken.py: import failed: line 1: ModuleNotFoundError"):
            runtime.call("tool", "ok")
    assert sys.path == path_before
    assert "broken" not in sys.modules


def test_tasks_of_an_async_endpoint_share_the_call_cursor(make_project, tmp_path, monkeypatch):
    root = make_project(tmp_path / "gather", {
        "tools/gathered.yml": python_tool("gathered", "gathered.py", returns="{type: integer}"),
        "python/gathered.py": """
            import asyncio

            from mxcp.runtime import db

            async def gathered() -> int:
                async def one(i):
                    await asyncio.sleep(0)
                    return db.execute("SELECT $i AS v", {"i": i})[0]["v"]

                values = await asyncio.gather(*[one(i) for i in range(5)])
                return sum(values)
        """,
    })
    with started(root) as runtime:
        acquired, released = [], []
        original_acquire, original_release = runtime.database.acquire, runtime.database.release
        monkeypatch.setattr(runtime.database, "acquire", lambda **kw: acquired.append(1) or original_acquire(**kw))
        monkeypatch.setattr(runtime.database, "release",
                            lambda cursor, healthy=True: released.append(1) or original_release(cursor, healthy))
        assert anyio.run(lambda: runtime.call_async("tool", "gathered")) == 10
        assert runtime.call("tool", "gathered") == 10
    # One cursor per call, each given back: none leaked by the gathered tasks.
    assert len(acquired) == len(released) == 2


def test_two_projects_open_at_once_each_run_their_own_module_named_like_the_stdlib(make_project, tmp_path):
    """python/calendar.py loads under a private name; a second project must not get the first one's module."""
    from mxcp_core.execution import Runtime
    from mxcp_core.project import open_project

    runtimes = []
    try:
        for label in ("A", "B"):
            root = make_project(tmp_path / label, {
                "tools/which.yml": "mxcp: 1\ntool:\n  name: which\n  return: {type: string}\n"
                                   "  source: {file: ../python/calendar.py}\n",
                "python/calendar.py": f"def which() -> str:\n    return '{label}'\n",
            })
            runtime = Runtime(open_project(root))
            runtime.start()
            runtimes.append(runtime)
        assert [runtime.call("tool", "which") for runtime in runtimes] == ["A", "B"]
    finally:
        for runtime in runtimes:
            runtime.stop()
