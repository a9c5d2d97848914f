"""`from mxcp.runtime import db, config, get_secret, on_init, on_shutdown, reload_duckdb, plugins, user, mcp`."""
from mxcp_core.notifications import mcp, mcp_log, report_progress
from mxcp_core.runtime_api import (
    config,
    db,
    get_secret,
    get_user_context,
    on_init,
    on_shutdown,
    plugins,
    reload_duckdb,
    user,
)

__all__ = ["config", "db", "get_secret", "get_user_context", "mcp", "mcp_log", "on_init", "on_shutdown", "plugins",
           "reload_duckdb", "report_progress", "user"]
