"""Public import paths kept from the original MXCP: `mxcp.runtime` and `mxcp.plugins`."""
