"""The core's own commands, added through `register_commands` like every plugin's (by the essential `core` plugin)."""
from __future__ import annotations

from typing import Any


def add_core_commands(cli: Any) -> None:
    from . import client_config, init_cmd, project_cmds, run_cmds, serve_cmd, test_cmd

    cli.command("init")(init_cmd.init)
    cli.command("list")(project_cmds.list_endpoints)
    cli.command("validate")(project_cmds.validate)
    cli.command("plugins")(project_cmds.plugins)
    cli.command("run")(run_cmds.run)
    cli.command("query")(run_cmds.query)
    cli.command("serve")(serve_cmd.serve)
    cli.command("test")(test_cmd.test)
    cli.command("client-config")(client_config.client_config)
