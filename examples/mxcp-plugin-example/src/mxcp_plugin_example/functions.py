"""Plugin `example_functions`: a DuckDB function available to every SQL endpoint and `db.execute` call."""
from __future__ import annotations

import re
import unicodedata

from mxcp_core import hookimpl


def slugify(text: str | None) -> str | None:
    """`Hello, Wörld!` → `hello-world`: ASCII letters and digits joined by single hyphens."""
    if text is None:
        return None
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


@hookimpl
def register_functions(conn, project):
    # Called on every database open (reloads included). NULL in, NULL out: the function handles None itself.
    conn.create_function("slugify", slugify, ["VARCHAR"], "VARCHAR", null_handling="special")
