"""How commands print: Rich for people, `{"status": ..., "result"|"error": ...}` JSON for scripts."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from ..environment import debug_enabled
from ..errors import MxcpError


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def ends_the_process() -> None:
    """For a command after which the process exits (list, validate, query): leave its garbage to the exit.

    What is loaded by now (modules, plugins) is never garbage, so later collections skip it; and the interpreter's
    full collection at exit, which walks the whole heap (tens of ms after DuckDB and the plugins are loaded), is
    skipped. Nothing of these commands needs a finalizer to run at exit: they close their database and files.
    """
    import atexit
    import gc

    gc.freeze()
    atexit.register(gc.freeze)


def styled_output(stream: Any) -> bool:
    """Colours and bold only on a terminal, and never with NO_COLOR set or TERM=dumb (what Rich also honours)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def cell_text(value: Any, *, lines: bool = False) -> str:
    """A value as one table cell: control characters (escape sequences, newlines) shown escaped, never sent raw.

    `lines=True` keeps newlines and tabs (a message rather than a cell)."""
    text = "NULL" if value is None else str(value)
    control = _CONTROL_BUT_LINES if lines else _CONTROL
    return control.sub(lambda m: repr(m.group())[1:-1], text) if control.search(text) else text


def _cells(text: str) -> int:
    """Terminal columns `text` takes: two for wide East Asian characters, none for combining marks."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fit(text: str, width: int) -> str:
    """`text` padded to `width` columns, or cut with an ellipsis."""
    used = _cells(text)
    if used <= width:
        return text + " " * (width - used)
    kept, total = [], 0
    for char in text:
        size = _cells(char)
        if total + size > width - 1:
            break
        kept.append(char)
        total += size
    return "".join(kept) + "…" + " " * (width - 1 - total)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
                stream: Any = None, shrink_first: Sequence[int] = ()) -> None:
    """A table in Rich's default look (heavy header), one line per row, written in one go.

    Far cheaper than Rich's Table for hundreds of rows (no per-cell layout). On a terminal, wide columns are cut
    with an ellipsis to fit its width, the columns of `shrink_first` (indexes) before the others; into a pipe or
    a file, rows are never cut or wrapped, so grep sees whole rows. Cells must already be text (see `cell_text`).
    """
    stream = stream if stream is not None else sys.stdout
    style = styled_output(stream)
    widths = [max([_cells(c), *(_cells(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    if style:
        # Shrink the widest column, one column at a time, until the table fits (3 columns per cell of borders).
        room = shutil.get_terminal_size().columns - 3 * len(columns) - 1
        for candidates in (list(shrink_first), list(range(len(columns)))):
            while candidates and sum(widths) > room:
                widest = max(candidates, key=lambda i: widths[i])
                if widths[widest] <= 8:
                    break
                widths[widest] -= 1
    bold, italic, plain = ("\x1b[1m", "\x1b[3m", "\x1b[0m") if style else ("", "", "")
    lines = []
    if title:
        total = sum(widths) + 3 * len(widths) + 1
        lines.append(f"{italic}{cell_text(title).center(total).rstrip()}{plain}")
    lines.append("┏" + "┳".join("━" * (w + 2) for w in widths) + "┓")
    lines.append("┃" + "┃".join(f" {bold}{_fit(c, w)}{plain} " for c, w in zip(columns, widths)) + "┃")
    lines.append("┡" + "╇".join("━" * (w + 2) for w in widths) + "┩")
    lines.extend("│" + "│".join(f" {_fit(c, w)} " for c, w in zip(row, widths)) + "│" for row in rows)
    lines.append("└" + "┴".join("─" * (w + 2) for w in widths) + "┘")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def paint(text: str, colour: str, stream: Any) -> str:
    """`text` in a colour (red, green, yellow; `bold red`...) on a terminal, plain elsewhere."""
    if not styled_output(stream):
        return text
    codes = {"bold": "1", "red": "31", "green": "32", "yellow": "33"}
    return "\x1b[" + ";".join(codes[word] for word in colour.split()) + "m" + text + "\x1b[0m"


def to_json_text(value: Any) -> str:
    from ..typesystem import to_jsonable

    return json.dumps(to_jsonable(value), indent=2, ensure_ascii=False)


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(to_json_text(payload) + "\n")
    sys.stdout.flush()


def ok(result: Any, json_output: bool, render: Callable[[Any], None]) -> None:
    if json_output:
        emit_json({"status": "ok", "result": result})
    else:
        render(result)


def fail(message: str, json_output: bool, *, result: Any = None, code: int = 1) -> NoReturn:
    from ..redaction import mask

    message = mask(message)
    if json_output:
        payload: dict[str, Any] = {"status": "error", "error": message}
        if result is not None:
            payload["result"] = result
        emit_json(payload)
    else:
        from rich.markup import escape

        console(stderr=True).print(f"[bold red]Error:[/] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


def setup_logging(debug: bool) -> None:
    """Logs go to stderr (stdout may carry protocol frames or JSON); MXCP_DEBUG=1 turns on debug."""
    debug = debug_enabled(debug)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from .. import redaction

    redaction.install()


@contextmanager
def reporting_errors(json_output: bool, debug: bool = False) -> Iterator[None]:
    """Logging set up (stderr, secrets masked); framework errors become one clear message and exit code 1."""
    setup_logging(debug)
    try:
        yield
    except typer.Exit:
        raise
    except MxcpError as exc:
        fail(str(exc), json_output)
    except KeyboardInterrupt:
        fail("interrupted", json_output, code=130)
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback unless asked for
        if debug_enabled(debug):
            raise
        logging.getLogger("mxcp").debug("unexpected error", exc_info=True)
        fail(f"{type(exc).__name__}: {exc} (run with --debug for details)", json_output)
