"""How commands print: Rich for people, `{"status": ..., "result"|"error": ...}` JSON for scripts."""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from ..environment import debug_enabled
from ..errors import MxcpError


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


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
