"""The original MXCP's `mxcp.sdk` import paths that endpoint code uses."""
