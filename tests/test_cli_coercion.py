"""Option values coerced without pydantic (mxcp_core.cli.coercion) give exactly what Typer's own adapters give.

Differential: the same Typer parameters coerce the same values both ways; results and error messages must agree.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer

from mxcp_core.cli import coercion

pytestmark = pytest.mark.skipif(coercion._plain_class() is None,
                                reason=f"Typer {typer.__version__} keeps its own coercion")


def _params():
    app = typer.Typer()

    @app.command()
    def command(
        text: Annotated[str | None, typer.Option()] = None,
        count: Annotated[int, typer.Option()] = 3,
        ratio: Annotated[float | None, typer.Option()] = None,
        flag: Annotated[bool, typer.Option()] = False,
        where: Annotated[Path | None, typer.Option()] = None,
        must_exist: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
        many: Annotated[list[str] | None, typer.Option()] = None,
        bounded: Annotated[int, typer.Option(min=1, max=5)] = 2,
        clamped: Annotated[float, typer.Option(min=0, max=1.5, clamp=True)] = 0.5,
        at_least: Annotated[int, typer.Option(min=0)] = 1000,
    ) -> None:
        """Template."""

    command = typer.main.get_command(app)
    return {p.name: p for p in command.params}, typer.Context(command)


def _outcome(param, value, ctx):
    try:
        result = param.get_runtime_param().coerce(value, param=param, ctx=ctx)
    except Exception as exc:  # noqa: BLE001 - the exception itself is compared
        return ("error", type(exc).__name__, str(getattr(exc, "message", exc)))
    return ("ok", type(result).__name__, repr(result))  # repr: nan equals nan


VALUES = {
    "text": ["abc", "", " x ", "\udcff", "ü", None, 5],
    "count": ["12", "-0", "007", "1_000", " 5 ", "+5", "1.0", "1.5", "abc", "", "١٢", "9" * 30, "-", 4, None, True],
    "ratio": ["1.5", "-0", ".5", "5.", "1e3", "nan", "1_0.5", "abc", "", "١.٥", "0.1", "123456789.123456789", 2.5,
              2, None],
    "flag": [True, False, "true", "no", "1", "maybe", "", None],
    "where": ["a/b", "a/b/", "./x", "", ".", "/", "-", "~/x", "a\x00b", "\udcff", Path("x"), None, 3],
    "must_exist": ["/definitely/not/here", "/tmp", __file__, __file__ + "/", "./" + Path(__file__).name, None],
    "many": [("a", "b"), ["x"], (), ("a", 1), None, "ab"],
    "bounded": ["3", "1", "5", "0", "9", "-2", "abc", "2.0", 4, 7, None],
    "clamped": ["0.5", "1.5", "2", "-1", "1e9", 0.25, 3.0, None],
    "at_least": ["0", "-1", "1000", "5", 1000, None],
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_fast_coercion_matches_typer(name, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent)
    typer_params, typer_ctx = _params()
    ours, ctx = _params()
    coercion.speed_up(ours[name])
    assert type(ours[name]._runtime_param).__name__ == "PlainRuntimeParam"
    for value in VALUES[name]:
        assert _outcome(ours[name], value, ctx) == _outcome(typer_params[name], value, typer_ctx), value


def test_a_plain_command_imports_no_pydantic(tmp_path):
    script = ("import sys; sys.argv = ['mxcp', 'list', '--profile', 'default', '-C', '.']\n"
              "from mxcp_core.cli import main\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print('pydantic' in sys.modules)")
    (tmp_path / "mxcp-site.yml").write_text("mxcp: 1\nproject: p\nprofile: default\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"
