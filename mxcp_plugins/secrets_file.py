"""Builtin plugin: `file://path` references read a file (relative paths from the project root), stripped.

Which paths may be read depends on where the reference comes from (`reference_origin()`):
- the user's own config (~/.mxcp/config.yml, MXCP_CONFIG): any path. The user wrote that file for their own
  machine, as they may write `${VAR}`; relative paths are taken from the project root, absolute ones as they are.
- anything the project ships (mxcp-site.yml, endpoint YAML, a plugin resolving a value of its own section): only
  files inside the project folder or a folder of `allowed_paths:` in mxcp-site.yml, symlinks resolved first.
  A reference out of the project is then explicit in mxcp-site.yml, never slipped into a YAML value.
Either way only a regular UTF-8 text file is read: a FIFO or device is refused without being opened.
"""
from __future__ import annotations

from pathlib import Path

from mxcp_core import ConfigError, SecretValue, hookimpl

PREFIX = "file://"


@hookimpl(trylast=True)
def resolve_secret(reference, project):
    if not reference.startswith(PREFIX):
        return None
    # Imported here: loading this plugin (every command does) stays cheap; these come with opening a project.
    from mxcp_core import confined_path, read_text_file, reference_origin

    target = reference[len(PREFIX):]
    if not target:
        raise ConfigError(f"{PREFIX} reference names no file")
    if project is not None and reference_origin() != "user":
        path = confined_path(project, target, what=f"{PREFIX} reference")
    else:
        path = Path(target).expanduser()
        if not path.is_absolute() and project is not None:
            path = project.root / path
    try:
        text = read_text_file(path)
    except ConfigError as exc:
        # The path is not secret; the content would be, and read_text_file never quotes it. No file here: the
        # caller adds the file, line and key path of the reference.
        raise ConfigError(f"{PREFIX} reference {path}: {exc.message}") from None
    return SecretValue(text.strip())
