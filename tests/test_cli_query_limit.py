"""`mxcp query` prints at most `--limit` rows (1000 by default) and says how many it left out: real subprocesses."""
from __future__ import annotations

import io
import json

import pytest

from mxcp_core.cli.output import print_table


@pytest.fixture
def project(make_project, tmp_path):
    return make_project(tmp_path / "p")


def query(run_mxcp, project, *args):
    done = run_mxcp("query", *args, cwd=project)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a printed table (the lines between `│`)."""
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in stdout.splitlines()
            if line.startswith("│")]


def test_a_long_result_prints_the_default_limit_and_counts_the_rest(run_mxcp, project):
    done = query(run_mxcp, project, "SELECT range AS n FROM range(100000)")
    assert done.returncode == 0
    rows = table_rows(done.stdout)
    assert len(rows) == 1000 and rows[0] == ["0"] and rows[-1] == ["999"]
    assert "1000 rows printed, 99000 more left out" in done.stderr


def test_json_output_says_truncated_and_how_many_rows_were_omitted(run_mxcp, project):
    done = query(run_mxcp, project, "SELECT range AS n FROM range(2500)", "--limit", "10", "--json-output")
    payload = json.loads(done.stdout)
    assert payload == {"status": "ok", "result": [{"n": i} for i in range(10)], "truncated": True,
                       "rows_omitted": 2490}


def test_a_result_within_the_limit_is_whole_and_says_nothing(run_mxcp, project):
    payload = json.loads(query(run_mxcp, project, "SELECT range AS n FROM range(1000)", "--json-output").stdout)
    assert payload.keys() == {"status", "result"} and len(payload["result"]) == 1000
    done = query(run_mxcp, project, "SELECT range AS n FROM range(3)", "--limit", "3")
    assert [row for row in table_rows(done.stdout)] == [["0"], ["1"], ["2"]]
    assert "left out" not in done.stderr


def test_limit_zero_prints_every_row_and_a_negative_limit_is_refused(run_mxcp, project):
    done = query(run_mxcp, project, "SELECT range AS n FROM range(1500)", "--limit", "0")
    assert len(table_rows(done.stdout)) == 1500 and "left out" not in done.stderr
    refused = run_mxcp("query", "SELECT 1", "--limit", "-1", cwd=project)
    assert refused.returncode == 2 and "--limit" in refused.stderr


def test_cells_show_nulls_and_escape_control_characters(run_mxcp, project):
    done = query(run_mxcp, project, "SELECT 'a' || chr(10) || chr(27) || '[31mb' AS text, NULL AS nothing")
    assert table_rows(done.stdout) == [["a\\n\\x1b[31mb", "NULL"]]
    assert "\x1b" not in done.stdout


def test_an_error_past_the_printed_rows_is_one_sql_error(run_mxcp, project):
    # The cast fails far past the first ten rows (DuckDB streams: the first rows come before it fails), so
    # counting the rest meets it, and says so like any SQL error, never with part of the rows.
    done = run_mxcp("query", "SELECT CAST(CASE WHEN range < 900000 THEN '1' ELSE 'x' END AS INTEGER) AS v "
                    "FROM range(1000000)", "--limit", "10", "--json-output", cwd=project)
    payload = json.loads(done.stdout)
    assert done.returncode == 1
    assert payload == {"status": "error", "error": "SQL error: Conversion Error: Could not convert string 'x' to INT32"}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_table_fits_its_width_and_the_header_is_bold(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    screen = Terminal()
    print_table(["name", "description"], [["short", "a description far longer than the terminal is wide"]],
                title="demo (default)", stream=screen, shrink_first=(1,))
    shown = screen.getvalue().replace("\x1b[1m", "").replace("\x1b[3m", "").replace("\x1b[0m", "")
    assert max(len(line) for line in shown.splitlines()) == 40
    assert "│ short │ a description far longer th… │" in shown  # the description was cut, the name was not
    assert "\x1b[1mname" in screen.getvalue()
    piped = io.StringIO()  # not a terminal: whole rows, no colour
    print_table(["name"], [["x" * 100]], stream=piped)
    assert "x" * 100 in piped.getvalue() and "\x1b" not in piped.getvalue()


def test_limit_bounds_the_work_on_a_huge_result(make_project, tmp_path, run_mxcp):
    """Counting what is left out stops after a million rows: five rows of a hundred million come back at once."""
    root = make_project(tmp_path / "p")
    done = run_mxcp("query", "--limit", "5", "SELECT * FROM range(100000000)", cwd=root, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "5 rows printed, over 1,000,000 more left out" in done.stderr
    data = run_mxcp("query", "--limit", "5", "--json-output", "SELECT * FROM range(100000000)", cwd=root,
                    timeout=30)
    envelope = json.loads(data.stdout)
    assert envelope["rows_omitted"] == 1_000_001 and envelope["rows_omitted_exact"] is False
