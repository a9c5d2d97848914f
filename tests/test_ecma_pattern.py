"""`pattern:` has JSON Schema (ECMA-262) meaning: the translator, then real endpoint calls and load-time errors."""
from __future__ import annotations

import json
import re

import pytest
from executor_helpers import started

from mxcp_core.ecma_regex import PatternError, translate
from mxcp_core.errors import ValidationError


def ecma_search(pattern: str, text: str) -> bool:
    return re.search(translate(pattern), text) is not None


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        # `$` is the end of input only; `^` the start only.
        ("^[A-Z]{3}$", "ABC", True),
        ("^[A-Z]{3}$", "ABC\n", False),
        ("^a", "b\na", False),
        # Character class escapes are ASCII (\d, \w) and ECMA whitespace (\s).
        (r"^\d+$", "123", True),
        (r"^\d+$", "١٢٣", False),  # Arabic-Indic digits are \d in Python, not in ECMA-262
        (r"^\w+$", "abc_9", True),
        (r"^\w+$", "é", False),
        (r"^\s$", "\u00a0", True),
        (r"^\s$", "\ufeff", True),
        (r"^\s$", "\x1c", False),  # Python's \s matches the file separator; ECMA's does not
        (r"^\D$", "٣", True),
        (r"^\W$", "é", True),
        (r"^[\d]+$", "١", False),
        (r"^[^\d]$", "١", True),
        (r"^[\w-]+$", "a-b", True),
        (r"^[\S]$", " ", False),
        # `.` stops at every ECMA line terminator.
        ("^.$", "\r", False),
        ("^.$", "\u2028", False),
        ("^.$", "x", True),
        # Word boundaries use ASCII word characters.
        (r"\bé", "é", False),
        (r"\bab\b", "x ab y", True),
        # Unanchored patterns search, as JSON Schema does.
        ("b", "abc", True),
        # `[]` matches nothing, `[^]` anything.
        ("[]", "a", False),
        ("^[^]$", "\n", True),
        # Annex B: a brace that is not a quantifier is a literal.
        ("^a{,2}$", "a{,2}", True),
        ("^a{,2}$", "aa", False),
        ("^a{2,}$", "aaa", True),
        # Backreferences: a group that did not take part matches the empty string.
        (r"^(a)?b\1$", "b", True),
        (r"^(a)\1$", "aa", True),
        (r"^(a)\1$", "ab", False),
        (r"^(?<d>\d)-\k<d>$", "7-7", True),
        (r"^(?<d>\d)-\k<d>$", "7-8", False),
        (r"^\2(a)(b)$", "ab", True),
        # Escapes translate to the same character, never Python's meaning.
        (r"^\x41\u0042\u{43}\cJ$", "ABC\n", True),
        (r"^[\b]$", "\b", True),
        (r"^\/\.$", "/.", True),
        ("^[.$^]+$", "$.^", True),
        ("^[a-]$", "-", True),
        (r"(?<=\$)\d+", "$12", True),
        ("^#x y$", "#x y", True),
    ],
)
def test_ecma_meaning(pattern, text, matches):
    assert ecma_search(pattern, text) is matches


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"^\p{Lu}$", r"cannot express Unicode property escapes (\p) at position 1"),
        ("(?<=a+)b", "cannot express this pattern: look-behind requires fixed-width pattern"),
        (r"\A", r"\A is not an ECMA-262 escape at position 0"),
        ("(?i)abc", "invalid group"),
        ("a**", "nothing to repeat"),
        ("[z-a]", "range out of order"),
        ("(a", "missing ')'"),
        ("a)", "unmatched ')'"),
        ("[a", "missing ']'"),
        (r"\1(a)\2", "backreference \\2 to a group that does not exist"),
        (r"\k<nope>", "unknown group 'nope'"),
        ("a{3,1}", "numbers out of order"),
        ("x\\", "ends with a backslash"),
    ],
)
def test_refused_patterns(pattern, message):
    with pytest.raises(PatternError) as caught:
        translate(pattern)
    assert message in str(caught.value)


def tool(pattern: str) -> str:
    return (
        "mxcp: 1\ntool:\n  name: code\n  parameters:\n"
        f"    - {{name: code, type: string, pattern: {json.dumps(pattern)}}}\n"
        "  return: {type: string}\n  source: {code: \"SELECT $code\"}\n"
    )


def test_a_real_call_applies_the_ecma_meaning(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p", {"tools/code.yml": tool("^[A-Z]{3}$")})
    with started(root) as runtime:
        assert runtime.call("tool", "code", {"code": "ABC"}) == "ABC"
        with pytest.raises(ValidationError, match=r"does not match pattern '\^\[A-Z\]\{3\}\$' \(pattern\)"):
            runtime.call("tool", "code", {"code": "ABC\n"})

    done = run_mxcp("run", "tool", "code", "--param", 'code="ABC\\n"', "--json-output", cwd=root)
    assert done.returncode == 1
    assert "does not match pattern" in json.loads(done.stdout)["error"]
    done = run_mxcp("run", "tool", "code", "--param", "code=XYZ", "--json-output", cwd=root)
    assert (done.returncode, json.loads(done.stdout)["result"]) == (0, "XYZ")


def test_the_advertised_schema_keeps_the_pattern_as_written(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/code.yml": tool(r"^\d{3}$")})
    with started(root) as runtime:
        compiled = runtime.compiled_endpoint("tool", "code")
        from mxcp_core.typesystem import to_json_schema

        assert to_json_schema(compiled.definition.parameters[0].type).get("pattern") == r"^\d{3}$"
        with pytest.raises(ValidationError):
            runtime.call("tool", "code", {"code": "١٢٣"})


def test_a_pattern_python_cannot_express_is_refused_at_load_naming_file_and_parameter(make_project, tmp_path,
                                                                                     run_mxcp):
    root = make_project(tmp_path / "p", {
        "tools/code.yml": tool(r"^\p{Lu}+$"),
        "tools/ok.yml": "mxcp: 1\ntool:\n  name: ok\n  return: {type: integer}\n  source: {code: 'SELECT 1'}\n",
    })
    done = run_mxcp("validate", "--json-output", cwd=root)
    assert done.returncode == 1
    (problem,) = json.loads(done.stdout)["result"]["problems"]
    assert problem["file"] == "tools/code.yml"
    assert "tool.parameters[0].pattern: parameter 'code': invalid regular expression in pattern" in problem["message"]
    assert "Unicode property escapes" in problem["message"]
    ran = run_mxcp("run", "tool", "ok", cwd=root)
    assert (ran.returncode, ran.stdout.strip()) == (0, "1")
