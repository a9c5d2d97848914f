"""Tests of the endpoint type system: parsing, input validation, return validation, schemas, redaction."""
from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid

import pytest

from mxcp_core import typesystem
from mxcp_core.errors import ConfigError, ValidationError
from mxcp_core.typesystem import (
    NO_DEFAULT,
    REDACTED,
    CompiledParameters,
    CompiledReturn,
    ParameterSpec,
    TypeSpec,
    format_duration,
    parse_duration,
    parse_parameters,
    parse_type,
    to_json_schema,
    to_jsonable,
)
from mxcp_core.yamlfile import load_yaml_text


# ---------------------------------------------------------------------------------------------------------
# helpers


def yaml(text: str):
    return load_yaml_text(text, "x.yml")


def params(*raw_params: dict) -> CompiledParameters:
    return CompiledParameters(parse_parameters(list(raw_params)))


def one(raw_type: dict) -> CompiledParameters:
    """Parameters with a single parameter `x` of the given type."""
    return params({"name": "x", **raw_type})


def validation_message(compiled: CompiledParameters, arguments) -> str:
    with pytest.raises(ValidationError) as info:
        compiled.validate(arguments)
    return str(info.value)


def config_error(text: str, *, parameters: bool = False, key_path: str | None = None) -> ConfigError:
    raw = yaml(text)
    with pytest.raises(ConfigError) as info:
        if parameters:
            parse_parameters(raw, file="x.yml", **({"key_path": key_path} if key_path else {}))
        else:
            parse_type(raw, file="x.yml", **({"key_path": key_path} if key_path else {}))
    return info.value


# ---------------------------------------------------------------------------------------------------------
# parsing


def test_parse_every_keyword_into_typespec():
    spec = parse_type(
        yaml(
            """
type: object
description: a person
sensitive: false
additionalProperties: false
required: [name]
examples: [{name: a}]
properties:
  name: {type: string, minLength: 1, maxLength: 5, pattern: "^[a-z]+$", enum: [abc, de], default: abc}
  email: {type: string, format: email}
  age: {type: integer, minimum: 0, maximum: 150, multipleOf: 1}
  score: {type: number, exclusiveMinimum: 0, exclusiveMaximum: 1.5}
  tags: {type: array, items: {type: string}, minItems: 1, maxItems: 3, uniqueItems: true}
  ok: {type: boolean}
  anything: {}
"""
        )
    )
    assert spec.type == "object"
    assert spec.description == "a person"
    assert spec.additional_properties is False
    assert spec.required == ("name",)
    assert spec.examples == ({"name": "a"},)
    name = spec.properties["name"]
    assert (name.min_length, name.max_length, name.pattern) == (1, 5, "^[a-z]+$")
    assert name.enum == ("abc", "de") and name.default == "abc"
    assert spec.properties["email"].format == "email"
    age = spec.properties["age"]
    assert (age.minimum, age.maximum, age.multiple_of) == (0, 150, 1)
    score = spec.properties["score"]
    assert (score.exclusive_minimum, score.exclusive_maximum) == (0, 1.5)
    tags = spec.properties["tags"]
    assert tags.items == TypeSpec(type="string")
    assert (tags.min_items, tags.max_items, tags.unique_items) == (1, 3, True)
    assert spec.properties["anything"].type is None
    assert spec.properties["anything"].default is NO_DEFAULT


def test_typespec_is_frozen_including_properties():
    spec = parse_type({"type": "object", "properties": {"a": {"type": "string"}}})
    with pytest.raises(Exception):
        spec.type = "string"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.properties["b"] = TypeSpec(type="string")  # type: ignore[index]


def test_typespec_rejects_unknown_type_and_format_names_when_built_directly():
    with pytest.raises(ValueError):
        TypeSpec(type="str")
    with pytest.raises(ValueError):
        TypeSpec(type="string", format="colour")


def test_parse_parameters_with_description_and_default():
    specs = parse_parameters(
        [
            {"name": "id", "type": "integer", "description": "The id"},
            {"name": "limit", "type": "integer", "default": 10},
        ]
    )
    assert specs[0] == ParameterSpec(name="id", type=TypeSpec(type="integer", description="The id"))
    assert specs[0].required and not specs[0].has_default
    assert specs[1].has_default and not specs[1].required
    assert specs[1].type.default == 10
    assert specs[0].description == "The id"


def test_parse_parameters_none_is_empty():
    assert parse_parameters(None) == ()


def test_default_null_makes_a_parameter_optional():
    (spec,) = parse_parameters([{"name": "status", "type": "string", "default": None}])
    assert spec.has_default and not spec.required
    assert CompiledParameters([spec]).validate({}) == {"status": None}


def test_misspelled_keyword_suggests_the_closest_with_line_and_key_path():
    doc = yaml(
        """mxcp: 1
tool:
  name: t
  parameters:
    - name: id
      type: integer
    - name: limit
      type: integer
      minimun: 1
"""
    )
    with pytest.raises(ConfigError) as info:
        parse_parameters(doc["tool"]["parameters"], file="x.yml", key_path="tool.parameters")
    error = info.value
    assert error.key_path == "tool.parameters[1].minimun"
    assert error.line == 9
    assert error.file == "x.yml"
    assert "unknown keyword 'minimun'" in error.message
    assert "did you mean 'minimum'?" in error.message
    assert str(error).startswith("x.yml:9: tool.parameters[1].minimun: ")


