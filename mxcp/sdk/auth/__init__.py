"""`from mxcp.sdk.auth import UserContext`: the caller's identity record."""
from mxcp_core.records import UserContext

__all__ = ["UserContext"]
