"""YAML loading that remembers line numbers, so errors can point at the line of a bad key.

Project files are read defensively: only regular files (a FIFO, a device or a folder is refused before it is
opened, so nothing blocks), strictly as UTF-8 (a bad byte is one error naming the file and offset), and YAML
aliases may expand to at most `MAX_ALIAS_EXPANSION` nodes (a "billion laughs" file is refused while it is
composed, before anything walks the expanded structure).

Speed: libyaml (C) scans, parses and composes when PyYAML has it, with the same resolver and constructors, so the
values and lines are those of the pure-Python loader; a file libyaml refuses is read again by the pure-Python
loader, so errors (and anything libyaml alone would refuse) are exactly the pure loader's, and the few constructs
where libyaml is more lenient (`_PURE_ONLY`) are left to the pure loader from the start.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

try:  # PyYAML built with libyaml (the wheels are): scanning and parsing in C, several times faster
    from yaml.cyaml import CParser as _CParser
except ImportError:  # pragma: no cover - a PyYAML without libyaml: the pure-Python loader alone
    _CParser = None


class LineDict(dict):
    """A mapping loaded from YAML; `line_of(key)` gives the 1-based line of a key."""

    __slots__ = ("line", "key_lines")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line: int | None = None
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A sequence loaded from YAML; `line_of(index)` gives the 1-based line of an item."""

    __slots__ = ("line", "item_lines")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line: int | None = None
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int | None:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


# Nodes that aliases may add to one document, all aliases together (an alias adds the whole node it names,
# aliases inside it included). Real configuration stays far below; an alias bomb passes it within a few levels.
MAX_ALIAS_EXPANSION = 100_000


class _AliasLimit:
    """Composer part shared by both loaders: counts what aliases expand to, and refuses a document past the limit."""

    _alias_nodes: int  # nodes added by aliases so far in this document
    _weights: dict[int, int]  # id(node) -> nodes in its full expansion, once composed
    _composed: int  # nodes in the expansion of everything composed so far

    def compose_document(self) -> Any:
        self._alias_nodes, self._weights, self._composed = 0, {}, 0
        return super().compose_document()  # type: ignore[misc]

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):  # type: ignore[attr-defined]
            event = self.peek_event()  # type: ignore[attr-defined]
            node = super().compose_node(parent, index)  # type: ignore[misc]
            weight = self._weights.get(id(node))
            if weight is None:
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} refers to a node that contains it (recursive alias)",
                    event.start_mark,
                )
            self._alias_nodes += weight
            self._composed += weight
            if self._alias_nodes > MAX_ALIAS_EXPANSION:
                raise yaml.composer.ComposerError(
                    None, None,
                    f"aliases expand to more than {MAX_ALIAS_EXPANSION} nodes (at alias *{event.anchor}); "
                    "refusing what looks like an alias bomb",
                    event.start_mark,
                )
            return node
        before = self._composed
        self._composed += 1
        node = super().compose_node(parent, index)  # type: ignore[misc]
        self._weights[id(node)] = self._composed - before
        return node


class _LineLoader(_AliasLimit, yaml.SafeLoader):
    """PyYAML's pure-Python SafeLoader with the alias limit: the reference, and what reports every error."""


# Deeper documents go to the pure-Python loader, whose composer runs out of stack first ("nested too deeply") at
# a depth that libyaml's composer, in C, would pass.
_FAST_DEPTH = 100


def _alias_check(root: Any) -> None:
    """What `_AliasLimit` refuses while composing, found on a composed node graph (where an alias is the node it
    names, met again): a recursive alias, or aliases adding more than `MAX_ALIAS_EXPANSION` nodes in all; and a
    document nested deeper than `_FAST_DEPTH`.

    The graph holds each node once, so this never walks an expansion. Any of these raises, and the pure-Python
    loader then reads the document again: it loads it, or words the error.
    """
    weights: dict[int, int] = {}  # id(node) -> nodes in its full expansion
    open_nodes: set[int] = set()
    added = 0

    def weigh(node: Any, depth: int) -> int:
        nonlocal added
        if depth > _FAST_DEPTH:
            raise yaml.composer.ComposerError(None, None, "nested deeply", node.start_mark)
        open_nodes.add(id(node))
        total = 1
        if not isinstance(node, yaml.ScalarNode):
            for item in node.value:
                for child in item if isinstance(item, tuple) else (item,):
                    weight = weights.get(id(child))
                    if weight is None:
                        if id(child) in open_nodes:
                            raise yaml.composer.ComposerError(None, None, "recursive alias", child.start_mark)
                        weight = weigh(child, depth + 1)
                    else:  # met before: an alias
                        added += weight
                    total += weight
        open_nodes.discard(id(node))
        weights[id(node)] = total
        return total

    weigh(root, 1)
    if added > MAX_ALIAS_EXPANSION:
        raise yaml.composer.ComposerError(None, None, "aliases expand too far", root.start_mark)