def test_nested_error_key_path_and_line():
    text = """type: object
properties:
  name:
    type: string
  salary:
    type: nmber
"""
    error = config_error(text, key_path="tool.return")
    assert error.key_path == "tool.return.properties.salary.type"
    assert error.line == 6
    assert "unknown type 'nmber'" in error.message and "did you mean 'number'?" in error.message


def test_items_error_key_path():
    error = config_error("type: array\nitems:\n  type: string\n  maxLenght: 3\n")
    assert error.key_path == "return.items.maxLenght"
    assert error.line == 4
    assert "did you mean 'maxLength'?" in error.message


def test_plain_dicts_parse_without_lines():
    with pytest.raises(ConfigError) as info:
        parse_type({"type": "integer", "minimum": "abc"}, file="f.yml")
    assert info.value.line is None
    assert info.value.key_path == "return.minimum"
    assert info.value.message == "expected a number, got 'abc'"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("{type: string, minLength: abc}", "minLength", "expected a non-negative integer, got 'abc'"),
        ("{type: string, minLength: -1}", "minLength", "expected a non-negative integer, got -1"),
        ("{type: string, maxLength: 1.5}", "maxLength", "expected a non-negative integer, got 1.5"),
        ("{type: array, minItems: true}", "minItems", "expected a non-negative integer, got True"),
        ("{type: array, maxItems: x}", "maxItems", "expected a non-negative integer, got 'x'"),
        ("{type: integer, minimum: abc}", "minimum", "expected a number, got 'abc'"),
        ("{type: integer, maximum: true}", "maximum", "expected a number, got True"),
        ("{type: number, exclusiveMinimum: true}", "exclusiveMinimum", "expected a number, got True"),
        ("{type: number, exclusiveMaximum: '3'}", "exclusiveMaximum", "expected a number, got '3'"),
        ("{type: number, multipleOf: 0}", "multipleOf", "expected a positive number, got 0"),
        ("{type: number, multipleOf: -2}", "multipleOf", "expected a positive number, got -2"),
        ("{type: string, pattern: 5}", "pattern", "expected a string, got 5"),
        ("{type: string, description: 5}", "description", "expected a string, got 5"),
        ("{type: string, sensitive: 'yes'}", "sensitive", "expected a boolean, got 'yes'"),
        ("{type: array, uniqueItems: 1}", "uniqueItems", "expected a boolean, got 1"),
        ("{type: object, additionalProperties: {}}", "additionalProperties", "expected a boolean, got {}"),
        ("{type: string, enum: abc}", "enum", "expected a non-empty list, got 'abc'"),
        ("{type: string, enum: []}", "enum", "expected a non-empty list, got []"),
        ("{type: string, examples: abc}", "examples", "expected a list, got 'abc'"),
        ("{type: object, required: name}", "required", "expected a list of property names, got 'name'"),
        ("{type: object, required: [1]}", "required", "expected a list of property names, got [1]"),
        ("{type: object, properties: [a]}", "properties", "expected a mapping of property names to types"),
        ("{type: array, items: string}", "items", "expected a mapping, got 'string'"),
    ],
)
def test_wrong_keyword_value_types(text, key, expected):
    error = config_error(text)
    assert error.key_path == f"return.{key}"
    assert expected in error.message
    assert error.line == 1


def test_very_long_values_are_truncated_in_parse_errors():
    error = config_error("{type: integer, minimum: '" + "x" * 200 + "'}")
    assert len(error.message) < 100
    assert error.message.endswith("...")


def test_unknown_format():
    error = config_error("{type: string, format: emial}")
    assert error.key_path == "return.format"
    assert "unknown format 'emial'" in error.message and "did you mean 'email'?" in error.message


def test_type_must_be_a_known_name():
    assert "unknown type" in config_error("{type: [string, 'null']}").message
    assert "unknown type 'int'" in config_error("{type: int}").message


def test_invalid_regex_pattern():
    error = config_error("type: string\npattern: '[a-'\n")
    assert error.key_path == "return.pattern"
    assert error.line == 2
    assert "invalid regular expression" in error.message


@pytest.mark.parametrize(
    ("keyword", "type_name"),
    [("minLength", "integer"), ("minimum", "string"), ("items", "object"), ("properties", "array"),
     ("format", "integer"), ("uniqueItems", "boolean")],
)
def test_keyword_for_another_type_is_rejected(keyword, type_name):
    value = {"minLength": 1, "minimum": 1, "items": {}, "properties": {}, "format": "date", "uniqueItems": True}
    with pytest.raises(ConfigError) as info:
        parse_type({"type": type_name, keyword: value[keyword]})
    assert info.value.message == f"'{keyword}' does not apply to type '{type_name}'"
    assert info.value.key_path == f"return.{keyword}"


def test_untyped_spec_accepts_all_keywords():
    spec = parse_type({"minLength": 2, "minimum": 3, "items": {"type": "integer"}})
    assert spec.type is None and spec.min_length == 2 and spec.minimum == 3


def test_contradictory_bounds_are_rejected():
    assert "maxLength (1) is smaller than minLength (2)" in config_error(
        "{type: string, minLength: 2, maxLength: 1}"
    ).message
    assert "maximum" in config_error("{type: number, minimum: 5, maximum: 1}").message
    assert "maxItems" in config_error("{type: array, minItems: 5, maxItems: 1}").message


def test_required_property_must_be_declared():
    error = config_error("type: object\nproperties: {name: {type: string}}\nrequired: [nmae]\n")
    assert error.key_path == "return.required[0]"
    assert "did you mean 'name'?" in error.message


