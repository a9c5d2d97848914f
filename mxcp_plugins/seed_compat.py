"""Builtin plugin: SQL the seed documentation writes in SQLite's dialect runs on DuckDB as written.

The seed's cache pattern filters with `ts > datetime('now', '-1 hour')`; DuckDB has no `datetime(text,
modifier)`. This registers `datetime(value, modifier)` returning a TIMESTAMP: `value` is `'now'` (the current
local time, like DuckDB's `current_timestamp::TIMESTAMP`) or a date/timestamp text; `modifier` is one of
SQLite's `'±N unit'` (seconds, minutes, hours, days, months, years), `'start of day|month|year'`.

It is a Python function rather than a macro because DuckDB keeps temporary macros per connection, and each
call runs on its own cursor; Python functions belong to the database and every cursor sees them. DuckDB
allows one Python function per name, so the one-argument `datetime('now')` is not provided.
"""
from __future__ import annotations

import calendar
import datetime as dt
import re

from mxcp_core import create_function, hookimpl

_MODIFIER = re.compile(
    r"^\s*([+-]?)\s*(\d+(?:\.\d*)?|\.\d+)\s+(second|minute|hour|day|month|year)s?\s*$", re.IGNORECASE
)
_START_OF = re.compile(r"^\s*start\s+of\s+(day|month|year)\s*$", re.IGNORECASE)


def sqlite_datetime(value: str, modifier: str) -> dt.datetime:
    """SQLite's `datetime(value, modifier)` as a timestamp (naive, local time for 'now')."""
    return apply_modifier(parse_value(value), modifier)


def parse_value(value: str) -> dt.datetime:
    text = value.strip()
    if text.lower() == "now":
        return dt.datetime.now()
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"datetime(): cannot read {text!r} as a date or timestamp (or 'now')") from None
    return parsed.replace(tzinfo=None) if parsed.tzinfo is None else parsed.astimezone().replace(tzinfo=None)


def apply_modifier(moment: dt.datetime, modifier: str) -> dt.datetime:
    start = _START_OF.match(modifier)
    if start:
        unit = start.group(1).lower()
        day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if unit == "day":
            return day_start
        if unit == "month":
            return day_start.replace(day=1)
        return day_start.replace(month=1, day=1)
    match = _MODIFIER.match(modifier)
    if not match:
        raise ValueError(
            f"datetime(): unsupported modifier {modifier!r} (use '±N seconds|minutes|hours|days|months|years' "
            "or 'start of day|month|year')"
        )
    sign = -1 if match.group(1) == "-" else 1
    amount = float(match.group(2)) * sign
    unit = match.group(3).lower()
    if unit in ("month", "year"):
        if amount != int(amount):
            raise ValueError(f"datetime(): {unit}s must be a whole number in {modifier!r}")
        return _add_months(moment, int(amount) * (12 if unit == "year" else 1))
    return moment + dt.timedelta(**{f"{unit}s": amount})


def _add_months(moment: dt.datetime, months: int) -> dt.datetime:
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


@hookimpl(trylast=True)
def register_functions(conn, project):
    # A project's own `datetime` function (registered earlier: this runs last) wins.
    # fetchall: DuckDB refuses more work on a connection with a result left unread.
    existing = conn.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name = 'datetime'").fetchall()
    if existing[0][0]:
        return
    # side_effects: 'now' must be read when the query runs, not folded once into a cached plan.
    create_function(
        conn, "datetime", sqlite_datetime, ["VARCHAR", "VARCHAR"], "TIMESTAMP",
        origin="plugin 'seed_compat'", side_effects=True,
    )
