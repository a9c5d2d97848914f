"""`from mxcp.sdk.auth.context import get_user_context`: the original MXCP's accessor for the caller."""
from mxcp_core.runtime_api import get_user_context

__all__ = ["get_user_context"]