def test_parameter_required_true_gets_a_hint():
    error = config_error("- {name: a, type: string, required: true}", parameters=True)
    assert "required unless it has a default" in error.message
    assert error.key_path == "parameters[0].required"


@pytest.mark.parametrize(
    ("text", "message_part"),
    [
        ("{type: integer, default: abc}", "default is not valid for the type: expected integer, got string (type)"),
        ("{type: integer, minimum: 5, default: 1}", "must be >= 5 (minimum)"),
        ("{type: string, pattern: '^a', default: b}", "does not match pattern '^a' (pattern)"),
        ("{type: string, enum: [a, b], default: c}", "must be one of ['a', 'b'] (enum)"),
        ("{type: string, format: date, default: not-a-date}", "must be a valid date (format)"),
        ("{type: array, items: {type: integer}, default: [1, x]}", "[1]: expected integer, got string (type)"),
    ],
)
def test_default_must_be_valid_for_its_type(text, message_part):
    error = config_error(text)
    assert error.key_path == "return.default"
    assert message_part in error.message


def test_default_error_line_points_at_default():
    error = config_error("- name: n\n  type: integer\n  maximum: 3\n  default: 7\n", parameters=True)
    assert error.line == 4
    assert error.key_path == "parameters[0].default"


def test_enum_members_must_be_valid():
    error = config_error("type: integer\nenum:\n  - 1\n  - two\n")
    assert error.key_path == "return.enum[1]"
    assert error.line == 4
    assert "expected integer, got string" in error.message


def test_yaml_dates_for_plain_string_types_become_text():
    spec = parse_type(yaml("{type: string, default: 2024-01-01, enum: [2024-01-01, 2024-02-02]}"))
    assert spec.default == "2024-01-01"
    assert spec.enum == ("2024-01-01", "2024-02-02")


@pytest.mark.parametrize("name", ["1abc", "a-b", "a b", "", "é"])
def test_invalid_parameter_names(name):
    with pytest.raises(ConfigError) as info:
        parse_parameters([{"name": name, "type": "string"}])
    assert "invalid parameter name" in info.value.message
    assert info.value.key_path == "parameters[0].name"


def test_parameter_name_must_be_a_string():
    with pytest.raises(ConfigError, match="expected a string, got 5"):
        parse_parameters([{"name": 5, "type": "string"}])


def test_duplicate_parameter_names():
    error = config_error(
        "- {name: a, type: string}\n- {name: b, type: string}\n- {name: a, type: integer}\n", parameters=True
    )
    assert error.key_path == "parameters[2].name"
    assert error.line == 3
    assert "duplicate parameter name 'a'" in error.message and "parameters[0]" in error.message


@pytest.mark.parametrize("missing", ["name", "type"])
def test_parameter_missing_name_or_type(missing):
    item = {"name": "a", "type": "string"}
    del item[missing]
    with pytest.raises(ConfigError) as info:
        parse_parameters([item])
    assert info.value.message == f"parameter is missing '{missing}'"
    assert info.value.key_path == "parameters[0]"


def test_parameter_missing_type_reports_its_line():
    error = config_error("- name: a\n  type: string\n- name: b\n  description: no type\n", parameters=True)
    assert error.line == 3
    assert error.key_path == "parameters[1]"


def test_parameters_must_be_a_list_of_mappings():
    with pytest.raises(ConfigError, match="expected a list of parameters"):
        parse_parameters({"name": "a"})
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_parameters(["a"])


def test_name_is_not_a_keyword_outside_parameters():
    error = config_error("{type: string, name: x}")
    assert "unknown keyword 'name'" in error.message


# ---------------------------------------------------------------------------------------------------------
# input validation: keywords


@pytest.mark.parametrize(
    ("raw_type", "good", "bad", "message"),
    [
        ({"type": "string", "minLength": 2}, "ab", "a", "must be at least 2 characters long (minLength)"),
        ({"type": "string", "maxLength": 2}, "ab", "abc", "must be at most 2 characters long (maxLength)"),
        ({"type": "string", "pattern": "^a"}, "abc", "bac", "does not match pattern '^a' (pattern)"),
        ({"type": "string", "pattern": "b"}, "abc", "xyz", "does not match pattern 'b' (pattern)"),
        ({"type": "string", "enum": ["a", "b"]}, "b", "c", "must be one of ['a', 'b'] (enum)"),
        ({"type": "string", "format": "email"}, "a@b.co", "not-an-email", "must be a valid email address (format)"),
        ({"type": "string", "format": "uri"}, "https://x.org/a", "no scheme", "must be a valid URI (format)"),
        ({"type": "integer", "minimum": 1}, 1, 0, "must be >= 1 (minimum)"),
        ({"type": "integer", "maximum": 10}, 10, 11, "must be <= 10 (maximum)"),
        ({"type": "number", "exclusiveMinimum": 0}, 0.1, 0, "must be > 0 (exclusiveMinimum)"),
        ({"type": "number", "exclusiveMaximum": 5}, 4.9, 5, "must be < 5 (exclusiveMaximum)"),
        ({"type": "integer", "multipleOf": 3}, 9, 10, "must be a multiple of 3 (multipleOf)"),
        ({"type": "number", "multipleOf": 0.1}, 0.3, 0.35, "must be a multiple of 0.1 (multipleOf)"),
        ({"type": "integer", "enum": [1, 2]}, 2, 3, "must be one of [1, 2] (enum)"),
        ({"type": "array", "minItems": 2}, [1, 2], [1], "must have at least 2 items (minItems)"),
        ({"type": "array", "maxItems": 1}, [1], [1, 2], "must have at most 1 items (maxItems)"),
        ({"type": "array", "uniqueItems": True}, [1, 2], [1, 1], "items must be unique (uniqueItems)"),
        ({"type": "array", "uniqueItems": True}, [1, True], [1, 1.0], "items must be unique (uniqueItems)"),
        ({"type": "array", "uniqueItems": True}, [{"a": 1}, {"a": 2}], [{"a": 1}, {"a": 1}],
         "items must be unique (uniqueItems)"),
        ({"type": "array", "items": {"type": "integer"}}, [1, 2], [1, "2"],
         "Parameter 'x[1]': expected integer, got string (type)"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, {"a": 1}, {},
         "missing required property 'a' (required)"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
         {"a": 1}, {"a": 1, "b": 2}, "unknown property 'b' (additionalProperties)"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}}, {"a": 1, "b": 2}, {"a": "1"},
         "Parameter 'x.a': expected integer, got string (type)"),
        ({"type": "boolean", "enum": [True]}, True, False, "must be one of [True] (enum)"),
    ],
)
def test_each_keyword_accepts_and_rejects(raw_type, good, bad, message):
    compiled = one(raw_type)
    assert compiled.validate({"x": good})["x"] == good
    error = validation_message(compiled, {"x": bad})
    assert message in error
    assert error.startswith("Parameter 'x")


