"""An example MXCP plugin package: three plugins, one module each.

- `functions`: the DuckDB function `slugify(text)` (hook `register_functions`).
- `vault`: secret references `demo-vault://NAME` (hook `resolve_secret`).
- `tools`: the tool `word_stats` implemented in Python (hook `provide_tool`).
"""
__version__ = "0.1.0"
