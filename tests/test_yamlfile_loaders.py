"""The libyaml-backed loader gives exactly what the pure-Python loader gives: values, types, lines and errors.

`load_yaml_text` parses with libyaml's C parser under PyYAML's Python composer and constructors, and re-reads any
file libyaml refuses with the pure-Python loader. Each document below is read by both loaders directly and must
give equal values with equal line marks, or be refused by both (with the pure loader's message either way).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from mxcp_core import yamlfile
from mxcp_core.errors import ConfigError
from mxcp_core.yamlfile import MAX_ALIAS_EXPANSION, LineDict, LineList, load_yaml_text

pytestmark = pytest.mark.skipif(yamlfile._CParser is None, reason="PyYAML without libyaml: one loader only")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

LOADED = {
    "endpoint": """\
mxcp: 1
tool:
  name: t
  description: "A tool"
  parameters:
    - name: a
      type: integer
      minimum: 1
    - {name: b, type: string, default: "x"}
  return: {type: array, items: {type: object}}
  source:
    code: |
      SELECT $a AS a,
             $b AS b
""",
    "anchors and aliases": "base: &base {a: 1, b: [1, 2]}\nx: *base\ny:\n  - *base\n  - &s scalar\n  - *s\n",
    "merge keys": "base: &base\n  a: 1\n  b: 2\nx:\n  <<: *base\n  c: 3\ny: {<<: [*base, {d: 4}], e: 9}\n",
    "block scalars": (
        "literal: |\n  one\n   two\n\n  three\nfolded: >\n  a\n  b\n\n  c\nstrip: |-\n  s\n\nkeep: |+\n  k\n\n"
        "indented: |2\n    four spaces\nlast: >-\n  x\n"
    ),
    "flow collections over lines": "a: [1,\n  2,\n  {b: c,\n   d: [e, f]}]\ng: {h: i, j:\n  k}\n",
    "scalars and types": (
        "int: 42\nneg: -7\nhex: 0x1F\noct: 0o17\nfloat: 1.5e3\ninf: .inf\nnan_is_str: 'nan'\nbool: yes\noff: Off\n"
        "null1: ~\nnull2:\ndate: 2024-01-02\nstamp: 2024-01-02T03:04:05Z\nquoted: \"a\\tb\\u00e9\"\nsingle: 'it''s'\n"
        "plain multi: this is\n  one line\nstr: !!str 123\nbinary: !!binary aGVsbG8=\nset: !!set {a, b}\n"
        "omap: !!omap [{a: 1}, {b: 2}]\n"
    ),
    "explicit and odd keys": "? explicit\n: value\n1: int key\nnull: null key\n'quoted key': q\n\"x y\": z\n",
    "comments and document markers": "%YAML 1.1\n---\n# a comment\na: 1 # trailing\n\n\nb: 2\n...\n",
    "indentless sequence": "items:\n- a\n- b:\n    c: 1\n- - nested\n  - list\nafter: 1\n",
    "CRLF line ends": "a: 1\r\nb:\r\n  - x\r\n  - y\r\nc: |\r\n  z\r\n",
    "lone CR line ends": "a: 1\rb:\r  - x\rc: 2\r",
    "unicode line breaks": "a: 1\x85b: 2\u2028c: 3\u2029d: [4]\n",
    "byte order mark and non-ASCII": "\ufeffname: café\nemoji: \"😀\"\n日本: 語\n",
    "a tab escaped in quotes": "a: \"t\\tt\"\n",
    "question marks and exclamations in block scalars": "q: Is it? Yes!\nurl: https://x.example/?a=1\n",
    "empty document": "",
    "only a comment": "# nothing\n",
    "a bare scalar": "just text\n",
    "a top-level list": "- 1\n- [2, 3]\n- {a: b}\n",
    "deep but fine": "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)) + "  " * 60 + "leaf: 1\n",
}

REFUSED = {
    "two documents": "a: 1\n---\nb: 2\n",
    "duplicate key": "a: 1\nb: 2\na: 3\n",
    "duplicate key in a flow mapping": "x: {k: 1, k: 2}\n",
    "a key that a merge also sets": "base: &b {a: 1}\ny: {<<: *b, a: 2}\n",
    "unhashable key": "? [a, b]\n: v\n",
    "unknown tag": "a: !custom 1\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "mapping values not allowed": "a: b: c\n",
    "unclosed flow sequence": "a: [1, 2\nb: 3\n",
    "unclosed quote": "a: \"never ends\nb: 1\n",
    "tab indentation": "a:\n\tb: 1\n",
    "undefined alias": "a: *nowhere\n",
    "recursive alias": "a: 1\nb: &loop [1, *loop]\n",
    "duplicate anchor is fine but alias of a later anchor is not": "a: *later\nb: &later 1\n",
    "control character": "a: \x07bell\n",
    "a NUL byte": "a: b\x00\n",
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)),
    "nested too deeply": "[" * 5_000,
}

# Where libyaml alone would read differently (more leniently, or '' for None): the pure loader reads these.
DIVERGING = {
    "a tab in a plain scalar": "a: x\ty\n",
    "a tab in a flow sequence": "c: [1,\t2]\n",
    "a question mark in a flow scalar": "secrets: [api_key, a?i]\n",
    "a block scalar header running into a comment": "a: >#\n",
    "a bare tag": "!",
    "a directive running into a comment": "%YAML 1.1#\n---\na: 1\n",
    "a byte order mark past the start": "a: 1\n\ufeffb: 2\n",
}


def lines(value: Any) -> Any:
    """The value with its types and every line mark, comparable with ==."""
    if isinstance(value, LineDict):
        return ("dict", value.line, dict(value.key_lines), {k: lines(v) for k, v in value.items()})
    if isinstance(value, LineList):
        return ("list", value.line, list(value.item_lines), [lines(v) for v in value])
    if isinstance(value, (dict, list, set)):  # a !!set or !!omap's pairs are built by PyYAML's own constructors
        return (type(value).__name__, repr(value))
    return (type(value).__name__, value)


def load_with(loader: type, text: str) -> Any:
    return yaml.load(text, Loader=loader)  # noqa: S506 - SafeLoader's constructors


def outcome(text: str) -> Any:
    """What load_yaml_text gives: the value with its lines, or the error's message and line."""
    try:
        return lines(load_yaml_text(text, "f.yml"))
    except ConfigError as exc:
        return ("error", exc.message, exc.file, exc.line)