@pytest.mark.parametrize(
    ("type_name", "value", "got"),
    [
        ("string", 1, "integer"),
        ("string", None, "null"),
        ("integer", "3", "string"),
        ("integer", True, "boolean"),
        ("integer", 3.5, "number"),
        ("number", "1.5", "string"),
        ("number", False, "boolean"),
        ("boolean", 1, "integer"),
        ("boolean", "true", "string"),
        ("array", "abc", "string"),
        ("array", {"a": 1}, "object"),
        ("object", [1], "array"),
        ("object", "x", "string"),
    ],
)
def test_type_mismatches(type_name, value, got):
    message = validation_message(one({"type": type_name}), {"x": value})
    assert message == f"Parameter 'x': expected {type_name}, got {got} (type)"


def test_integer_accepts_integral_floats_and_converts_them():
    result = one({"type": "integer"}).validate({"x": 3.0})["x"]
    assert result == 3 and type(result) is int


def test_number_keeps_ints_and_floats():
    compiled = one({"type": "number"})
    assert type(compiled.validate({"x": 2})["x"]) is int
    assert compiled.validate({"x": 2.5})["x"] == 2.5


def test_integer_enum_matches_integral_float():
    assert one({"type": "integer", "enum": [1, 2]}).validate({"x": 2.0}) == {"x": 2}


def test_enum_distinguishes_booleans_from_numbers():
    compiled = CompiledParameters([ParameterSpec("x", parse_type({"enum": [1, "a"]}))])
    assert compiled.validate({"x": 1}) == {"x": 1}
    assert "(enum)" in validation_message(compiled, {"x": True})


def test_untyped_spec_applies_keywords_by_value_kind():
    # Parameters must declare a type, but nested and directly built specs may leave it out.
    compiled = CompiledParameters([ParameterSpec("x", parse_type({"minLength": 2, "minimum": 5}))])
    assert compiled.validate({"x": "ab"}) == {"x": "ab"}
    assert compiled.validate({"x": 7}) == {"x": 7}
    assert compiled.validate({"x": [1]}) == {"x": [1]}
    assert "(minLength)" in validation_message(compiled, {"x": "a"})
    assert "(minimum)" in validation_message(compiled, {"x": 1})


# ---------------------------------------------------------------------------------------------------------
# input validation: dates, times, durations


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("date", "2024-02-29", dt.date(2024, 2, 29)),
        ("time", "13:45:10", dt.time(13, 45, 10)),
        ("time", "13:45", dt.time(13, 45)),
        ("date-time", "2024-01-02T03:04:05", dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("date-time", "2024-01-02T03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
        ("date-time", "2024-01-02T03:04:05+02:00",
         dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
        ("timestamp", "2024-01-02 03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
        ("duration", "P1DT2H", dt.timedelta(days=1, hours=2)),
        ("duration", "PT30M", dt.timedelta(minutes=30)),
        ("duration", "P2W", dt.timedelta(weeks=2)),
        ("duration", "PT1.5S", dt.timedelta(seconds=1.5)),
        ("duration", "-PT1H", dt.timedelta(hours=-1)),
    ],
)
def test_temporal_formats_convert_strings(fmt, text, expected):
    result = one({"type": "string", "format": fmt}).validate({"x": text})["x"]
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("date", "2024-02-30"),
        ("date", "yesterday"),
        ("date", "2024-01-01T10:00:00"),
        ("time", "25:00"),
        ("time", "2024-01-01"),
        ("date-time", "2024-13-01T00:00:00"),
        ("timestamp", "noon"),
        ("duration", "P"),
        ("duration", "PT"),
        ("duration", "P1DT"),
        ("duration", "1 hour"),
        ("duration", "P1Y"),
        ("duration", "P2M"),
    ],
)
def test_temporal_formats_reject_invalid_strings(fmt, text):
    message = validation_message(one({"type": "string", "format": fmt}), {"x": text})
    assert message == f"Parameter 'x': must be a valid {fmt} (format)"