if _CParser is not None:

    class _FastLineLoader(_CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml (C) scans, parses and composes; the constructors are those of `_LineLoader`.

        libyaml's composer resolves tags through the same Python resolver and gives nodes the same line marks,
        so the values and lines are those of `_LineLoader`. It is only used when it succeeds: anything it (or
        the alias check) refuses is read again by `_LineLoader`, whose messages are the ones users see.
        """

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

        def get_single_node(self) -> Any:
            node = _CParser.get_single_node(self)
            if node is not None:
                _alias_check(node)
            return node

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            """PyYAML's Resolver.resolve (the composer calls it for every node), in fewer steps for a scalar."""
            if kind is yaml.ScalarNode:
                resolvers = self.yaml_implicit_resolvers
                if self.yaml_path_resolvers or None in resolvers:
                    return yaml.resolver.Resolver.resolve(self, kind, value, implicit)
                if implicit[0]:
                    for tag, regexp in resolvers.get(value[:1], ()):
                        if regexp.match(value):
                            return tag
                return self.DEFAULT_SCALAR_TAG
            return yaml.resolver.Resolver.resolve(self, kind, value, implicit)


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark
            ) from exc
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_STR_TAG = "tag:yaml.org,2002:str"
_MAPPING_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG
_SEQUENCE_TAG = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
# The scalar constructors of SafeConstructor that build a value at once (no generator, no other node).
_SCALAR_CONSTRUCTORS = {
    "tag:yaml.org,2002:null": yaml.constructor.SafeConstructor.construct_yaml_null,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "tag:yaml.org,2002:timestamp": yaml.constructor.SafeConstructor.construct_yaml_timestamp,
}


class _Generic(Exception):
    """The document needs PyYAML's own construction (a merge key, a `=` key, a mapping as a key, another tag)."""


def _build(loader: Any, node: Any, depth: int, shared: dict[int, Any] | None) -> Any:
    """The value of a composed node, as `construct_document` with `_construct_mapping` and `_construct_sequence`
    builds it, without PyYAML's generic machinery (twice as fast). `shared`: the containers built so far by node,
    when aliases may name a node twice (an alias gives the same object, as PyYAML's constructor does)."""
    if depth > _FAST_DEPTH:  # as `_alias_check`: the pure-Python loader decides
        raise yaml.composer.ComposerError(None, None, "nested deeply", node.start_mark)
    kind = type(node)
    tag = node.tag
    if kind is yaml.ScalarNode:
        if tag == _STR_TAG:
            return node.value
        construct = _SCALAR_CONSTRUCTORS.get(tag)
        if construct is None:
            raise _Generic
        return construct(loader, node)
    if shared is not None and id(node) in shared:
        return shared[id(node)]
    depth += 1
    if kind is yaml.MappingNode and tag == _MAPPING_TAG:
        mapping = LineDict()
        mapping.line = node.start_mark.line + 1
        if shared is not None:
            shared[id(node)] = mapping
        key_lines = mapping.key_lines
        for key_node, value_node in node.value:
            if type(key_node) is not yaml.ScalarNode:
                raise _Generic
            key_tag = key_node.tag
            if key_tag == _STR_TAG:
                key = key_node.value
            else:
                construct = _SCALAR_CONSTRUCTORS.get(key_tag)
                if construct is None:
                    raise _Generic
                key = construct(loader, key_node)
            if depth > _FAST_DEPTH:
                raise yaml.composer.ComposerError(None, None, "nested deeply", key_node.start_mark)
            if key in mapping:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            mapping[key] = _build(loader, value_node, depth, shared)
            key_lines[key] = key_node.start_mark.line + 1
        return mapping
    if kind is yaml.SequenceNode and tag == _SEQUENCE_TAG:
        sequence = LineList()
        sequence.line = node.start_mark.line + 1
        if shared is not None:
            shared[id(node)] = sequence
        sequence.extend([_build(loader, child, depth, shared) for child in node.value])
        sequence.item_lines = [child.start_mark.line + 1 for child in node.value]
        return sequence
    raise _Generic


