"""Option values of plain types coerced without pydantic (a speed-up of startup; results and messages unchanged).

Typer 0.29 turns every parameter's value into its annotation through a pydantic TypeAdapter, built on first use:
importing pydantic and building the adapters costs ~40-90 ms on each run of a command, for values that are almost
always `None`, `False` or a plain string. For the plain annotations (str, int, float, bool, Path, list[str]; no
`parser`, no `path_type`) a value in its ordinary form (an ASCII decimal within the option's `min`/`max` for a
number, a string that `Path()` keeps as written for a path, whose checks are Typer's own `coerce_cli_path`...) is
coerced here directly, exactly as Typer's adapter would coerce it. Any other value (a malformed or out-of-range
number, an unusual path spelling) goes to Typer's own adapter, built on demand: results and error messages are
Typer's, word for word.

Only for the Typer releases whose internals this mirrors (`KNOWN_TYPER`); with any other release every parameter
keeps Typer's own coercion.
"""
from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

KNOWN_TYPER = "0.29."

# What pydantic parses into the same number as int()/float() do (pydantic accepts more: "1_000", " 5 ", "1e3",
# all of which go to its adapter). Bounded lengths: int() refuses very long digit strings.
_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,15})?")

_UNHANDLED = object()


def _as_str(value: Any, param: Any, ctx: Any) -> Any:
    return value if type(value) is str else _UNHANDLED


def _as_bool(value: Any, param: Any, ctx: Any) -> Any:
    return value if type(value) is bool else _UNHANDLED


def _as_int(value: Any, param: Any, ctx: Any) -> Any:
    if type(value) is int:
        return value
    if type(value) is str and _INT.fullmatch(value):
        return int(value)
    return _UNHANDLED


def _as_float(value: Any, param: Any, ctx: Any) -> Any:
    if type(value) is float:
        return value
    if type(value) is str and _FLOAT.fullmatch(value):
        return float(value)
    return _UNHANDLED


def _as_str_list(value: Any, param: Any, ctx: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(type(item) is str for item in value):
        return list(value)
    return _UNHANDLED


@cache
def _typer_parts() -> tuple[Any, Any, Any] | None:
    """Typer's RuntimeParam, build_runtime_param and coerce_cli_path, if this is a Typer release we mirror."""
    try:
        import typer

        if not str(getattr(typer, "__version__", "")).startswith(KNOWN_TYPER):
            return None
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer._param_types import coerce_cli_path
    except (ImportError, AttributeError):
        return None
    return RuntimeParam, build_runtime_param, coerce_cli_path


@cache
def _plain_class() -> Any:
    parts = _typer_parts()
    if parts is None:
        return None
    runtime_param, build_runtime_param, coerce_cli_path = parts
    from dataclasses import dataclass

    def as_path(value: Any, param: Any, ctx: Any) -> Any:
        # Typer's path adapter: pydantic makes a Path of a string, then coerce_cli_path checks it (its messages
        # quote the value as given, hence only strings that Path() keeps as written).
        if type(value) is str:
            path = Path(value)
            if os.fspath(path) != value:
                return _UNHANDLED
            value = path
        elif type(value) is not type(Path()):
            return _UNHANDLED
        try:
            return coerce_cli_path(value, param.type_descriptor.parameter_info, path_type=Path, param=param,
                                   ctx=ctx)
        except ValueError:  # os.stat of a name with a NUL byte: the adapter words it (as a BadParameter)
            return _UNHANDLED

    @dataclass(frozen=True, eq=False)
    class PlainRuntimeParam(runtime_param):  # type: ignore[misc, valid-type]
        """Coercion of a plain annotation; values in an unusual form go to Typer's adapter."""

        descriptor: Any
        fast: Any
        adapter: list  # Typer's runtime param for this parameter, once built

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            result = self.fast(value, param, ctx)
            if result is not _UNHANDLED:
                return result
            if not self.adapter:
                self.adapter.append(build_runtime_param(self.descriptor))
            return self.adapter[0]._coerce_value(value, param=param, ctx=ctx)

    PlainRuntimeParam.as_path = staticmethod(as_path)
    return PlainRuntimeParam


def _fast_coercion(descriptor: Any) -> Any:
    """The direct coercion for this parameter's annotation, or None (Typer's adapter coerces it)."""
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or getattr(info, "parser", None) is not None:
        return None
    annotation = descriptor.annotation
    if annotation is str:
        return _as_str
    if annotation is bool:
        return _as_bool
    if annotation is int or annotation is float:
        number = _as_int if annotation is int else _as_float
        low, high = info.min, info.max
        if low is None and high is None:
            return number

        def bounded(value: Any, param: Any, ctx: Any) -> Any:
            # Within the bounds the adapter returns the number as parsed; outside them it refuses (or clamps).
            result = number(value, param, ctx)
            if result is _UNHANDLED or (low is not None and result < low) or (high is not None and result > high):
                return _UNHANDLED
            return result

        return bounded
    if annotation is Path:
        if getattr(info, "path_type", None) is not None:
            return None
        return _plain_class().as_path
    if annotation == list[str]:
        return _as_str_list
    return None


def speed_up(param: Any) -> None:
    """Give a Typer parameter the direct coercion of its plain annotation (nothing for any other parameter)."""
    if "_runtime_param" not in vars(param) or param._runtime_param is not None:
        return
    descriptor = getattr(param, "type_descriptor", None)
    plain = _plain_class()
    if descriptor is None or plain is None:
        return
    fast = _fast_coercion(descriptor)
    if fast is not None:
        param._runtime_param = plain(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation,
                                     descriptor=descriptor, fast=fast, adapter=[])