def test_temporal_formats_accept_python_objects():
    compiled = params(
        {"name": "d", "type": "string", "format": "date"},
        {"name": "t", "type": "string", "format": "time"},
        {"name": "ts", "type": "string", "format": "date-time"},
        {"name": "dur", "type": "string", "format": "duration"},
    )
    values = {
        "d": dt.date(2024, 1, 1),
        "t": dt.time(1, 2),
        "ts": dt.datetime(2024, 1, 1, 5),
        "dur": dt.timedelta(hours=1),
    }
    assert compiled.validate(values) == values


def test_date_time_accepts_a_date_as_midnight():
    result = one({"type": "string", "format": "timestamp"}).validate({"x": dt.date(2024, 1, 1)})["x"]
    assert result == dt.datetime(2024, 1, 1)


def test_date_format_rejects_a_datetime_object():
    message = validation_message(one({"type": "string", "format": "date"}), {"x": dt.datetime(2024, 1, 1)})
    assert message == "Parameter 'x': must be a valid date (format)"


def test_date_format_rejects_other_types():
    message = validation_message(one({"type": "string", "format": "date"}), {"x": 20240101})
    assert message == "Parameter 'x': expected string, got integer (type)"


def test_plain_string_rejects_date_objects():
    message = validation_message(one({"type": "string"}), {"x": dt.date(2024, 1, 1)})
    assert message == "Parameter 'x': expected string, got date (type)"


def test_date_default_from_yaml_and_from_string_both_convert():
    raw = yaml(
        "- {name: a, type: string, format: date, default: 2024-01-01}\n"
        "- {name: b, type: string, format: date, default: '2024-01-02'}\n"
        "- {name: c, type: string, format: date-time, default: '2024-01-02T10:00:00Z'}\n"
    )
    result = CompiledParameters(parse_parameters(raw)).validate({})
    assert result == {
        "a": dt.date(2024, 1, 1),
        "b": dt.date(2024, 1, 2),
        "c": dt.datetime(2024, 1, 2, 10, tzinfo=dt.timezone.utc),
    }


def test_date_enum_compares_dates_not_text():
    compiled = one({"type": "string", "format": "date", "enum": ["2024-01-01", "2024-01-02"]})
    assert compiled.validate({"x": dt.date(2024, 1, 2)}) == {"x": dt.date(2024, 1, 2)}
    assert compiled.validate({"x": "2024-01-01"}) == {"x": dt.date(2024, 1, 1)}
    assert "(enum)" in validation_message(compiled, {"x": "2024-01-03"})


def test_string_keywords_apply_to_the_text_of_a_date():
    compiled = one({"type": "string", "format": "date", "pattern": "^2024-"})
    assert compiled.validate({"x": dt.date(2024, 5, 1)}) == {"x": dt.date(2024, 5, 1)}
    assert "(pattern)" in validation_message(compiled, {"x": dt.date(2023, 5, 1)})
    assert "(pattern)" in validation_message(compiled, {"x": "2023-05-01"})


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(0), "PT0S"),
        (dt.timedelta(days=1, hours=2), "P1DT2H"),
        (dt.timedelta(minutes=30), "PT30M"),
        (dt.timedelta(seconds=1.5), "PT1.5S"),
        (dt.timedelta(days=3), "P3D"),
        (dt.timedelta(hours=-1), "-PT1H"),
        (dt.timedelta(days=1, seconds=61, microseconds=5), "P1DT1M1.000005S"),
    ],
)
def test_duration_round_trip(delta, text):
    assert format_duration(delta) == text
    assert parse_duration(text) == delta


# ---------------------------------------------------------------------------------------------------------
# input validation: parameters, defaults, nesting


def test_unknown_and_missing_parameter_messages_are_exact():
    compiled = params({"name": "a", "type": "string"}, {"name": "b", "type": "integer", "default": 1})
    assert validation_message(compiled, {}) == "Required parameter missing: a"
    assert validation_message(compiled, None) == "Required parameter missing: a"
    assert validation_message(compiled, {"a": "x", "c": 1}) == "Unknown parameter: c"


def test_arguments_must_be_a_mapping():
    with pytest.raises(ValidationError):
        params({"name": "a", "type": "string"}).validate(["a"])  # type: ignore[arg-type]


def test_no_parameters():
    compiled = CompiledParameters([])
    assert compiled.validate(None) == {}
    assert compiled.validate({}) == {}
    assert validation_message(compiled, {"a": 1}) == "Unknown parameter: a"
    assert compiled.names == frozenset()


def test_validate_returns_a_new_dict_in_declaration_order():
    compiled = params(
        {"name": "a", "type": "integer"},
        {"name": "b", "type": "array", "items": {"type": "integer"}},
        {"name": "c", "type": "integer", "default": 3},
    )
    arguments = {"b": [1], "a": 1}
    result = compiled.validate(arguments)
    assert result == {"a": 1, "b": [1], "c": 3}
    assert list(result) == ["a", "b", "c"]
    assert result is not arguments and result["b"] is not arguments["b"]
    assert arguments == {"b": [1], "a": 1}


def test_names():
    assert params({"name": "a", "type": "string"}, {"name": "b", "type": "string"}).names == {"a", "b"}


def test_mutable_defaults_are_not_shared_between_calls():
    compiled = params(
        {"name": "tags", "type": "array", "items": {"type": "string"}, "default": ["a"]},
        {"name": "opts", "type": "object", "default": {"k": [1]}},
    )
    first = compiled.validate({})
    first["tags"].append("b")
    first["opts"]["k"].append(2)
    second = compiled.validate({})
    assert second == {"tags": ["a"], "opts": {"k": [1]}}


def test_explicit_null_takes_the_default():
    compiled = params({"name": "limit", "type": "integer", "default": 10})
    assert compiled.validate({"limit": None}) == {"limit": 10}


def test_explicit_null_for_required_parameter_is_a_type_error():
    message = validation_message(params({"name": "a", "type": "integer"}), {"a": None})
    assert message == "Parameter 'a': expected integer, got null (type)"


def test_nested_paths_in_messages():
    compiled = params(
        {
            "name": "people",
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "address": {
                        "type": "object",
                        "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["zip"],
                    },
                },
                "required": ["name"],
            },
        }
    )
    ok = [{"name": "a", "address": {"zip": "12345"}}]
    assert compiled.validate({"people": ok}) == {"people": ok}
    people = [{"name": "a"}, {"name": "b"}, {"name": ""}]
    assert validation_message(compiled, {"people": people}) == (
        "Parameter 'people[2].name': must be at least 1 characters long (minLength)"
    )
    people = [{"name": "a", "address": {"zip": "1"}}]
    assert validation_message(compiled, {"people": people}) == (
        "Parameter 'people[0].address.zip': does not match pattern '^[0-9]{5}$' (pattern)"
    )
    people = [{"name": "a", "address": {}}]
    assert validation_message(compiled, {"people": people}) == (
        "Parameter 'people[0].address': missing required property 'zip' (required)"
    )
    assert validation_message(compiled, {"people": [{}]}) == (
        "Parameter 'people[0]': missing required property 'name' (required)"
    )


def test_nested_values_are_converted_and_defaults_filled():
    compiled = one(
        {
            "type": "object",
            "properties": {
                "day": {"type": "string", "format": "date"},
                "count": {"type": "integer", "default": 1},
                "labels": {"type": "array", "default": []},
            },
        }
    )
    first = compiled.validate({"x": {"day": "2024-01-01", "extra": "kept"}})
    assert first == {"x": {"day": dt.date(2024, 1, 1), "extra": "kept", "count": 1, "labels": []}}
    first["x"]["labels"].append(1)
    assert compiled.validate({"x": {}})["x"]["labels"] == []
    assert compiled.validate({"x": {"count": None}})["x"]["count"] == 1


