"""`tests:` blocks of endpoints: run each through the same call path as a served call, then check its assertions.

A test calls `Runtime.call_async(kind, key, arguments, caller="test", user=user_context)`, so argument
validation, every `call_endpoint` wrapper (policies, audit...) and result shaping apply exactly as when serving.
Results and expected values are compared after `to_jsonable` (dates as ISO strings, Decimals as numbers).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from . import redaction
from .errors import MxcpError, NotFoundError, suggest
from .typesystem import to_jsonable

if TYPE_CHECKING:
    from .execution import Runtime
    from .records import EndpointDefinition

ASSERTION_KEYS = (
    "result",
    "result_contains",
    "result_not_contains",
    "result_contains_item",
    "result_contains_all",
    "result_length",
    "result_contains_text",
)
# `expect_error: "text"`: the call must fail (a policy denial, say) with a message containing the text.
EXPECT_ERROR = "expect_error"
TEST_KEYS = frozenset({"name", "description", "user_context", "arguments", EXPECT_ERROR, *ASSERTION_KEYS})


@attrs.frozen
class TestOutcome:
    """One test's result. `status` is passed, failed (an assertion did not hold) or error (the call raised)."""

    __test__ = False  # not a pytest test class, despite the name

    kind: str
    endpoint: str
    name: str
    status: str
    message: str | None = None
    duration_ms: float = 0.0
    origin: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "duration_ms": round(self.duration_ms, 3),
        }


@attrs.frozen
class PlannedTest:
    """A test about to run: its endpoint and its raw mapping from the YAML."""

    __test__ = False

    endpoint: EndpointDefinition
    spec: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.spec.get("name", "?"))


# -- structure ------------------------------------------------------------------------------------------


def structure_problems(test: Any) -> list[str]:
    """What is wrong with one raw test mapping (unknown keys, malformed arguments), as messages."""
    if not isinstance(test, Mapping):
        return ["each test must be a mapping with a 'name'"]
    problems = []
    if not isinstance(test.get("name"), str) or not test.get("name"):
        problems.append("each test needs a 'name'")
    for key in test:
        if key not in TEST_KEYS:
            problems.append(f"unknown test key '{key}'{suggest(str(key), TEST_KEYS)}")
    arguments = test.get("arguments")
    if arguments is not None:
        if not isinstance(arguments, list):
            problems.append("arguments must be a list of {key, value} items")
        else:
            for index, item in enumerate(arguments):
                if not isinstance(item, Mapping) or not isinstance(item.get("key"), str) or set(item) - {"key", "value"}:
                    problems.append(f"arguments[{index}] must be a mapping with 'key' and 'value'")
    user_context = test.get("user_context")
    if user_context is not None and not isinstance(user_context, Mapping):
        problems.append("user_context must be a mapping")
    if "result_not_contains" in test and not isinstance(test["result_not_contains"], list):
        problems.append("result_not_contains must be a list of field names")
    if "result_contains_all" in test and not isinstance(test["result_contains_all"], list):
        problems.append("result_contains_all must be a list of items")
    length = test.get("result_length")
    if "result_length" in test and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
        problems.append("result_length must be a non-negative integer")
    if "result_contains_text" in test and not isinstance(test["result_contains_text"], str):
        problems.append("result_contains_text must be a string")
    if EXPECT_ERROR in test:
        if not isinstance(test[EXPECT_ERROR], str) or not test[EXPECT_ERROR]:
            problems.append("expect_error must be the text the error message contains")
        if has_assertions(test):
            problems.append("expect_error cannot be combined with result assertions: a call that fails has no result")
    return problems


def call_arguments(test: Mapping[str, Any]) -> dict[str, Any]:
    """`arguments: [{key, value}]` as a dict (YAML dates become ISO strings, as a client would send them)."""
    return {str(item["key"]): to_jsonable(item.get("value")) for item in test.get("arguments") or ()}


def has_assertions(test: Mapping[str, Any]) -> bool:
    return any(key in test for key in ASSERTION_KEYS)


# -- assertions -----------------------------------------------------------------------------------------
# Each check takes the (jsonable) result and the expected value; it returns None when the assertion holds,
# otherwise one sentence saying what differed.