def _fast_load(text: str) -> Any:
    """libyaml's nodes built into values; raises a YAMLError (or RecursionError) for the pure loader to decide."""
    loader = _FastLineLoader(text)
    try:
        node = _CParser.get_single_node(loader)
        if node is None:
            return None
        # An alias is `*` and an anchor character (libyaml refuses any other `*name`): without one, no node is met
        # twice, nothing expands or recurs (a `SELECT *` or `a * b` in a text is no alias).
        aliases = _MAYBE_ALIAS.search(text) is not None
        if aliases:
            _alias_check(node)
        try:
            return _build(loader, node, 1, {} if aliases else None)
        except _Generic:
            if not aliases:
                _alias_check(node)  # its depth limit, which PyYAML's constructor has not
            return loader.construct_document(node)
    finally:
        loader.dispose()


_LOADERS: tuple[Any, ...] = (_LineLoader,) if _CParser is None else (_FastLineLoader, _LineLoader)
for _loader in _LOADERS:
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


# Texts on which libyaml and the pure-Python loader disagree (found by differential fuzzing): a tab; a `?` in a text
# with flow collections; a block scalar header running into a comment; a tag; a directive; a byte order mark past
# the start. libyaml accepts some of them where the pure loader refuses, or reads a bare `!` as '' instead of None:
# these go to the pure loader.
_PURE_ONLY = re.compile(
    r"\t|\A(?=.*\?)(?=.*[\[{])|[|>][-+0-9]*#|(?:^|[\s\[{,])!|^%|(?!\A)\ufeff", re.MULTILINE | re.DOTALL
)


_MAYBE_ALIAS = re.compile(r"\*[\w-]")
_BLOCK_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")
_BARE_TAG = re.compile(r"(?:^|[\s\[{,])!", re.MULTILINE)
_DIRECTIVE = re.compile(r"^%", re.MULTILINE)


def _pure_only(text: str) -> bool:
    """`_PURE_ONLY.search(text)`, each alternative searched only when its one telling character is in the text."""
    return (
        "\t" in text
        or ("?" in text and ("[" in text or "{" in text))
        or ("#" in text and _BLOCK_HEADER_COMMENT.search(text) is not None)
        or ("!" in text and _BARE_TAG.search(text) is not None)
        or ("%" in text and _DIRECTIVE.search(text) is not None)
        or text.find("\ufeff", 1) != -1
    )


def load_yaml_text(text: str, file: str | Path) -> Any:
    """Parse YAML text; syntax errors become ConfigError with the file and line."""
    if _CParser is not None and not _pure_only(text):
        try:
            return _fast_load(text)
        except (yaml.YAMLError, RecursionError, ValueError, OverflowError):
            pass  # read again below: libyaml words its errors differently, and these messages are the documented ones
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=file) from None
    except (ValueError, OverflowError) as exc:  # a value that looks like a date but is none (2001-02-30)
        raise ConfigError(f"invalid YAML value: {exc}", file=file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None


def load_yaml_file(path: str | Path, *, shown: str | Path | None = None) -> Any:
    """Read (a regular UTF-8 file only) and parse a YAML file with line information; errors name `shown`."""
    return load_yaml_text(read_text_file(path, shown=shown), shown if shown is not None else path)


_KINDS = (
    (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def read_text_file(path: str | Path, *, shown: str | Path | None = None, what: str | None = None) -> str:
    """The content of a regular file as UTF-8 text; anything else is one ConfigError naming the file.

    A FIFO, device, socket or folder is refused after `os.stat`, before it is opened, so reading never blocks;
    the file is then opened non-blocking and checked again (it may have been swapped meanwhile). Undecodable
    content is reported by the offset of its first bad byte, never by content. `shown` is the name errors use
    (default: `path`); `what` prefixes the message ("source file", "file:// reference"...).
    """
    path = Path(path)
    shown = shown if shown is not None else path
    prefix = f"{what}: " if what else ""
    if str(path) == os.devnull:
        return ""  # reads as empty and never blocks: `MXCP_CONFIG=/dev/null` means "no user config"

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{prefix}{message}", file=shown)

    try:
        kind = _not_regular(os.stat(path).st_mode)
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror}") from None
    if kind is not None:
        raise fail(f"not a regular file ({kind})")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror}") from None
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise fail(f"not a regular file ({kind})")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read()
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def line_of(container: Any, key: Any) -> int | None:
    """Line of `key` inside a loaded mapping or sequence, if known."""
    finder = getattr(container, "line_of", None)
    return finder(key) if finder else None
