"""JSON Schema `pattern` (ECMA-262 regular expressions) translated to an equivalent Python regular expression.

Python's `re` differs from ECMA-262 where it matters for validation: `$` also matches before a final newline,
`\\d`, `\\w` and `\\s` are Unicode-wide, `.` crosses `\\r`, `[]` is not the empty class, a backreference to a
group that did not take part fails instead of matching the empty string. `translate` rewrites each construct to
the Python spelling with ECMA's meaning, so `re.search(translate(p), text)` answers what a JSON Schema validator
would. Constructs Python cannot express (Unicode property escapes, variable-width look-behind) raise
`PatternError`, as does what is not valid ECMA-262.
"""
from __future__ import annotations

import functools
import re

MAX_CODE_POINT = 0x10FFFF

# ECMA-262 WhiteSpace and LineTerminator, what `\s` matches there.
_WHITESPACE = (
    (0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029),
    (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF),
)
_DIGITS = ((0x30, 0x39),)
_WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_LINE_TERMINATORS = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))
_CLASS_ESCAPES = {"d": _DIGITS, "w": _WORD, "s": _WHITESPACE}
_CONTROL_ESCAPES = {"f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_SYNTAX_CHARACTERS = set("^$\\.*+?()[]{}|/")
_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")


class PatternError(ValueError):
    """The pattern is not valid ECMA-262, or Python's `re` cannot express it."""


def _complement(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    result, start = [], 0
    for low, high in sorted(ranges):
        if low > start:
            result.append((start, low - 1))
        start = max(start, high + 1)
    if start <= MAX_CODE_POINT:
        result.append((start, MAX_CODE_POINT))
    return tuple(result)


def _char(code: int) -> str:
    """One code point as a Python pattern atom that means exactly that character, in or out of a class."""
    char = chr(code)
    if char.isascii() and char.isalnum():
        return char
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _ranges_body(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(_char(low) if low == high else f"{_char(low)}-{_char(high)}" for low, high in ranges)


def _set(ranges: tuple[tuple[int, int], ...]) -> str:
    return f"[{_ranges_body(ranges)}]" if ranges else "(?!)"


@functools.lru_cache(maxsize=512)
def translate(pattern: str) -> str:
    """The Python regular expression with the ECMA-262 meaning of `pattern` (for `re.search`)."""
    translated = _Translator(pattern).run()
    try:
        re.compile(translated)
    except re.error as exc:
        # Valid ECMA-262 that Python's engine refuses, e.g. a look-behind of variable width.
        raise PatternError(f"Python's regular expressions cannot express this pattern: {exc.msg}") from None
    return translated


def compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(translate(pattern))


class _Translator:
    def __init__(self, pattern: str) -> None:
        self.source = pattern
        self.pos = 0
        self.out: list[str] = []
        self.group_count = _count_groups(pattern)
        self.group_names: set[str] = set()
        self.start = 0  # where the construct being translated starts, for error messages
        # Capturing groups still open (their numbers; None for a non-capturing group).
        self.open_groups: list[int | None] = []
        self.groups_seen = 0
        # Whether the last emitted piece can take a quantifier (ECMA: `a**` and `^*` are errors).
        self.quantifiable = False
        self.after_quantifier = False

    def error(self, message: str) -> PatternError:
        return PatternError(f"{message} at position {self.start}")

    def run(self) -> str:
        depth = 0
        src = self.source
        while self.pos < len(src):
            char = src[self.pos]
            self.start = self.pos
            if char == "\\":
                self.escape()
            elif char == "[":
                self.emit(self.char_class(), quantifiable=True)
            elif char == "(":
                self.open_group()
                depth += 1
            elif char == ")":
                if depth == 0:
                    raise self.error("unmatched ')'")
                depth -= 1
                self.open_groups.pop()
                self.pos += 1
                self.emit(")", quantifiable=True)
            elif char in "*+?":
                self.quantifier(char)
            elif char == "{":
                found = _QUANTIFIER.match(src, self.pos)
                if found:
                    self.quantifier(found.group(0), length=len(found.group(0)))
                else:
                    # Annex B: a brace that does not start a quantifier is a literal character.
                    self.pos += 1
                    self.emit(r"\{", quantifiable=True)
            elif char == "|":
                self.pos += 1
                self.emit("|", quantifiable=False)
            elif char == "^":
                self.pos += 1
                self.emit(r"\A", quantifiable=False)
            elif char == "$":
                # End of input only: Python's `$` also matches before a trailing newline.
                self.pos += 1
                self.emit(r"\Z", quantifiable=False)
            elif char == ".":
                self.pos += 1
                self.emit(_set(_complement(_LINE_TERMINATORS)), quantifiable=True)
            else:
                self.pos += 1
                self.emit(_char(ord(char)), quantifiable=True)
        if depth:
            raise self.error("missing ')'")
        return "".join(self.out)

    def emit(self, text: str, *, quantifiable: bool) -> None:
        self.out.append(text)
        self.quantifiable = quantifiable
        self.after_quantifier = False

    def quantifier(self, text: str, length: int = 1) -> None:
        if not self.quantifiable or self.after_quantifier:
            raise self.error(f"nothing to repeat before '{text}'")
        if text.startswith("{"):
            found = _QUANTIFIER.fullmatch(text)
            assert found is not None
            low, high = found.group(1), found.group(3)
            if high and int(high) < int(low):
                raise self.error(f"numbers out of order in quantifier {text}")
        self.pos += length
        if self.source.startswith("?", self.pos):  # lazy
            text += "?"
            self.pos += 1
        self.out.append(text)
        self.after_quantifier = True

    def open_group(self) -> None:
        src, pos = self.source, self.pos
        for prefix, python, can_repeat in (("(?:", "(?:", True), ("(?=", "(?=", True), ("(?!", "(?!", True),
                                           ("(?<=", "(?<=", False), ("(?<!", "(?<!", False)):
            if src.startswith(prefix, pos):
                self.open_groups.append(None)
                self.pos += len(prefix)
                self.emit(python, quantifiable=False)
                return
        if src.startswith("(?<", pos):
            end = src.find(">", pos)
            name = src[pos + 3:end] if end != -1 else ""
            if not name.isidentifier():
                raise self.error("invalid group name")
            if name in self.group_names:
                raise self.error(f"duplicate group name '{name}'")
            self.group_names.add(name)
            self.groups_seen += 1
            self.open_groups.append(self.groups_seen)
            self.pos = end + 1
            self.emit(f"(?P<{name}>", quantifiable=False)
            return
        if src.startswith("(?", pos):
            raise self.error("invalid group: '(?' must be followed by ':', '=', '!', '<=', '<!' or '<name>'")
        self.groups_seen += 1
        self.open_groups.append(self.groups_seen)
        self.pos += 1
        self.emit("(", quantifiable=False)

    def escape(self) -> None:
        src = self.source
        if self.pos + 1 >= len(src):
            raise self.error("pattern ends with a backslash")
        letter = src[self.pos + 1]
        if letter in "bB":
            self.pos += 2
            # Word boundaries between ASCII word characters only.
            self.emit(rf"(?a:\{letter})", quantifiable=False)
            return
        if letter in "dwsDWS":
            self.pos += 2
            ranges = _CLASS_ESCAPES[letter.lower()]
            self.emit(_set(_complement(ranges) if letter.isupper() else ranges), quantifiable=True)
            return
        if letter.isdigit() and letter != "0":
            end = self.pos + 1
            while end < len(src) and src[end].isdigit():
                end += 1
            number = int(src[self.pos + 1:end])
            if number > self.group_count:
                raise self.error(f"backreference \\{number} to a group that does not exist")
            self.pos = end
            self.emit(self.backreference(number, str(number)), quantifiable=True)
            return
        if letter == "k":
            found = re.compile(r"\\k<([^>]*)>").match(src, self.pos)
            if not found or not found.group(1).isidentifier():
                raise self.error("invalid named backreference")
            name = found.group(1)
            if name not in _group_names(src):
                raise self.error(f"backreference to unknown group '{name}'")
            self.pos = found.end()
            number = _capturing_groups(src).index(name) + 1
            self.emit(self.backreference(number, name), quantifiable=True)
            return
        code = self.character_escape()
        self.emit(_char(code), quantifiable=True)

    def backreference(self, number: int, reference: str) -> str:
        if number in self.open_groups or number > self.groups_seen:
            # Inside the group it names, or before it: ECMA has no capture there yet (each repetition of a
            # quantified group starts afresh), so the reference matches the empty string.
            return "(?:)"
        # ECMA: a group that has not matched matches the empty string; Python's plain backreference would fail.
        return f"(?({reference}){'(?P=' + reference + ')' if not reference.isdigit() else chr(92) + reference})"

    def character_escape(self, *, in_class: bool = False) -> int:
        """The code point of a character escape at `pos` (a backslash), advancing past it."""
        src = self.source
        letter = src[self.pos + 1]
        self.pos += 2
        if letter in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[letter]
        if letter == "b" and in_class:
            return 0x08
        if letter == "0" and not (self.pos < len(src) and src[self.pos].isdigit()):
            return 0
        if letter == "c" and self.pos < len(src) and src[self.pos].isascii() and src[self.pos].isalpha():
            self.pos += 1
            return ord(src[self.pos - 1]) % 32
        if letter == "x":
            return self.hex_digits(2)
        if letter == "u":
            if src.startswith("{", self.pos):
                end = src.find("}", self.pos)
                digits = src[self.pos + 1:end] if end != -1 else ""
                if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise self.error("invalid \\u{...} escape")
                self.pos = end + 1
                code = int(digits, 16)
                if code > MAX_CODE_POINT:
                    raise self.error("\\u{...} escape beyond U+10FFFF")
                return code
            return self.hex_digits(4)
        if letter in "pP":
            raise self.error(f"Python's regular expressions cannot express Unicode property escapes (\\{letter})")
        if letter in _SYNTAX_CHARACTERS or letter == "-" or not (letter.isascii() and letter.isalnum()):
            return ord(letter)  # identity escape
        # `\A`, `\Z`, `\a` ... mean something else (or nothing) in ECMA-262; refusing beats guessing.
        raise self.error(f"\\{letter} is not an ECMA-262 escape")

    def hex_digits(self, count: int) -> int:
        digits = self.source[self.pos:self.pos + count]
        if len(digits) != count or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise self.error(f"expected {count} hex digits")
        self.pos += count
        return int(digits, 16)

    def char_class(self) -> str:
        """`[...]` as a Python class whose every member is spelled out (no Python set-operation surprises)."""
        src = self.source
        self.pos += 1
        negated = src.startswith("^", self.pos)
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        while True:
            if self.pos >= len(src):
                raise self.error("missing ']'")
            if src[self.pos] == "]":
                self.pos += 1
                break
            self.start = self.pos
            first = self.class_atom()
            if (
                src.startswith("-", self.pos)
                and self.pos + 1 < len(src)
                and src[self.pos + 1] != "]"
            ):
                self.pos += 1
                second = self.class_atom()
                if isinstance(first, tuple) or isinstance(second, tuple):
                    raise self.error("a character class escape cannot bound a range")
                if second < first:
                    raise self.error("range out of order in character class")
                ranges.append((first, second))
            elif isinstance(first, tuple):
                ranges.extend(first)
            else:
                ranges.append((first, first))
        merged = _merge(ranges)
        if negated:
            merged = _complement(merged)
        return _set(merged)

    def class_atom(self) -> int | tuple[tuple[int, int], ...]:
        src = self.source
        char = src[self.pos]
        if char != "\\":
            self.pos += 1
            return ord(char)
        if self.pos + 1 >= len(src):
            raise self.error("pattern ends with a backslash")
        letter = src[self.pos + 1]
        if letter in "dwsDWS":
            self.pos += 2
            ranges = _CLASS_ESCAPES[letter.lower()]
            return _complement(ranges) if letter.isupper() else ranges
        if letter.isdigit() and letter != "0":
            raise self.error(f"\\{letter} is not allowed in a character class")
        return self.character_escape(in_class=True)


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def _capturing_groups(pattern: str) -> list[str | None]:
    """Each capturing group in order: its name, or None. Skips escapes and character classes."""
    groups: list[str | None] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            if not pattern.startswith("(?", i):
                groups.append(None)
            elif pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
                end = pattern.find(">", i)
                groups.append(pattern[i + 3:end] if end != -1 else "")
        i += 1
    return groups


def _count_groups(pattern: str) -> int:
    return len(_capturing_groups(pattern))


def _group_names(pattern: str) -> set[str]:
    return {name for name in _capturing_groups(pattern) if name}


__all__ = ["PatternError", "compile_pattern", "translate"]