def _show(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def same(actual: Any, expected: Any) -> bool:
    """JSON equality: numbers compare by value (1 == 1.0) but booleans are not numbers."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in actual)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected))
    if isinstance(actual, (Mapping, list)) or isinstance(expected, (Mapping, list)):
        return False
    return actual == expected


def _subset_difference(actual: Any, expected: Mapping[str, Any]) -> str | None:
    """Why the object `actual` does not contain every key/value of `expected` (None when it does)."""
    if not isinstance(actual, Mapping):
        return f"expected an object, got {_kind_of(actual)}"
    for key, value in expected.items():
        if key not in actual:
            return f"key '{key}' is missing"
        if not same(actual[key], value):
            return f"key '{key}' is {_show(actual[key])}, expected {_show(value)}"
    return None


def _item_matches(item: Any, expected: Any) -> bool:
    if same(item, expected):
        return True
    return isinstance(expected, Mapping) and isinstance(item, Mapping) and _subset_difference(item, expected) is None


def check_result(actual: Any, expected: Any) -> str | None:
    if same(actual, expected):
        return None
    return f"got {_show(actual)}, expected {_show(expected)}"


def check_result_contains(actual: Any, expected: Any) -> str | None:
    if isinstance(actual, Mapping):
        if not isinstance(expected, Mapping):
            return f"result is an object; result_contains must be a mapping of fields, got {_show(expected)}"
        difference = _subset_difference(actual, expected)
        return None if difference is None else f"{difference} in result {_show(actual)}"
    if isinstance(actual, list):
        if any(_item_matches(item, expected) for item in actual):
            return None
        what = "no item contains" if isinstance(expected, Mapping) else "no item equals"
        return f"{what} {_show(expected)} (result has {len(actual)} items: {_show(actual)})"
    if isinstance(actual, str) and isinstance(expected, str):
        return None if expected in actual else f"result {_show(actual)} does not contain {_show(expected)}"
    return None if same(actual, expected) else f"result {_show(actual)} does not contain {_show(expected)}"


def check_result_not_contains(actual: Any, expected: Any) -> str | None:
    forbidden = expected if isinstance(expected, list) else [expected]
    if isinstance(actual, Mapping):
        present = [field for field in forbidden if field in actual]
        return None if not present else f"result has field(s) {', '.join(map(str, present))} it should not have"
    if isinstance(actual, list):
        for index, item in enumerate(actual):
            if isinstance(item, Mapping):
                present = [field for field in forbidden if isinstance(field, str) and field in item]
                if present:
                    return f"item {index} has field(s) {', '.join(present)} it should not have"
            elif any(same(item, value) for value in forbidden):
                return f"item {index} is {_show(item)}, which should not be in the result"
        return None
    if isinstance(actual, str):
        found = [value for value in forbidden if isinstance(value, str) and value in actual]
        return None if not found else f"result contains {_show(found[0])}, which it should not"
    found = [value for value in forbidden if same(actual, value)]
    return None if not found else f"result is {_show(actual)}, which it should not be"


def check_result_contains_item(actual: Any, expected: Any) -> str | None:
    if not isinstance(actual, list):
        return f"result_contains_item needs a list result, got {_kind_of(actual)}"
    if any(_item_matches(item, expected) for item in actual):
        return None
    return f"no item matches {_show(expected)} (result has {len(actual)} items: {_show(actual)})"


def check_result_contains_all(actual: Any, expected: Any) -> str | None:
    if not isinstance(actual, list):
        return f"result_contains_all needs a list result, got {_kind_of(actual)}"
    missing = [item for item in expected if not any(_item_matches(candidate, item) for candidate in actual)]
    if not missing:
        return None
    return f"{len(missing)} of {len(expected)} items not found, first: {_show(missing[0])}"


def check_result_length(actual: Any, expected: Any) -> str | None:
    if not isinstance(actual, (list, str, Mapping)):
        return f"result_length needs a list result, got {_kind_of(actual)}"
    if len(actual) == expected:
        return None
    unit = "characters" if isinstance(actual, str) else "keys" if isinstance(actual, Mapping) else "items"
    return f"expected {expected} {unit}, got {len(actual)}"


def result_text(actual: Any) -> str:
    """The text a substring check searches: the string itself, else every string inside plus the JSON form."""
    if isinstance(actual, str):
        return actual
    strings: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(actual)
    return "\n".join([*strings, json.dumps(actual, ensure_ascii=False, default=str)])


def check_result_contains_text(actual: Any, expected: Any) -> str | None:
    if str(expected) in result_text(actual):
        return None
    return f"text {_show(str(expected))} not found in result {_show(actual)}"


CHECKS: dict[str, Callable[[Any, Any], str | None]] = {
    "result": check_result,
    "result_contains": check_result_contains,
    "result_not_contains": check_result_not_contains,
    "result_contains_item": check_result_contains_item,
    "result_contains_all": check_result_contains_all,
    "result_length": check_result_length,
    "result_contains_text": check_result_contains_text,
}


def check_assertions(test: Mapping[str, Any], result: Any) -> list[str]:
    """Every failed assertion of a test, as `assertion: why` messages."""
    actual = to_jsonable(result)
    failures = []
    for key in ASSERTION_KEYS:
        if key in test:
            message = CHECKS[key](actual, to_jsonable(test[key]))
            if message is not None:
                failures.append(f"{key}: {message}")
    return failures


# -- running --------------------------------------------------------------------------------------------


def plan_tests(runtime: Runtime, only_kind: str | None = None, only_name: str | None = None) -> list[PlannedTest]:
    """The tests to run, in endpoint order; a named endpoint that does not exist is an error."""
    registry = runtime.project.endpoints()
    if only_kind is not None:
        endpoints: Iterable[EndpointDefinition] = registry.by_kind(only_kind).values()
    else:
        endpoints = registry.all()
    if only_name is not None:
        chosen = [e for e in endpoints if e.key == only_name or e.name == only_name]
        if not chosen:
            names = [e.key for e in (registry.by_kind(only_kind).values() if only_kind else registry.all())]
            raise NotFoundError(f"{only_kind or 'endpoint'} '{only_name}' not found{suggest(only_name, names)}")
        endpoints = chosen
    return [PlannedTest(endpoint=e, spec=test) for e in endpoints for test in e.tests]


async def run_one(runtime: Runtime, planned: PlannedTest) -> TestOutcome:
    """Run one test through `call_async` and check its assertions."""
    endpoint, spec = planned.endpoint, planned.spec
    started = time.perf_counter()

    def outcome(status: str, message: str | None = None) -> TestOutcome:
        return TestOutcome(
            kind=endpoint.kind, endpoint=endpoint.key, name=planned.name, status=status, message=message,
            duration_ms=(time.perf_counter() - started) * 1000, origin=endpoint.origin,
        )

    problems = structure_problems(spec)
    if problems:
        return outcome("error", "; ".join(problems))
    expected_error = spec.get(EXPECT_ERROR)
    try:
        result = await runtime.call_async(
            endpoint.kind, endpoint.key, call_arguments(spec), caller="test", user=spec.get("user_context")
        )
    except MxcpError as exc:
        message = str(exc) or type(exc).__name__
        if expected_error is None:
            return outcome("error", message)
        if expected_error in message:
            return outcome("passed")
        return outcome("failed", f"expected an error containing {_show(expected_error)}, got: {message}")
    except Exception as exc:  # noqa: BLE001 - one broken endpoint must not stop the other tests
        return outcome("error", f"{type(exc).__name__}: {exc}")
    if expected_error is not None:
        failures = [f"expected an error containing {_show(expected_error)}, but the call returned "
                    f"{_show(to_jsonable(result))}"]
    else:
        failures = check_assertions(spec, result)
    if not failures:
        return outcome("passed")
    # A failure message quotes the result: its sensitive values must not reach a CI log.
    compiled = runtime.compiled_endpoint(endpoint.kind, endpoint.key)
    hidden = redaction.hidden_values(result, compiled.returns.redact(result)) if compiled else []
    return outcome("failed", redaction.mask("; ".join(failures), extra=hidden))


def run_tests(
    runtime: Runtime,
    only_kind: str | None = None,
    only_name: str | None = None,
    progress: Callable[[TestOutcome], None] | None = None,
    planned: list[PlannedTest] | None = None,
) -> list[TestOutcome]:
    """Run the tests of a started runtime, one after another; `progress` sees each outcome as it lands."""
    import anyio

    todo = planned if planned is not None else plan_tests(runtime, only_kind, only_name)

    async def run_all() -> list[TestOutcome]:
        outcomes = []
        for item in todo:
            result = await run_one(runtime, item)
            outcomes.append(result)
            if progress is not None:
                progress(result)
        return outcomes

    return anyio.run(run_all)


def summarise(outcomes: Iterable[TestOutcome]) -> dict[str, int]:
    counts = {"total": 0, "passed": 0, "failed": 0, "error": 0}
    for outcome in outcomes:
        counts["total"] += 1
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts
