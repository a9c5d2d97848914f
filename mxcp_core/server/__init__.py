"""Serving a started Runtime over MCP: `create_server(runtime)` builds the low-level SDK Server.

Importing this package imports the MCP SDK (about 0.6 s): only `mxcp serve` and tests do.
"""
from .app import create_server

__all__ = ["create_server"]
