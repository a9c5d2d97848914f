"""Wall time of `mxcp --help` and `mxcp list` on a freshly bootstrapped project.

Usage: python bench/cli_startup.py [RUNS]   (default 5 runs each; prints min / median / max in ms)
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def mxcp_command() -> list[str]:
    script = Path(sys.executable).parent / "mxcp"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from mxcp_core.cli import main; main()"]


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([*mxcp_command(), *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    work = Path(tempfile.mkdtemp(prefix="mxcp-bench-"))
    try:
        env = {**os.environ, "HOME": str(work / "home")}  # no user config of the developer's
        env.pop("MXCP_CONFIG", None)
        # As an installed project runs: with bytecode caches (kept out of the source tree).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        subprocess.run([*mxcp_command(), "init", "--bootstrap", "demo"], cwd=work, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        demo = work / "demo"
        timed(["list"], demo, env)  # warm the filesystem and bytecode caches once
        for args in (["--help"], ["list"]):
            times = [timed(args, demo, env) for _ in range(runs)]
            print(f"mxcp {' '.join(args):7s} min {min(times):6.0f} ms  median {statistics.median(times):6.0f} ms  "
                  f"max {max(times):6.0f} ms  ({runs} runs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