def test_array_items_are_converted():
    compiled = one({"type": "array", "items": {"type": "string", "format": "date"}})
    assert compiled.validate({"x": ["2024-01-01", "2024-01-02"]}) == {
        "x": [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    }


def test_tuples_are_arrays_and_come_back_as_lists():
    assert one({"type": "array"}).validate({"x": (1, 2)}) == {"x": [1, 2]}


def test_regexes_are_compiled_once_not_per_call(monkeypatch):
    compiled = params(
        {"name": "a", "type": "string", "pattern": "^a"},
        {"name": "b", "type": "string", "format": "email"},
    )

    def no_compile(*args, **kwargs):
        raise AssertionError("re.compile called during validation")

    monkeypatch.setattr(typesystem.re, "compile", no_compile)
    assert compiled.validate({"a": "abc", "b": "x@y.z"}) == {"a": "abc", "b": "x@y.z"}


def test_invalid_default_on_a_directly_built_spec_fails_at_compile_time():
    spec = ParameterSpec("a", TypeSpec(type="integer", default="x"))
    with pytest.raises(ValueError, match="default of parameter 'a'"):
        CompiledParameters([spec])


# ---------------------------------------------------------------------------------------------------------
# sensitive values


SECRET = "hunter2-very-secret"


@pytest.mark.parametrize(
    "raw_type",
    [
        {"type": "string", "minLength": 50},
        {"type": "string", "maxLength": 3},
        {"type": "string", "pattern": "^x"},
        {"type": "string", "enum": ["a", "b"]},
        {"type": "string", "format": "email"},
        {"type": "string", "format": "date"},
        {"type": "integer"},
        {"type": "array"},
        {"type": "object"},
    ],
)
def test_sensitive_values_never_appear_in_messages(raw_type):
    message = validation_message(one({**raw_type, "sensitive": True}), {"x": SECRET})
    assert SECRET not in message
    assert "hunter2" not in message


def test_sensitive_enum_does_not_list_the_allowed_values():
    message = validation_message(one({"type": "string", "enum": ["k1", "k2"], "sensitive": True}), {"x": "z"})
    assert message == "Parameter 'x': must be one of the allowed values (enum)"


def test_sensitive_parent_hides_nested_keys_and_values():
    compiled = one(
        {
            "type": "object",
            "sensitive": True,
            "properties": {"token": {"type": "string", "pattern": "^t"}},
            "additionalProperties": False,
        }
    )
    assert SECRET not in validation_message(compiled, {"x": {"token": SECRET}})
    message = validation_message(compiled, {"x": {SECRET: 1}})
    assert SECRET not in message
    assert "(additionalProperties)" in message


def test_non_sensitive_values_are_not_echoed_either():
    message = validation_message(one({"type": "integer", "minimum": 10}), {"x": 3})
    assert message == "Parameter 'x': must be >= 10 (minimum)"


def test_redact_parameters():
    compiled = params(
        {"name": "user", "type": "string"},
        {"name": "password", "type": "string", "sensitive": True},
        {
            "name": "config",
            "type": "object",
            "properties": {
                "api_key": {"type": "string", "sensitive": True},
                "items": {"type": "array", "items": {"type": "object", "properties": {
                    "pin": {"type": "integer", "sensitive": True}}}},
            },
        },
    )
    arguments = {
        "user": "bob",
        "password": SECRET,
        "config": {"api_key": SECRET, "region": "eu", "items": [{"pin": 1234, "n": 1}]},
        "undeclared": "kept",
    }
    redacted = compiled.redact(arguments)
    assert redacted == {
        "user": "bob",
        "password": REDACTED,
        "config": {"api_key": REDACTED, "region": "eu", "items": [{"pin": REDACTED, "n": 1}]},
        "undeclared": "kept",
    }
    assert arguments["password"] == SECRET  # the input is untouched
    assert SECRET not in json.dumps(redacted)


def test_redact_hides_values_of_unexpected_shape():
    compiled = one({"type": "object", "properties": {"k": {"type": "string", "sensitive": True}}})
    assert compiled.redact({"x": SECRET}) == {"x": REDACTED}
    assert compiled.redact({"x": None}) == {"x": None}


def test_redact_without_sensitive_parameters_is_a_copy():
    compiled = one({"type": "string"})
    arguments = {"x": "a"}
    redacted = compiled.redact(arguments)
    assert redacted == arguments and redacted is not arguments
    assert compiled.redact(None) == {}


# ---------------------------------------------------------------------------------------------------------
# input JSON schema


def test_json_schema_carries_every_keyword():
    raw = yaml(
        """
- name: code
  type: string
  description: The code
  pattern: "^[A-Z]{3}$"
  minLength: 3
  maxLength: 3
  enum: [ABC, DEF]
  default: ABC
  examples: [DEF]
- name: day
  type: string
  format: date
  default: 2024-01-01
- name: n
  type: number
  minimum: 0
  maximum: 10
  exclusiveMinimum: -1
  exclusiveMaximum: 11
  multipleOf: 0.5
- name: tags
  type: array
  items: {type: string, format: email}
  minItems: 1
  maxItems: 5
  uniqueItems: true
- name: obj
  type: object
  properties: {a: {type: integer}}
  required: [a]
  additionalProperties: false
- name: secret
  type: string
  sensitive: true
  default: s3cr3t
"""
    )
    schema = CompiledParameters(parse_parameters(raw)).json_schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["n", "tags", "obj"]
    props = schema["properties"]
    assert props["code"] == {
        "type": "string",
        "description": "The code",
        "enum": ["ABC", "DEF"],
        "default": "ABC",
        "examples": ["DEF"],
        "minLength": 3,
        "maxLength": 3,
        "pattern": "^[A-Z]{3}$",
    }
    assert props["day"] == {"type": "string", "format": "date", "default": "2024-01-01"}
    assert props["n"] == {
        "type": "number", "minimum": 0, "maximum": 10, "exclusiveMinimum": -1, "exclusiveMaximum": 11,
        "multipleOf": 0.5,
    }
    assert props["tags"] == {
        "type": "array", "items": {"type": "string", "format": "email"}, "minItems": 1, "maxItems": 5,
        "uniqueItems": True,
    }
    assert props["obj"] == {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
        "additionalProperties": False,
    }
    # sensitive: a writeOnly hint, no "sensitive" keyword, and the default is not advertised
    assert props["secret"] == {"type": "string", "writeOnly": True}
    json.dumps(schema)  # serialisable as is


def test_json_schema_is_a_fresh_copy():
    compiled = one({"type": "string"})
    compiled.json_schema()["properties"]["x"]["type"] = "integer"
    assert compiled.json_schema()["properties"]["x"]["type"] == "string"


def test_to_json_schema_of_untyped_spec():
    assert to_json_schema(TypeSpec(type=None, description="anything")) == {"description": "anything"}


# ---------------------------------------------------------------------------------------------------------
# return values


def test_return_kinds_and_output_schema_wrapping():
    none = CompiledReturn(None)
    assert (none.kind, none.output_schema(), none.wraps_result) == ("none", None, False)

    obj = CompiledReturn(parse_type({"type": "object", "properties": {"a": {"type": "integer"}}}))
    assert obj.kind == "object" and not obj.wraps_result
    assert obj.output_schema() == {"type": "object", "properties": {"a": {"type": "integer"}}}

    arr = CompiledReturn(parse_type({"type": "array", "items": {"type": "string"}}))
    assert arr.kind == "array" and arr.wraps_result
    assert arr.output_schema() == {
        "type": "object",
        "properties": {"result": {"type": "array", "items": {"type": "string"}}},
        "required": ["result"],
    }

    scalar = CompiledReturn(parse_type({"type": "integer", "description": "count"}))
    assert scalar.kind == "scalar" and scalar.wraps_result
    assert scalar.output_schema()["properties"]["result"] == {"type": "integer", "description": "count"}

    untyped = CompiledReturn(parse_type({"description": "whatever"}))
    assert untyped.kind == "none" and untyped.output_schema() is None


def test_return_validate_returns_the_value_unchanged():
    compiled = CompiledReturn(
        parse_type(
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "price": {"type": "number"},
                        "day": {"type": "string", "format": "date"},
                        "at": {"type": "string"},
                        "ok": {"type": "boolean"},
                    },
                    "required": ["id"],
                },
            }
        )
    )
    rows = [
        {"id": 1, "price": decimal.Decimal("9.99"), "day": dt.date(2024, 1, 1), "at": dt.datetime(2024, 1, 1),
         "ok": True},
        {"id": decimal.Decimal(2), "price": None, "day": "2024-01-02", "at": None, "ok": None},
    ]
    assert compiled.validate(rows) is rows


