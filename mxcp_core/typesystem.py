"""The endpoint type system: parse YAML type declarations once, compile them into fast validators.

Three layers, each used at a different time:

* parsing (`parse_type`, `parse_parameters`): YAML mappings -> frozen `TypeSpec` records, with errors that
  name the file, line and key path. Runs once when an endpoint loads.
* compiling (`CompiledParameters`, `CompiledReturn`): a `TypeSpec` -> a tree of closures. Each closure knows
  only the keywords its spec declared, so a call pays for the rules it has and nothing else.
* rendering (`to_json_schema`, `to_jsonable`): what MCP clients see.

Validation messages never contain the values being validated, so a `sensitive` value cannot leak
through an error; `redact` hides sensitive values for logs and audit records.
"""
from __future__ import annotations

import base64
import copy
import datetime as dt
import decimal
import enum
import math
import numbers
import re
import types
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .ecma_regex import PatternError, compile_pattern
from .ecma_regex import translate as translate_pattern
from .errors import ConfigError, ValidationError, suggest
from .redaction import MASK as REDACTED
from .yamlfile import line_of

__all__ = [
    "NO_DEFAULT",
    "REDACTED",
    "TYPE_NAMES",
    "FORMAT_NAMES",
    "TypeSpec",
    "ParameterSpec",
    "parse_type",
    "parse_parameters",
    "CompiledParameters",
    "CompiledReturn",
    "to_json_schema",
    "to_jsonable",
]


class _NoDefault(enum.Enum):
    """Type of `NO_DEFAULT`; an enum member so it survives copy/pickle as the same object."""

    NO_DEFAULT = "NO_DEFAULT"

    def __repr__(self) -> str:
        return "NO_DEFAULT"

    def __bool__(self) -> bool:
        return False


NO_DEFAULT = _NoDefault.NO_DEFAULT
"""Sentinel: no default was declared (`None` is a real default: `default: null`)."""


TYPE_NAMES = ("string", "number", "integer", "boolean", "array", "object")
FORMAT_NAMES = ("email", "uri", "date", "time", "date-time", "duration", "timestamp")

PARAMETER_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------


