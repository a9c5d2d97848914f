"""`from mxcp.runtime import db, config, get_secret, on_init, on_shutdown, reload_duckdb, plugins`."""
from mxcp_core.notifications import mcp_log, report_progress
from mxcp_core.runtime_api import (
    config,
    db,
    get_secret,
    on_init,
    on_shutdown,
    plugins,
    reload_duckdb,
)

__all__ = ["config", "db", "get_secret", "mcp_log", "on_init", "on_shutdown", "plugins", "reload_duckdb", "report_progress"]
