"""The builtin plugins: ordinary modules of hook implementations, registered through entry points."""
