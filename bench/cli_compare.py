"""`mxcp list` and `mxcp validate` on a 100-endpoint project: this project against the original MXCP, in one run.

    python bench/cli_compare.py [--runs 7] [--original PATH] [--endpoints 100] [--keep DIR]

- `--original PATH`: the original's `mxcp` executable. Without it, the original (`mxcp==0.12.3` with
  `dbt-core<1.11`, from PyPI) is installed once into a virtualenv under the cache folder
  (`$XDG_CACHE_HOME/mxcp-bench/original-0.12.3`, default `~/.cache/...`; `MXCP_BENCH_CACHE` overrides it) and
  reused afterwards. That is the only step that needs the network.
- The generated project mixes SQL and Python tools, SQL resources (templated URIs) and prompts, all with
  parameters and return types, and is valid for both implementations: both `mxcp validate` runs must succeed
  before anything is timed.
- Each command runs `--runs` times per implementation, alternating (ours, original, ours, ...) after one warm-up
  each, with no user config (a fresh HOME), bytecode caches kept outside the projects, and the original's usage
  analytics off (`MXCP_DISABLE_ANALYTICS=1`: it would otherwise try to reach its analytics host on every command).
Prints the medians (wall time, and CPU time: user + system of the command's processes, steadier when other work
shares the machine) and the ratios original / ours. Not a test: nothing here asserts on speed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORIGINAL_REQUIREMENTS = ["mxcp==0.12.3", "dbt-core<1.11"]


def ours_command() -> list[str]:
    script = Path(sys.executable).parent / "mxcp"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from mxcp_core.cli import main; main()"]


def cache_folder() -> Path:
    given = os.environ.get("MXCP_BENCH_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mxcp-bench"


def original_command(given: str | None) -> list[str]:
    """The original's `mxcp`: the given path, else a cached virtualenv (installed on first use)."""
    if given:
        return [given]
    venv = cache_folder() / "original-0.12.3"
    script = venv / "bin" / "mxcp"
    if script.exists():
        return [str(script)]
    print(f"Installing the original MXCP ({' '.join(ORIGINAL_REQUIREMENTS)}) into {venv} (once; needs PyPI)...",
          file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *ORIGINAL_REQUIREMENTS],
                   check=True)
    return [str(script)]


SQL_TOOL = """\
mxcp: 1
tool:
  name: sql_tool_{i}
  description: "Orders of customer {i}, filtered by status and a minimum amount."
  tags: [sales, generated]
  annotations: {{readOnlyHint: true, idempotentHint: true}}
  parameters:
    - name: customer_id
      type: integer
      description: "The customer"
      minimum: 1
    - name: status
      type: string
      description: "Order status"
      enum: [open, shipped, closed]
      default: open
    - name: min_amount
      type: number
      description: "Smallest amount to include"
      default: 0
  return:
    type: array
    items:
      type: object
      properties:
        order_id: {{type: integer, description: "Order number"}}
        customer_id: {{type: integer}}
        status: {{type: string}}
        amount: {{type: number}}
        note: {{type: string}}
  source:
    code: |
      SELECT range AS order_id, $customer_id AS customer_id, $status AS status,
             range * 1.5 + {i} AS amount, 'order ' || range AS note
      FROM range(10)
      WHERE range * 1.5 + {i} >= $min_amount
"""

PY_TOOL = """\
mxcp: 1
tool:
  name: py_tool_{i}
  description: "Scores a piece of text (Python tool {i})."
  tags: [text, generated]
  language: python
  parameters:
    - name: text
      type: string
      description: "The text to score"
      minLength: 1
      maxLength: 1000
    - name: weight
      type: number
      description: "A factor"
      default: 1.0
    - name: labels
      type: array
      items: {{type: string}}
      default: []
  return:
    type: object
    properties:
      score: {{type: number}}
      words: {{type: integer}}
      labels: {{type: array, items: {{type: string}}}}
  source:
    file: ../python/py_tools_{module}.py
"""

PY_FUNCTION = '''

def py_tool_{i}(text: str, weight: float = 1.0, labels: list | None = None) -> dict:
    words = len(text.split())
    return {{"score": words * weight + {i}, "words": words, "labels": list(labels or [])}}
'''

RESOURCE = """\
mxcp: 1
resource:
  uri: "items{i}://{{item_id}}"
  description: "Item {i} by id."
  mime_type: application/json
  language: sql
  parameters:
    - name: item_id
      type: string
      description: "The item"
  return:
    type: object
    properties:
      id: {{type: string}}
      label: {{type: string}}
      size: {{type: integer}}
  source:
    code: "SELECT $item_id AS id, 'item ' || $item_id AS label, {i} AS size"
"""

PROMPT = """\
mxcp: 1
prompt:
  name: prompt_{i}
  description: "Ask for a summary (prompt {i})."
  tags: [writing]
  parameters:
    - name: topic
      type: string
      description: "What to summarise"
    - name: sentences
      type: integer
      description: "How many sentences"
      default: 2
  messages:
    - role: user
      type: text
      prompt: "Summarise {{{{ topic }}}} in {{{{ sentences }}}} sentences (prompt {i})."
"""


