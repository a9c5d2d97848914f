"""Plugin `example_tools`: a tool defined in Python alone (no YAML, no executor): `function=` runs it.

Parameters and return type are declared in the same vocabulary as endpoint YAML, so the tool gets the same
argument validation, JSON schema and result checking as any other.
"""
from __future__ import annotations

from mxcp_core import ToolDefinition, hookimpl, parse_parameters, parse_type

from .functions import slugify

PARAMETERS = parse_parameters([
    {"name": "text", "type": "string", "description": "Text to analyse", "maxLength": 10000},
    {"name": "top", "type": "integer", "description": "How many frequent words", "default": 3,
     "minimum": 1, "maximum": 20},
])

RETURNS = parse_type({
    "type": "object",
    "properties": {
        "words": {"type": "integer"},
        "unique": {"type": "integer"},
        "slug": {"type": "string"},
        "top_words": {
            "type": "array",
            "items": {"type": "object", "properties": {"word": {"type": "string"}, "count": {"type": "integer"}}},
        },
    },
})


def word_stats(text: str, top: int = 3) -> dict:
    words = [w for w in slugify(text).split("-") if w]
    counts: dict[str, int] = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    return {
        "words": len(words),
        "unique": len(counts),
        "slug": "-".join(words[:8]),
        "top_words": [{"word": w, "count": c} for w, c in ranked],
    }


@hookimpl
def provide_tool(project):
    return [
        ToolDefinition(
            name="word_stats",
            description="Count the words of a text and list the most frequent ones.",
            parameters=PARAMETERS,
            return_type=RETURNS,
            function=word_stats,
            annotations={"title": "Word statistics", "readOnlyHint": True},
            tags=("text",),
        )
    ]
