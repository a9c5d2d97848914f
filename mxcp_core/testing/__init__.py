"""Testing helpers for extension authors: temporary projects, in-process MCP clients, per-test plugins.

Installed as a pytest plugin (entry point `pytest11`), so the fixtures `mxcp_project_factory`, `mxcp_client`,
`mxcp_client_call` and `mxcp_plugin` are available in any test once this package is installed. The classes
behind them can also be used directly, outside pytest.
"""
from .project_handle import ClientFactory, PluginRegistry, ProjectHandle, build_project, tool_result

__all__ = ["ClientFactory", "PluginRegistry", "ProjectHandle", "build_project", "tool_result"]