def test_return_validate_errors_have_paths():
    compiled = CompiledReturn(
        parse_type(
            {
                "type": "array",
                "items": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                          "additionalProperties": False},
            }
        )
    )
    with pytest.raises(ValidationError) as info:
        compiled.validate([{"id": 1}, {"id": "x"}])
    assert str(info.value) == "Return value: [1].id: expected integer, got string (type)"
    with pytest.raises(ValidationError) as info:
        compiled.validate([{}])
    assert str(info.value) == "Return value: [0]: missing required property 'id' (required)"
    with pytest.raises(ValidationError) as info:
        compiled.validate([{"id": 1, "other": 2}])
    assert "(additionalProperties)" in str(info.value)
    with pytest.raises(ValidationError) as info:
        compiled.validate({"id": 1})
    assert str(info.value) == "Return value: expected array, got object (type)"


def test_return_scalar_validation():
    compiled = CompiledReturn(parse_type({"type": "integer", "minimum": 0}))
    assert compiled.validate(5) == 5
    assert compiled.validate(decimal.Decimal("5")) == decimal.Decimal("5")
    with pytest.raises(ValidationError, match=r"^Return value: must be >= 0 \(minimum\)$"):
        compiled.validate(-1)
    with pytest.raises(ValidationError, match="expected integer, got number"):
        compiled.validate(1.5)
    with pytest.raises(ValidationError, match="expected integer, got boolean"):
        compiled.validate(True)


def test_return_enum_matches_dates_given_as_objects():
    compiled = CompiledReturn(parse_type({"type": "string", "format": "date", "enum": ["2024-01-01"]}))
    assert compiled.validate(dt.date(2024, 1, 1)) == dt.date(2024, 1, 1)
    with pytest.raises(ValidationError, match="enum"):
        compiled.validate(dt.date(2024, 1, 2))


def test_return_sensitive_values_are_not_echoed_and_are_redacted():
    compiled = CompiledReturn(
        parse_type(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "ssn": {"type": "string", "sensitive": True, "pattern": "^[0-9]{3}-"},
                    "salary": {"type": "number", "sensitive": True},
                },
            }
        )
    )
    with pytest.raises(ValidationError) as info:
        compiled.validate({"name": "a", "ssn": SECRET})
    assert SECRET not in str(info.value)
    assert str(info.value).startswith("Return value: ssn: ")
    value = {"name": "a", "ssn": SECRET, "salary": 100}
    assert compiled.redact(value) == {"name": "a", "ssn": REDACTED, "salary": REDACTED}
    assert value["ssn"] == SECRET
    assert compiled.sensitive_fields() == {"ssn", "salary"}


def test_return_sensitive_fields_of_rows():
    compiled = CompiledReturn(
        parse_type({"type": "array", "items": {"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "string", "sensitive": True}}}})
    )
    assert compiled.sensitive_fields() == {"b"}
    assert compiled.redact([{"a": 1, "b": 2}]) == [{"a": 1, "b": REDACTED}]
    assert CompiledReturn(None).sensitive_fields() == set()
    assert CompiledReturn(None).redact({"a": 1}) == {"a": 1}


def test_return_whole_value_sensitive():
    compiled = CompiledReturn(parse_type({"type": "string", "sensitive": True}))
    assert compiled.redact(SECRET) == REDACTED
    assert compiled.output_schema()["properties"]["result"]["writeOnly"] is True


# ---------------------------------------------------------------------------------------------------------
# to_jsonable


class Colour(enum.Enum):
    RED = "red"


class FakeNumpyScalar:
    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


class FakeNumpyArray:
    def item(self):
        raise ValueError("can only convert an array of size 1")

    def tolist(self):
        return [1, 2]


def test_to_jsonable_returns_plain_json_as_is():
    data = {"a": [1, 2.5, "x", None, True, {"b": []}]}
    assert to_jsonable(data) is data
    assert to_jsonable("x") == "x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc), "2024-01-02T00:00:00+00:00"),
        (dt.time(3, 4), "03:04:00"),
        (dt.timedelta(days=1, hours=2), "P1DT2H"),
        (decimal.Decimal("3"), 3),
        (decimal.Decimal("3.50"), 3.5),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        (b"hi", "aGk="),
        (bytearray(b"hi"), "aGk="),
        ((1, 2), [1, 2]),
        (frozenset({1}), [1]),
        (Colour.RED, "red"),
        (FakeNumpyScalar(7), 7),
        (FakeNumpyScalar(dt.date(2024, 1, 1)), "2024-01-01"),
        (FakeNumpyArray(), [1, 2]),
    ],
)
def test_to_jsonable_conversions(value, expected):
    result = to_jsonable(value)
    assert result == expected
    assert type(result) is type(expected)


def test_to_jsonable_recurses_and_stringifies_keys():
    value = {1: (dt.date(2024, 1, 1),), "ok": [decimal.Decimal("1.5"), {"d": dt.time(1)}], None: True}
    result = to_jsonable(value)
    assert result == {"1": ["2024-01-01"], "ok": [1.5, {"d": "01:00:00"}], "null": True}
    json.dumps(result)
    assert value[1] == (dt.date(2024, 1, 1),)  # the input is untouched


def test_to_jsonable_rebuilds_only_what_changed():
    unchanged = {"x": 1}
    rows = [unchanged, {"d": dt.date(2024, 1, 1)}]
    result = to_jsonable(rows)
    assert result is not rows
    assert result[0] is unchanged
    assert result[1] == {"d": "2024-01-01"}


def test_to_jsonable_unknown_objects_become_strings():
    class Thing:
        def __str__(self):
            return "thing"

    assert to_jsonable(Thing()) == "thing"
