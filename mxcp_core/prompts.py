"""Rendering prompt messages: `{{ name }}` placeholders, full Jinja when the `jinja` extra is installed."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import ExecutionError

JINJA_EXTRA = "mxcp-pluggy[jinja]"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_JINJA_SYNTAX = re.compile(r"\{%|\{#|\{\{[^}]*[|.(\[]")


def render_text(template: str, values: Mapping[str, Any]) -> str:
    if _JINJA_SYNTAX.search(template):
        try:
            import jinja2
            import jinja2.sandbox
        except ImportError:
            raise ExecutionError(
                f"this prompt uses Jinja syntax beyond {{{{ name }}}}; install it with: pip install '{JINJA_EXTRA}'"
            ) from None
        env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        try:
            return env.from_string(template).render(**values)
        except jinja2.TemplateError as exc:
            raise ExecutionError(f"prompt template error: {exc}") from None

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ExecutionError(f"prompt uses '{name}', which is not a parameter")
        value = values[name]
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(substitute, template)


def render_messages(messages: Any, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """MCP-shaped messages: `{role, content: {type: text, text}}`."""
    return [
        {"role": m.get("role", "user"), "content": {"type": "text", "text": render_text(m.get("prompt", ""), values)}}
        for m in messages
    ]