def _optional_tuple(value: Iterable[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    # A read-only view of a private copy: TypeSpec is frozen, its properties should be too.
    return None if value is None else types.MappingProxyType(dict(value))


@attrs.frozen
class TypeSpec:
    """One declared type. Field names are snake_case; the YAML keys are the JSON Schema spellings."""

    type: str | None = attrs.field(validator=attrs.validators.optional(attrs.validators.in_(TYPE_NAMES)))
    format: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(FORMAT_NAMES))
    )
    description: str | None = None
    default: Any = NO_DEFAULT
    examples: tuple[Any, ...] = attrs.field(default=(), converter=tuple)
    enum: tuple[Any, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    sensitive: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    exclusive_minimum: int | float | None = None
    exclusive_maximum: int | float | None = None
    multiple_of: int | float | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_items: bool = False
    items: TypeSpec | None = None
    properties: Mapping[str, TypeSpec] | None = attrs.field(default=None, converter=_frozen_mapping)
    required: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    additional_properties: bool | None = None

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT


@attrs.frozen
class ParameterSpec:
    """A named endpoint parameter; its description lives in `type.description`."""

    name: str
    type: TypeSpec

    @property
    def has_default(self) -> bool:
        return self.type.default is not NO_DEFAULT

    @property
    def required(self) -> bool:
        return self.type.default is NO_DEFAULT

    @property
    def description(self) -> str | None:
        return self.type.description


# YAML keyword -> TypeSpec field. The order is also the order of keys in rendered JSON Schemas.
_KEYWORD_FIELDS: dict[str, str] = {
    "type": "type",
    "format": "format",
    "description": "description",
    "enum": "enum",
    "default": "default",
    "examples": "examples",
    "sensitive": "sensitive",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "multipleOf": "multiple_of",
    "minItems": "min_items",
    "maxItems": "max_items",
    "uniqueItems": "unique_items",
    "items": "items",
    "properties": "properties",
    "required": "required",
    "additionalProperties": "additional_properties",
}

_STRING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern", "format"})
_NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
_ARRAY_KEYWORDS = frozenset({"minItems", "maxItems", "uniqueItems", "items"})
_OBJECT_KEYWORDS = frozenset({"properties", "required", "additionalProperties"})

# Keywords that only make sense for one family of types; the rest (description, enum...) apply to all.
_KEYWORDS_BY_TYPE: dict[str, frozenset[str]] = {
    "string": _STRING_KEYWORDS,
    "number": _NUMBER_KEYWORDS,
    "integer": _NUMBER_KEYWORDS,
    "boolean": frozenset(),
    "array": _ARRAY_KEYWORDS,
    "object": _OBJECT_KEYWORDS,
}
_TYPED_KEYWORDS = _STRING_KEYWORDS | _NUMBER_KEYWORDS | _ARRAY_KEYWORDS | _OBJECT_KEYWORDS

_TEMPORAL_FORMATS = frozenset({"date", "time", "date-time", "timestamp", "duration"})


# ---------------------------------------------------------------------------------------------------------
# Small helpers shared by parsing and validation
# ---------------------------------------------------------------------------------------------------------


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type_name(value: Any) -> str:
    """The JSON name of a value's type, for 'expected X, got Y' (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_DURATION_RE = re.compile(
    r"(?P<sign>[-+])?P"
    r"(?:(?P<years>\d+(?:[.,]\d+)?)Y)?"
    r"(?:(?P<months>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<weeks>\d+(?:[.,]\d+)?)W)?"
    r"(?:(?P<days>\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?=\d)"  # a 'T' must be followed by at least one time component
    r"(?:(?P<hours>\d+(?:[.,]\d+)?)H)?"
    r"(?:(?P<minutes>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?"
    r")?",
    re.ASCII,
)


def parse_duration(text: str) -> dt.timedelta:
    """ISO 8601 duration (`P1DT2H`, `PT30M`, `P2W`, `-PT1.5S`) -> timedelta.

    Years and months have no fixed length, so they are rejected unless zero.
    """
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid ISO 8601 duration: {text!r}")
    parts = {k: float(v.replace(",", ".")) for k, v in match.groupdict().items() if v and k != "sign"}
    if not parts:
        raise ValueError(f"invalid ISO 8601 duration: {text!r}")
    if parts.pop("years", 0) or parts.pop("months", 0):
        raise ValueError("durations with years or months cannot be converted to a fixed length")
    result = dt.timedelta(**parts)
    return -result if match.group("sign") == "-" else result


def format_duration(value: dt.timedelta) -> str:
    """timedelta -> ISO 8601 duration (`P1DT2H`, `PT0.5S`, `-PT30M`)."""
    total_us = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if total_us < 0 else ""
    total_us = abs(total_us)
    days, rest_us = divmod(total_us, 86_400_000_000)
    hours, rest_us = divmod(rest_us, 3_600_000_000)
    minutes, rest_us = divmod(rest_us, 60_000_000)
    seconds, micros = divmod(rest_us, 1_000_000)
    date_part = f"{days}D" if days else ""
    time_part = ""
    if hours:
        time_part += f"{hours}H"
    if minutes:
        time_part += f"{minutes}M"
    if seconds or micros:
        time_part += f"{seconds}.{micros:06d}".rstrip("0") + "S" if micros else f"{seconds}S"
    if not date_part and not time_part:
        return "PT0S"
    return f"{sign}P{date_part}" + (f"T{time_part}" if time_part else "")


def _parse_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        raise ValueError("a date-time is not a date")
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)


def _parse_time(value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    return dt.time.fromisoformat(value)


def _parse_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):  # a bare date means midnight, as "2024-01-01" does
        return dt.datetime(value.year, value.month, value.day)
    return dt.datetime.fromisoformat(value)


def _parse_duration_value(value: Any) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    return parse_duration(value)


# format -> (parser accepting str or the native object, the native types accepted in place of a string)
_TEMPORAL_PARSERS: dict[str, tuple[Callable[[Any], Any], tuple[type, ...]]] = {
    "date": (_parse_date, (dt.date,)),
    "time": (_parse_time, (dt.time,)),
    "date-time": (_parse_datetime, (dt.date,)),
    "timestamp": (_parse_datetime, (dt.date,)),
    "duration": (_parse_duration_value, (dt.timedelta,)),
}

# Deliberately loose: a plausible address/URI, not RFC compliance.
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_TEXT_FORMAT_RES = {"email": _EMAIL_RE, "uri": _URI_RE}


def _json_key(value: Any) -> Any:
    """A hashable key with JSON equality: 1 == 1.0, but true != 1; for enum and uniqueItems."""
    cls = type(value)
    if cls is str or value is None:
        return value
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (numbers.Number, decimal.Decimal)):
        return value
    if isinstance(value, Mapping):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_json_key(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return ("repr", repr(value))
    return value


# ---------------------------------------------------------------------------------------------------------
# Parsing YAML into TypeSpec
# ---------------------------------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Parser:
    """Carries the file name through the recursive descent so errors can point at it."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def fail(self, message: str, container: Any, key: Any, key_path: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=line_of(container, key), key_path=key_path)

    # -- one type -------------------------------------------------------------------------------------

    def type_spec(
        self, raw: Any, container: Any, key: Any, path: str, *, extra_keys: frozenset[str] = frozenset()
    ) -> TypeSpec:
        if not isinstance(raw, Mapping):
            raise self.fail(f"expected a mapping, got {_short_repr(raw)}", container, key, path)
        allowed = [*_KEYWORD_FIELDS, *sorted(extra_keys)]
        for name in raw:
            if name not in allowed:
                hint = suggest(str(name), allowed)
                raise self.fail(f"unknown keyword '{name}'{hint}", raw, name, _join(path, str(name)))

        type_name = self.type_name(raw, path)
        is_parameter = "name" in extra_keys
        applicable = _KEYWORDS_BY_TYPE.get(type_name) if type_name else None
        if applicable is not None:
            for name in raw:
                if name == "required" and is_parameter and isinstance(raw[name], bool):
                    raise self.fail(
                        "'required' lists an object's required properties; "
                        "a parameter is required unless it has a default",
                        raw, name, _join(path, name),
                    )
                if name in _TYPED_KEYWORDS and name not in applicable:
                    raise self.fail(
                        f"'{name}' does not apply to type '{type_name}'", raw, name, _join(path, name)
                    )

        fields: dict[str, Any] = {"type": type_name}
        for name, value in raw.items():
            if name in ("type", "name") or name not in _KEYWORD_FIELDS:
                continue
            fields[_KEYWORD_FIELDS[name]] = self.keyword(name, value, raw, path, type_name)
        self.check_bounds(fields, raw, path)
        if "default" in fields or "enum" in fields or "examples" in fields:
            self.normalise_yaml_dates(fields)
        spec = TypeSpec(**fields)
        self.check_enum(spec, raw, path)
        self.check_default(spec, raw, path)
        return spec

    def type_name(self, raw: Mapping[str, Any], path: str) -> str | None:
        if "type" not in raw:
            return None
        value = raw["type"]
        if value not in TYPE_NAMES or not isinstance(value, str):
            hint = suggest(value, TYPE_NAMES) if isinstance(value, str) else ""
            raise self.fail(
                f"unknown type {_short_repr(value)}{hint}; expected one of {', '.join(TYPE_NAMES)}",
                raw, "type", _join(path, "type"),
            )
        return value

    # -- keyword values -------------------------------------------------------------------------------

    def keyword(self, name: str, value: Any, raw: Any, path: str, type_name: str | None) -> Any:
        key_path = _join(path, name)

        def wrong(expected: str) -> ConfigError:
            return self.fail(f"expected {expected}, got {_short_repr(value)}", raw, name, key_path)

        if name == "format":
            if not isinstance(value, str) or value not in FORMAT_NAMES:
                hint = suggest(value, FORMAT_NAMES) if isinstance(value, str) else ""
                raise self.fail(
                    f"unknown format {_short_repr(value)}{hint}; expected one of {', '.join(FORMAT_NAMES)}",
                    raw, name, key_path,
                )
            return value
        if name == "description":
            if not isinstance(value, str):
                raise wrong("a string")
            return value
        if name == "default":
            return value
        if name == "examples":
            if not isinstance(value, (list, tuple)):
                raise wrong("a list")
            return tuple(value)
        if name == "enum":
            if not isinstance(value, (list, tuple)) or not value:
                raise wrong("a non-empty list")
            return tuple(value)
        if name in ("sensitive", "uniqueItems", "additionalProperties"):
            if not isinstance(value, bool):
                raise wrong("a boolean")
            return value
        if name in ("minLength", "maxLength", "minItems", "maxItems"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise wrong("a non-negative integer")
            return value
        if name in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if not _is_number(value) or not math.isfinite(value):
                raise wrong("a number")
            if type_name == "integer" and isinstance(value, float) and value.is_integer():
                value = int(value)
            return value
        if name == "multipleOf":
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise wrong("a positive number")
            return value
        if name == "pattern":
            if not isinstance(value, str):
                raise wrong("a string")
            try:
                translate_pattern(value)  # JSON Schema patterns are ECMA-262: refused now, not at the first call
            except PatternError as exc:
                subject = f"parameter '{raw['name']}': " if isinstance(raw.get("name"), str) else ""
                raise self.fail(f"{subject}invalid regular expression in pattern {value!r}: {exc}",
                                raw, name, key_path) from None
            return value
        if name == "items":
            return self.type_spec(value, raw, name, key_path)
        if name == "properties":
            if not isinstance(value, Mapping):
                raise wrong("a mapping of property names to types")
            properties = {}
            for prop_name, prop_raw in value.items():
                if not isinstance(prop_name, str):
                    raise self.fail(
                        f"property names must be strings, got {_short_repr(prop_name)}",
                        value, prop_name, key_path,
                    )
                properties[prop_name] = self.type_spec(prop_raw, value, prop_name, _join(key_path, prop_name))
            return properties
        if name == "required":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise wrong("a list of property names")
            return tuple(value)
        raise AssertionError(f"keyword {name} has no parser")  # pragma: no cover - table and code agree

    def check_bounds(self, fields: dict[str, Any], raw: Any, path: str) -> None:
        """Contradictory bounds make a type nobody can satisfy: almost surely a typo."""
        for low, high, low_key, high_key in (
            ("min_length", "max_length", "minLength", "maxLength"),
            ("min_items", "max_items", "minItems", "maxItems"),
            ("minimum", "maximum", "minimum", "maximum"),
        ):
            if fields.get(low) is not None and fields.get(high) is not None and fields[low] > fields[high]:
                raise self.fail(
                    f"{high_key} ({fields[high]}) is smaller than {low_key} ({fields[low]})",
                    raw, high_key, _join(path, high_key),
                )
        properties, required = fields.get("properties"), fields.get("required")
        if properties is not None and required:
            for index, name in enumerate(required):
                if name not in properties:
                    hint = suggest(name, properties)
                    raise self.fail(
                        f"required property '{name}' is not declared in properties{hint}",
                        raw, "required", f"{_join(path, 'required')}[{index}]",
                    )

    @staticmethod
    def normalise_yaml_dates(fields: dict[str, Any]) -> None:
        # YAML turns an unquoted 2024-01-01 into a date; for a plain string type the user meant the text.
        if fields.get("type") != "string" or fields.get("format") in _TEMPORAL_FORMATS:
            return

        def as_text(value: Any) -> Any:
            return value.isoformat() if isinstance(value, (dt.date, dt.time)) else value

        if "default" in fields:
            fields["default"] = as_text(fields["default"])
        for name in ("enum", "examples"):
            if fields.get(name) is not None:
                fields[name] = tuple(as_text(v) for v in fields[name])

    def check_enum(self, spec: TypeSpec, raw: Any, path: str) -> None:
        if spec.enum is None:
            return
        check = _compile(attrs.evolve(spec, enum=None, default=NO_DEFAULT), convert=True)
        enum_raw = raw.get("enum")
        for index, member in enumerate(spec.enum):
            try:
                check(member)
            except _Invalid as exc:
                raise self.fail(
                    f"enum value {index} is not valid for the type: {exc.describe()}",
                    enum_raw, index, f"{_join(path, 'enum')}[{index}]",
                ) from None

    def check_default(self, spec: TypeSpec, raw: Any, path: str) -> None:
        if spec.default is NO_DEFAULT or spec.default is None:  # `default: null` = optional, no value
            return
        try:
            _compile(spec, convert=True)(spec.default)
        except _Invalid as exc:
            raise self.fail(
                f"default is not valid for the type: {exc.describe()}", raw, "default", _join(path, "default")
            ) from None

    # -- parameters -----------------------------------------------------------------------------------

    def parameters(self, raw: Any, path: str) -> tuple[ParameterSpec, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(
                f"expected a list of parameters, got {_short_repr(raw)}",
                file=self.file, line=getattr(raw, "line", None), key_path=path,
            )
        result: list[ParameterSpec] = []
        first_seen: dict[str, int] = {}
        for index, item in enumerate(raw):
            item_path = f"{path}[{index}]"
            if not isinstance(item, Mapping):
                raise self.fail(f"expected a mapping, got {_short_repr(item)}", raw, index, item_path)
            for required_key in ("name", "type"):
                if required_key not in item:
                    raise self.fail(
                        f"parameter is missing '{required_key}'", item, required_key, item_path
                    )
            name = item["name"]
            name_path = _join(item_path, "name")
            if not isinstance(name, str):
                raise self.fail(f"expected a string, got {_short_repr(name)}", item, "name", name_path)
            if not PARAMETER_NAME_RE.match(name):
                raise self.fail(
                    f"invalid parameter name {name!r}: must match {PARAMETER_NAME_RE.pattern}",
                    item, "name", name_path,
                )
            if name in first_seen:
                raise self.fail(
                    f"duplicate parameter name '{name}' (first declared at {path}[{first_seen[name]}])",
                    item, "name", name_path,
                )
            first_seen[name] = index
            spec = self.type_spec(item, raw, index, item_path, extra_keys=frozenset({"name"}))
            result.append(ParameterSpec(name=name, type=spec))
        return tuple(result)


def parse_type(raw: Any, *, file: Any = None, key_path: str = "return") -> TypeSpec:
    """Parse a type declaration (a `return:` block, an item or property type) into a TypeSpec."""
    return _Parser(file).type_spec(raw, None, None, key_path)


def parse_parameters(raw: Any, *, file: Any = None, key_path: str = "parameters") -> tuple[ParameterSpec, ...]:
    """Parse a `parameters:` list; each item is a type declaration plus `name`."""
    return _Parser(file).parameters(raw, key_path)


# ---------------------------------------------------------------------------------------------------------
# Compiling TypeSpec into validators
# ---------------------------------------------------------------------------------------------------------
#
# A validator is `check(value) -> value`. In input mode (`convert=True`) it is strict (JSON types only) and
# returns a converted copy (dates parsed, integral floats made int, defaults filled in). In output mode it is
# lenient about Python types that serialise to the declared JSON type (Decimal, date, numpy scalars...),
# accepts null anywhere (SQL NULL), and returns the value untouched.
# Failures raise _Invalid; containers add their path segment as the error bubbles up.

_Check = Callable[[Any], Any]


class _Invalid(Exception):
    """A rule failed. `segments` are added innermost-first while unwinding."""

    __slots__ = ("message", "segments")

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.segments: list[str] = []

    @property
    def path(self) -> str:
        return "".join(reversed(self.segments))

    def describe(self) -> str:
        path = self.path.lstrip(".")
        return f"{path}: {self.message}" if path else self.message


def _type_error(expected: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {expected}, got {_json_type_name(value)} (type)")


def _identity(value: Any) -> Any:
    return value


def _compile(spec: TypeSpec, *, convert: bool, inherited_sensitive: bool = False) -> _Check:
    sensitive = inherited_sensitive or spec.sensitive
    if spec.type is None:
        check = _compile_any(spec, convert, sensitive)
    else:
        check = _BUILDERS[spec.type](spec, convert, sensitive)
    if spec.enum is not None:
        check = _with_enum(check, spec, sensitive)
    if not convert and check is not _identity:
        return _nullable(check)
    return check


def _nullable(check: _Check) -> _Check:
    """Output mode: SQL NULL (None) is acceptable for any type."""

    def check_nullable(value: Any) -> Any:
        return value if value is None else check(value)

    return check_nullable


def _string_rules(spec: TypeSpec) -> list[Callable[[str], None]]:
    rules: list[Callable[[str], None]] = []
    if spec.min_length is not None:
        min_length = spec.min_length
        too_short = f"must be at least {min_length} characters long (minLength)"

        def min_length_rule(text: str) -> None:
            if len(text) < min_length:
                raise _Invalid(too_short)

        rules.append(min_length_rule)
    if spec.max_length is not None:
        max_length = spec.max_length
        too_long = f"must be at most {max_length} characters long (maxLength)"

        def max_length_rule(text: str) -> None:
            if len(text) > max_length:
                raise _Invalid(too_long)

        rules.append(max_length_rule)
    if spec.pattern is not None:
        # ECMA-262 meaning (`$` at the very end, ASCII `\\d`/`\\w`), and unanchored: search, as JSON Schema does.
        search = compile_pattern(spec.pattern).search
        mismatch = f"does not match pattern {spec.pattern!r} (pattern)"

        def pattern_rule(text: str) -> None:
            if search(text) is None:
                raise _Invalid(mismatch)

        rules.append(pattern_rule)
    text_format = _TEXT_FORMAT_RES.get(spec.format or "")
    if text_format is not None:
        fullmatch = text_format.fullmatch
        invalid = f"must be a valid {'email address' if spec.format == 'email' else 'URI'} (format)"

        def format_rule(text: str) -> None:
            if fullmatch(text) is None:
                raise _Invalid(invalid)

        rules.append(format_rule)
    return rules


def _compile_string(spec: TypeSpec, convert: bool, sensitive: bool) -> _Check:
    rules = _string_rules(spec)
    parser, natives = _TEMPORAL_PARSERS.get(spec.format or "", (None, ()))
    if parser is None and not rules and convert:
        def plain_string(value: Any) -> Any:
            if isinstance(value, str):
                return value
            raise _type_error("string", value)

        return plain_string

    invalid_format = f"must be a valid {spec.format} (format)"
    # Output mode: objects that serialise to strings (DuckDB dates, UUIDs) are fine for any string type.
    output_natives = (dt.date, dt.time, dt.timedelta, uuid.UUID)

    def check_string(value: Any) -> Any:
        if isinstance(value, str):
            for rule in rules:
                rule(value)
            if parser is None:
                return value
            try:
                converted = parser(value)
            except ValueError:
                raise _Invalid(invalid_format) from None
            return converted if convert else value
        if natives and isinstance(value, natives):
            try:
                converted = parser(value)  # type: ignore[misc]
            except ValueError:
                raise _Invalid(invalid_format) from None
            if rules:  # string keywords judge the text the object stands for
                text = to_jsonable(converted)
                for rule in rules:
                    rule(text)
            return converted if convert else value
        if not convert and isinstance(value, output_natives):
            return value
        raise _type_error("string", value)

    return check_string


def _number_rules(spec: TypeSpec) -> list[Callable[[Any], None]]:
    rules: list[Callable[[Any], None]] = []

    def bound(limit: Any, keyword: str, symbol: str, ok: Callable[[Any, Any], bool]) -> None:
        message = f"must be {symbol} {limit!r} ({keyword})"

        def bound_rule(number: Any) -> None:
            if not ok(number, limit):
                raise _Invalid(message)

        rules.append(bound_rule)

    if spec.minimum is not None:
        bound(spec.minimum, "minimum", ">=", lambda n, lim: n >= lim)
    if spec.maximum is not None:
        bound(spec.maximum, "maximum", "<=", lambda n, lim: n <= lim)
    if spec.exclusive_minimum is not None:
        bound(spec.exclusive_minimum, "exclusiveMinimum", ">", lambda n, lim: n > lim)
    if spec.exclusive_maximum is not None:
        bound(spec.exclusive_maximum, "exclusiveMaximum", "<", lambda n, lim: n < lim)
    if spec.multiple_of is not None:
        step = spec.multiple_of
        message = f"must be a multiple of {step!r} (multipleOf)"

        def multiple_rule(number: Any) -> None:
            if isinstance(number, int) and isinstance(step, int):
                if number % step:
                    raise _Invalid(message)
                return
            quotient = number / step
            # Floats like 0.3 / 0.1 are not exact: accept quotients within rounding noise of an integer.
            if not math.isfinite(quotient) or abs(quotient - round(quotient)) > 1e-9 * max(1.0, abs(quotient)):
                raise _Invalid(message)

        rules.append(multiple_rule)
    return rules


def _plain_number(value: Any) -> Any:
    """Output-mode numbers (Decimal, numpy) as int/float so the rules can compare them."""
    if type(value) in (int, float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _compile_number(spec: TypeSpec, convert: bool, sensitive: bool, *, integer: bool) -> _Check:
    rules = _number_rules(spec)
    expected = "integer" if integer else "number"

    if convert:
        def check_input(value: Any) -> Any:
            cls = type(value)
            if cls is int or cls is float:
                pass
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                pass  # int/float subclasses such as IntEnum
            else:
                raise _type_error(expected, value)
            if integer and cls is not int:
                if isinstance(value, float) and value.is_integer():
                    value = int(value)  # JSON has no integers: 3.0 is a fine integer
                elif not isinstance(value, int):
                    raise _type_error(expected, value)
            for rule in rules:
                rule(value)
            return value

        return check_input

    def check_output(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
            raise _type_error(expected, value)
        number = _plain_number(value)
        if integer and not isinstance(number, int):
            if not (math.isfinite(number) and float(number).is_integer()):
                raise _type_error(expected, value)
        for rule in rules:
            rule(number)
        return value

    return check_output


def _compile_integer(spec: TypeSpec, convert: bool, sensitive: bool) -> _Check:
    return _compile_number(spec, convert, sensitive, integer=True)


def _compile_float(spec: TypeSpec, convert: bool, sensitive: bool) -> _Check:
    return _compile_number(spec, convert, sensitive, integer=False)


def _compile_boolean(spec: TypeSpec, convert: bool, sensitive: bool) -> _Check:
    if convert:
        def check_bool(value: Any) -> Any:
            if value is True or value is False:
                return value
            raise _type_error("boolean", value)

        return check_bool

    def check_bool_output(value: Any) -> Any:
        if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy.bool_ from DataFrames
            return value
        raise _type_error("boolean", value)

    return check_bool_output


def _compile_array(spec: TypeSpec, convert: bool, sensitive: bool) -> _Check:
    item_check = _compile(spec.items, convert=convert, inherited_sensitive=sensitive) if spec.items else None
    if item_check is _identity:
        item_check = None
    min_items, max_items, unique = spec.min_items, spec.max_items, spec.unique_items
    too_few = f"must have at least {min_items} items (minItems)"
    too_many = f"must have at most {max_items} items (maxItems)"

    def check_array(value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _type_error("array", value)
        count = len(value)
        if min_items is not None and count < min_items:
            raise _Invalid(too_few)
        if max_items is not None and count > max_items:
            raise _Invalid(too_many)
        result = value
        if item_check is not None:
            index = 0
            try:
                if convert:
                    result = []
                    append = result.append
                    for index, item in enumerate(value):
                        append(item_check(item))
                else:
                    for index, item in enumerate(value):
                        item_check(item)
            except _Invalid as exc:
                exc.segments.append(f"[{index}]")
                raise
        elif convert:
            result = list(value)
        if unique:
            seen = set()
            for item in result:
                key = _json_key(item)
                if key in seen:
                    raise _Invalid("items must be unique (uniqueItems)")
                seen.add(key)
        return result

    return check_array


def _default_copier(value: Any) -> Callable[[], Any]:
    """A function returning a fresh copy of a default, so calls never share a mutable default."""
    if isinstance(value, (str, int, float, bool, dt.date, dt.time, dt.timedelta, type(None))):
        return lambda: value
    return lambda: copy.deepcopy(value)


def _compile_object(spec: TypeSpec, convert: bool, sensitive: bool) -> _Check:
    property_checks: dict[str, _Check] = {}
    defaults: dict[str, Callable[[], Any]] = {}
    for name, prop in (spec.properties or {}).items():
        prop_check = _compile(prop, convert=convert, inherited_sensitive=sensitive)
        property_checks[name] = prop_check
        if convert and prop.default is not NO_DEFAULT:
            default = prop.default if prop.default is None else prop_check(prop.default)
            defaults[name] = _default_copier(default)
    required = tuple(name for name in (spec.required or ()) if name not in defaults)
    closed = spec.additional_properties is False
    checked = {name: c for name, c in property_checks.items() if c is not _identity}

    def unknown_property(key: Any) -> _Invalid:
        if sensitive:
            return _Invalid("has an undeclared property (additionalProperties)")
        return _Invalid(f"unknown property {_short_repr(key)} (additionalProperties)")

    def check_object(value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _type_error("object", value)
        for name in required:
            if name not in value:
                raise _Invalid(f"missing required property '{name}' (required)")
        if closed:
            for key in value:
                if key not in property_checks:
                    raise unknown_property(key)
        result = {} if convert else value
        for key, item in value.items():
            if item is None and key in defaults:  # an explicit null takes the default, as for parameters
                item = defaults[key]()
            else:
                prop_check = checked.get(key)
                if prop_check is not None:
                    try:
                        item = prop_check(item)
                    except _Invalid as exc:
                        exc.segments.append(f".{key}")
                        raise
            if convert:
                result[key] = item
        if defaults:
            for name, make_default in defaults.items():
                if name not in result:
                    result[name] = make_default()
        return result

    return check_object


def _compile_any(spec: TypeSpec, convert: bool, sensitive: bool) -> _Check:
    """No declared type: each keyword applies only to values of its own kind, as in JSON Schema."""
    declared = {key for key, field in _KEYWORD_FIELDS.items() if _is_set(spec, field)}
    string_check = _compile_string(spec, convert, sensitive) if declared & _STRING_KEYWORDS else None
    number_check = _compile_float(spec, convert, sensitive) if declared & _NUMBER_KEYWORDS else None
    array_check = _compile_array(spec, convert, sensitive) if declared & _ARRAY_KEYWORDS else None
    object_check = _compile_object(spec, convert, sensitive) if declared & _OBJECT_KEYWORDS else None
    if not (string_check or number_check or array_check or object_check):
        return _identity
    # Input arrives as JSON: only int/float are numbers there; results may carry Decimal or numpy numbers.
    numeric_types: tuple[type, ...] = (int, float) if convert else (numbers.Real, decimal.Decimal)

    def check_any(value: Any) -> Any:
        if isinstance(value, str):
            return string_check(value) if string_check else value
        if isinstance(value, bool):
            return value
        if isinstance(value, numeric_types):
            return number_check(value) if number_check else value
        if isinstance(value, (list, tuple)):
            return array_check(value) if array_check else value
        if isinstance(value, Mapping):
            return object_check(value) if object_check else value
        return value

    return check_any


def _is_set(spec: TypeSpec, field: str) -> bool:
    value = getattr(spec, field)
    if field == "unique_items":
        return bool(value)
    return value is not None and value is not NO_DEFAULT and value != ()


def _with_enum(check: _Check, spec: TypeSpec, sensitive: bool) -> _Check:
    # Compare canonical forms: for date formats "2024-01-01" and date(2024, 1, 1) are the same member.
    parser = _TEMPORAL_PARSERS.get(spec.format or "", (None, ()))[0]

    def canonical(value: Any) -> Any:
        if parser is not None and value is not None:
            try:
                return parser(value)
            except (ValueError, TypeError):
                return value
        return value

    allowed = {_json_key(canonical(member)) for member in spec.enum or ()}
    if sensitive:
        message = "must be one of the allowed values (enum)"
    else:
        message = f"must be one of {[to_jsonable(m) for m in spec.enum or ()]!r} (enum)"

    def check_enum(value: Any) -> Any:
        value = check(value)
        if _json_key(canonical(value)) not in allowed:
            raise _Invalid(message)
        return value

    return check_enum


_BUILDERS: dict[str, Callable[[TypeSpec, bool, bool], _Check]] = {
    "string": _compile_string,
    "number": _compile_float,
    "integer": _compile_integer,
    "boolean": _compile_boolean,
    "array": _compile_array,
    "object": _compile_object,
}


# ---------------------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------------------

_Redactor = Callable[[Any], Any]


def _redact_all(value: Any) -> Any:
    return REDACTED


# What a dropping redactor returns for a value to leave out (its key or list item goes with it).
_DROPPED = object()


def _drop_all(value: Any) -> Any:
    return _DROPPED


def _compile_redactor(spec: TypeSpec | None, *, drop: bool = False) -> _Redactor | None:
    """A function hiding the sensitive parts of a value, or None when nothing under `spec` is sensitive.

    Hidden means replaced by REDACTED (for logs and audit records) or, with `drop`, left out: the key of an
    object and the item of an array go (for results a policy filters)."""
    if spec is None:
        return None
    if spec.sensitive:  # everything below a sensitive spec goes with it
        return _drop_all if drop else _redact_all
    item_redactor = _compile_redactor(spec.items, drop=drop)
    property_redactors = {
        name: redactor
        for name, prop in (spec.properties or {}).items()
        if (redactor := _compile_redactor(prop, drop=drop)) is not None
    }
    if item_redactor is None and not property_redactors:
        return None

    def redact(value: Any) -> Any:
        if value is None:
            return None
        if property_redactors and isinstance(value, Mapping):
            hidden = {key: (property_redactors[key](item) if key in property_redactors else item)
                      for key, item in value.items()}
            return {key: item for key, item in hidden.items() if item is not _DROPPED} if drop else hidden
        if item_redactor is not None and isinstance(value, (list, tuple)):
            items = [item_redactor(item) for item in value]
            return [item for item in items if item is not _DROPPED] if drop else items
        # A shape the spec does not describe may still hold the secret: hide it whole.
        return _DROPPED if drop else REDACTED

    return redact


# ---------------------------------------------------------------------------------------------------------
# Compiled endpoint parameters and return type
# ---------------------------------------------------------------------------------------------------------


@attrs.frozen
class _CompiledParameter:
    name: str
    check: _Check
    default: Callable[[], Any] | None  # None: required
    redact: _Redactor | None


class CompiledParameters:
    """An endpoint's parameters, compiled once; `validate` runs on every call."""

    def __init__(self, params: Sequence[ParameterSpec]) -> None:
        self.params: tuple[ParameterSpec, ...] = tuple(params)
        self.names: frozenset[str] = frozenset(p.name for p in self.params)
        if len(self.names) != len(self.params):
            raise ValueError("duplicate parameter names")
        compiled = []
        for param in self.params:
            check = _compile(param.type, convert=True)
            default: Callable[[], Any] | None = None
            if param.has_default:
                value = param.type.default
                if value is not None:
                    try:
                        value = check(value)  # convert once (dates...), copy per call
                    except _Invalid as exc:
                        raise ValueError(f"default of parameter '{param.name}' is invalid: {exc.describe()}") from None
                default = _default_copier(value)
            compiled.append(_CompiledParameter(param.name, check, default, _compile_redactor(param.type)))
        self._compiled: tuple[_CompiledParameter, ...] = tuple(compiled)
        self._redactors = {c.name: c.redact for c in compiled if c.redact is not None}
        self._schema = {
            "type": "object",
            "properties": {p.name: to_json_schema(p.type) for p in self.params},
            "required": [p.name for p in self.params if p.required],
            "additionalProperties": False,
        }

    def validate(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Checked, converted arguments with defaults filled in (a new dict, declaration order)."""
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, Mapping):
            raise ValidationError(f"Arguments must be an object, got {_json_type_name(arguments)}")
        names = self.names
        for key in arguments:
            if key not in names:
                raise ValidationError(f"Unknown parameter: {key}")
        result: dict[str, Any] = {}
        for param in self._compiled:
            name = param.name
            value = arguments.get(name)
            if value is None:  # absent, or an explicit null: both mean "use the default"
                if param.default is not None:
                    result[name] = param.default()
                    continue
                if name not in arguments:
                    raise ValidationError(f"Required parameter missing: {name}")
            try:
                result[name] = param.check(value)
            except _Invalid as exc:
                raise ValidationError(f"Parameter '{name}{exc.path}': {exc.message}") from None
        return result

    def json_schema(self) -> dict[str, Any]:
        """The MCP `inputSchema` (a fresh copy; callers may modify it)."""
        return copy.deepcopy(self._schema)

    def redact(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """A copy with sensitive values (nested ones too) replaced by "[REDACTED]"; undeclared keys kept."""
        if not arguments:
            return {}
        redactors = self._redactors
        if not redactors:
            return dict(arguments)
        return {
            key: (redactors[key](value) if key in redactors else value) for key, value in arguments.items()
        }


class CompiledReturn:
    """An endpoint's return type, compiled once: output validation, redaction and the MCP outputSchema."""

    def __init__(self, spec: TypeSpec | None) -> None:
        self.spec = spec
        if spec is None or spec.type is None:
            # No (typed) return: SQL results are shaped as a list of rows, nothing is advertised.
            self.kind = "none"
        elif spec.type in ("array", "object"):
            self.kind = spec.type
        else:
            self.kind = "scalar"
        self._check = _compile(spec, convert=False) if spec is not None else _identity
        self._redactor = _compile_redactor(spec)
        self._dropper = _compile_redactor(spec, drop=True)
        self.wraps_result = self.kind in ("array", "scalar")
        if self.kind == "none":
            self._output_schema: dict[str, Any] | None = None
        elif self.kind == "object":
            self._output_schema = to_json_schema(spec)  # type: ignore[arg-type]
        else:
            self._output_schema = {
                "type": "object",
                "properties": {"result": to_json_schema(spec)},  # type: ignore[arg-type]
                "required": ["result"],
            }

    def output_schema(self) -> dict[str, Any] | None:
        """The MCP `outputSchema` (always an object schema), or None when nothing is declared."""
        return copy.deepcopy(self._output_schema)

    def validate(self, value: Any) -> Any:
        """Check a result against the declared type and return it unchanged."""
        try:
            return self._check(value)
        except _Invalid as exc:
            where = exc.path.lstrip(".")
            prefix = f"Return value: {where}: " if where else "Return value: "
            raise ValidationError(prefix + exc.message) from None

    def redact(self, value: Any) -> Any:
        return value if self._redactor is None else self._redactor(value)

    def without_sensitive(self, value: Any) -> Any:
        """The value without what the type marks sensitive, at any depth (keys and items left out; None when the
        whole result is sensitive)."""
        if self._dropper is None:
            return value
        kept = self._dropper(value)
        return None if kept is _DROPPED else kept

    def sensitive_fields(self) -> set[str]:
        """Names of sensitive properties of the returned object, or of each row for array-of-object returns."""
        spec = self.spec
        if spec is not None and spec.type == "array" and spec.items is not None:
            spec = spec.items
        if spec is None or not spec.properties:
            return set()
        return {name for name, prop in spec.properties.items() if prop.sensitive}


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------


def to_json_schema(spec: TypeSpec) -> dict[str, Any]:
    """A JSON Schema for `spec`, keywords in their JSON spelling.

    A sensitive spec is marked `writeOnly` and advertises neither its default nor its examples.
    """
    schema: dict[str, Any] = {}
    for keyword, field in _KEYWORD_FIELDS.items():
        value = getattr(spec, field)
        if keyword == "sensitive":
            continue
        if keyword == "default":
            if value is not NO_DEFAULT and not spec.sensitive:
                schema["default"] = to_jsonable(value)
            continue
        if keyword == "examples":
            if value and not spec.sensitive:
                schema["examples"] = to_jsonable(list(value))
            continue
        if keyword == "uniqueItems":
            if value:
                schema["uniqueItems"] = True
            continue
        if value is None:
            continue
        if keyword == "items":
            schema["items"] = to_json_schema(value)
        elif keyword == "properties":
            schema["properties"] = {name: to_json_schema(prop) for name, prop in value.items()}
        elif keyword in ("enum", "required"):
            schema[keyword] = to_jsonable(list(value))
        else:
            schema[keyword] = value
    if spec.sensitive:
        schema["writeOnly"] = True
    return schema


_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def to_jsonable(value: Any) -> Any:
    """Turn a result into JSON-serialisable data.

    Plain JSON data is returned as is (the very same object, not a copy); containers are only rebuilt
    when something inside them needs converting.
    """
    cls = type(value)
    if cls in _PLAIN_SCALARS:
        return value
    if cls is list:
        return _jsonable_list(value)
    if cls is dict:
        return _jsonable_dict(value)
    return _jsonable_other(value)


def _jsonable_list(value: list[Any]) -> list[Any]:
    converted: list[Any] | None = None
    for index, item in enumerate(value):
        new = to_jsonable(item)
        if converted is None:
            if new is item:
                continue
            converted = value[:index]
        converted.append(new)
    return value if converted is None else converted


def _jsonable_dict(value: dict[Any, Any]) -> dict[str, Any]:
    converted: dict[str, Any] | None = None
    for index, (key, item) in enumerate(value.items()):
        new = to_jsonable(item)
        if converted is None:
            if new is item and type(key) is str:
                continue
            converted = {k: v for k, v in list(value.items())[:index]}
        converted[key if type(key) is str else _jsonable_key(key)] = new
    return value if converted is None else converted


def _jsonable_key(key: Any) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, str):
        return str(key)
    converted = to_jsonable(key)
    return converted if isinstance(converted, str) else str(converted)


def _jsonable_other(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return format_duration(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    # Subclasses of the plain scalars (numpy.float64, custom str types): back to the plain type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {
            (key if type(key) is str else _jsonable_key(key)): to_jsonable(item) for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item) for item in value]
    # numpy / pandas scalars (and 0-d arrays) know their Python value; arrays know their list.
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return to_jsonable(item())
        except (ValueError, TypeError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return to_jsonable(tolist())
    return str(value)
