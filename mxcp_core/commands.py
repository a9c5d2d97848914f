"""What a plugin's command needs (`register_commands`): the shared options, the project, the output envelope.

```python
from mxcp_core import commands

def hello(profile: commands.ProfileOpt = None, json_output: commands.JsonOpt = False,
          debug: commands.DebugOpt = False) -> None:
    \"\"\"Say hello to the project.\"\"\"
    with commands.reporting_errors(json_output, debug):     # logging to stderr, errors as one message, exit 1
        project = commands.open_project(profile)            # on the invocation's plugin host
        commands.ok({"project": project.context.name}, json_output,
                    lambda result: commands.console().print(f"hello {result['project']}"))
```
With `--json-output` a command prints `{"status": "ok", "result": ...}` or `{"status": "error", "error": ...}`.
"""
from __future__ import annotations

from .cli.options import DebugOpt, JsonOpt, ProfileOpt, ReadonlyOpt, plural, short
from .cli.options import load as open_project
from .cli.output import console, emit_json, fail, ok, reporting_errors

__all__ = [
    "DebugOpt", "JsonOpt", "ProfileOpt", "ReadonlyOpt", "console", "emit_json", "fail", "ok", "open_project",
    "plural", "reporting_errors", "short",
]