def pure_outcome(text: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(yamlfile, "_CParser", None)  # load_yaml_text with the pure-Python loader alone
        return outcome(text)


@pytest.mark.parametrize("text", LOADED.values(), ids=LOADED.keys())
def test_both_loaders_give_the_same_values_types_and_lines(text):
    expected = load_with(yamlfile._LineLoader, text)
    assert lines(load_with(yamlfile._FastLineLoader, text)) == lines(expected)
    assert lines(load_yaml_text(text, "f.yml")) == lines(expected)


@pytest.mark.parametrize("text", REFUSED.values(), ids=REFUSED.keys())
def test_what_the_pure_loader_refuses_libyaml_refuses_too_and_the_message_is_the_pure_one(text, monkeypatch):
    with pytest.raises((yaml.YAMLError, RecursionError)):
        load_with(yamlfile._FastLineLoader, text)  # never accepted behind the pure loader's back
    refused = outcome(text)
    assert refused[0] == "error" and refused == pure_outcome(text, monkeypatch)


@pytest.mark.parametrize("text", DIVERGING.values(), ids=DIVERGING.keys())
def test_where_libyaml_would_read_differently_the_pure_loader_reads(text, monkeypatch):
    assert yamlfile._PURE_ONLY.search(text)
    assert outcome(text) == pure_outcome(text, monkeypatch)


def test_mutated_documents_read_the_same_with_and_without_libyaml(monkeypatch):
    """Differential fuzzing, in small: random edits of real files, read by load_yaml_text both ways."""
    rng = random.Random(20261130)
    corpus = [*LOADED.values(), *(path.read_text(encoding="utf-8") for path in sorted(EXAMPLES.glob("**/*.yml")))]
    alphabet = [*" \n:-[]{},#&*!|>'\"%@`?\t\r\\0aé~.", "\n  ", "- ", ": ", "? ", "!!str ", "&a ", "*a", "---\n", "|\n",
                *"\x00\x1b\x7f\x85\xa0\u2028\u2029\ufeff😀"]
    for _ in range(1000):
        text = list(rng.choice(corpus))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(text) + 1)
            edit = rng.random()
            if edit < 0.4 or not text:
                text.insert(position, rng.choice(alphabet))
            elif edit < 0.7:
                del text[min(position, len(text) - 1)]
            else:
                text[min(position, len(text) - 1)] = rng.choice(alphabet)
        mutated = "".join(text)
        assert yamlfile._pure_only(mutated) == bool(yamlfile._PURE_ONLY.search(mutated)), mutated
        assert outcome(mutated) == pure_outcome(mutated, monkeypatch), mutated


