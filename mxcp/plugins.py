"""`from mxcp.plugins import MXCPBasePlugin, udf, on_init, on_shutdown`: the original MXCP's import path for UDF
plugin classes and lifecycle hooks (the same `@on_init` / `@on_shutdown` as `mxcp.runtime`'s)."""
from mxcp_core.runtime_api import on_init, on_shutdown
from mxcp_core.udf import MXCPBasePlugin, udf

__all__ = ["MXCPBasePlugin", "on_init", "on_shutdown", "udf"]
