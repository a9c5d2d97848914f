"""`from mxcp.plugins import MXCPBasePlugin, udf`: the original MXCP's import path for UDF plugin classes."""
from mxcp_core.udf import MXCPBasePlugin, udf

__all__ = ["MXCPBasePlugin", "udf"]