def test_the_refusals_say_what_and_where():
    def error(text: str) -> tuple[str, int | None]:
        with pytest.raises(ConfigError) as info:
            load_yaml_text(text, "f.yml")
        return info.value.message, info.value.line

    assert error(REFUSED["duplicate key"]) == ("invalid YAML: duplicate key 'a'", 3)
    assert error(REFUSED["recursive alias"])[1] == 2 and "recursive alias" in error(REFUSED["recursive alias"])[0]
    message, line = error(REFUSED["alias bomb"])
    assert message.startswith(f"invalid YAML: aliases expand to more than {MAX_ALIAS_EXPANSION} nodes") and line
    assert error(REFUSED["nested too deeply"])[0] == "invalid YAML: nested too deeply"
    assert error(REFUSED["mapping values not allowed"]) == ("invalid YAML: mapping values are not allowed here", 1)


def test_the_fast_loader_is_the_one_that_reads_a_valid_file(monkeypatch):
    """A valid file is read once, by libyaml: the pure-Python loader is only for refusals."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pure-Python loader ran")

    monkeypatch.setattr(yamlfile._LineLoader, "__init__", refuse)
    loaded = load_yaml_text(LOADED["endpoint"], "f.yml")
    assert loaded["tool"]["name"] == "t" and loaded["tool"].line_of("source") == 11
    assert loaded["tool"]["parameters"].line_of(1) == 9


@pytest.mark.parametrize("depth", [99, 101, 250, 400, 600])
def test_deep_documents_load_or_fail_as_with_the_pure_loader(depth, monkeypatch):
    """libyaml composes in C, without Python's stack: a deep document goes to the pure loader, which decides."""
    text = "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, depth)) + "  " * depth + "leaf: 1\n"
    assert outcome(text) == pure_outcome(text, monkeypatch)


def test_an_alias_gives_the_same_object_as_pyyaml_gives():
    """The direct construction of libyaml's nodes keeps PyYAML's sharing: an alias is the object its anchor built."""
    text = "base: &b {a: [1, 2]}\nx: *b\nl: &l [3]\ny: [*l, *b]\n"
    for loaded in (load_yaml_text(text, "f.yml"), load_with(yamlfile._LineLoader, text)):
        assert loaded["x"] is loaded["base"] and loaded["y"][1] is loaded["base"] and loaded["y"][0] is loaded["l"]
    assert lines(load_yaml_text(text, "f.yml")) == lines(load_with(yamlfile._LineLoader, text))


@pytest.mark.parametrize("text", [
    "tool:\n  source:\n    code: SELECT * FROM t WHERE a * 2 > 1\n  x: count(*)\n",
    "a: 2024-01-02\nb: [1, 1.5, .inf, ~, yes, '7']\n3: int key\nnull: n\n",
    "a: {<<: {b: 1}, c: 2}\n",  # a merge without an alias: PyYAML's own construction
    "= : value key\nb: =\n",
])
def test_the_direct_construction_reads_as_the_pure_loader(text, monkeypatch):
    assert outcome(text) == pure_outcome(text, monkeypatch)


def test_a_date_that_is_no_date_names_the_file(tmp_path):
    from mxcp_core.errors import ConfigError
    from mxcp_core.yamlfile import load_yaml_file

    path = tmp_path / "tool.yml"
    path.write_text("mxcp: 1\ntool:\n  name: t\n  tags: [2001-02-30]\n")
    with pytest.raises(ConfigError) as raised:
        load_yaml_file(path)
    assert "tool.yml" in str(raised.value) and "day is out of range" in str(raised.value)
