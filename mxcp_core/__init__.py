"""MXCP core: the plugin host. Plugin authors need only `from mxcp_core import hookimpl`."""
from .markers import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
__version__ = "0.1.0"