def make_project(folder: Path, endpoints: int) -> Path:
    """A valid project of `endpoints` endpoints: 40 % SQL tools, 20 % Python tools, 25 % resources, the rest prompts."""
    sql_count = endpoints * 40 // 100
    py_count = endpoints * 20 // 100
    resource_count = endpoints * 25 // 100
    prompt_count = endpoints - sql_count - py_count - resource_count
    for name in ("tools", "resources", "prompts", "python"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "mxcp-site.yml").write_text("mxcp: 1\nproject: bench\nprofile: default\n", encoding="utf-8")
    for i in range(sql_count):
        (folder / "tools" / f"sql_tool_{i}.yml").write_text(SQL_TOOL.format(i=i), encoding="utf-8")
    modules: dict[int, list[str]] = {}
    for i in range(py_count):
        module = i // 5  # five functions to a module, as real projects group them
        (folder / "tools" / f"py_tool_{i}.yml").write_text(PY_TOOL.format(i=i, module=module), encoding="utf-8")
        modules.setdefault(module, []).append(PY_FUNCTION.format(i=i))
    for module, functions in modules.items():
        (folder / "python" / f"py_tools_{module}.py").write_text(
            f'"""Generated Python tools."""\n{"".join(functions)}', encoding="utf-8")
    for i in range(resource_count):
        (folder / "resources" / f"item_{i}.yml").write_text(RESOURCE.format(i=i), encoding="utf-8")
    for i in range(prompt_count):
        (folder / "prompts" / f"prompt_{i}.yml").write_text(PROMPT.format(i=i), encoding="utf-8")
    return folder


def run_once(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the command's processes) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}) in {cwd}:\n{done.stderr[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def check_valid(command: list[str], cwd: Path, env: dict[str, str], who: str) -> None:
    done = subprocess.run([*command, "validate"], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the generated project is not valid for {who}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")


def third_party_plugins(command: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run([*command, "plugins", "--json-output"], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True)
    return sorted(p["name"] for p in json.loads(done.stdout)["result"]["plugins"] if not p["builtin"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command and implementation")
    parser.add_argument("--original", help="the original MXCP's mxcp executable (default: a cached venv)")
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--keep", type=Path, help="generate the project into this (empty) folder and keep it")
    args = parser.parse_args()

    original = original_command(args.original)
    ours = ours_command()
    work = Path(tempfile.mkdtemp(prefix="mxcp-cli-compare-"))
    try:
        # The original writes its DuckDB file and logs into the project: each implementation gets its own copy.
        projects = {}
        for who in ("ours", "original"):
            target = (args.keep / who) if args.keep else (work / who)
            projects[who] = make_project(target, args.endpoints)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MXCP_")}
        env["HOME"] = str(work / "home")  # no user config of the developer's, for both
        env["MXCP_DISABLE_ANALYTICS"] = "1"  # the original would otherwise send usage analytics (and wait on DNS)
        (work / "home").mkdir()
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: with bytecode caches, kept out of the projects
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        # Ours as it ships: plugins of other distributions installed next to it (an example plugin in a dev
        # environment) are left out, as the original has none of them.
        envs = {"ours": dict(env), "original": env}
        others = third_party_plugins(ours, projects["ours"], env)
        if others:
            envs["ours"]["MXCP_DISABLE_PLUGINS"] = ",".join(others)
            print(f"(ours without the plugins of other distributions: {', '.join(others)})")
        commands = {"ours": ours, "original": original}
        for who, command in commands.items():
            check_valid(command, projects[who], envs[who], who)

        print(f"{args.endpoints} endpoints, {args.runs} runs each, alternating; medians per command, wall time and "
              "CPU time (user + system: steadier when other work shares the machine)")
        print(f"{'command':14s} {'ours wall':>10s} {'original wall':>14s} {'ratio':>6s}   "
              f"{'ours CPU':>9s} {'original CPU':>13s} {'ratio':>6s}")
        for verb in ("list", "validate"):
            runs: dict[str, list[tuple[float, float]]] = {"ours": [], "original": []}
            for who, command in commands.items():
                run_once([*command, verb], projects[who], envs[who])  # warm the file and bytecode caches
            for _ in range(args.runs):
                for who, command in commands.items():
                    runs[who].append(run_once([*command, verb], projects[who], envs[who]))
            wall = {who: statistics.median(r[0] for r in runs[who]) for who in runs}
            cpu = {who: statistics.median(r[1] for r in runs[who]) for who in runs}
            print(f"mxcp {verb:9s} {wall['ours'] * 1000:7.0f} ms {wall['original'] * 1000:11.0f} ms "
                  f"{wall['original'] / wall['ours']:5.1f}×   {cpu['ours'] * 1000:6.0f} ms "
                  f"{cpu['original'] * 1000:10.0f} ms {cpu['original'] / cpu['ours']:5.1f}×", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
