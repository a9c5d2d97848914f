"""What `mxcp serve --watch` looks at: the files a project reads, with their modification times and sizes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The folders of mxcp-site.yml's `paths:` whose files define what is served.
WATCHED_FOLDERS = ("tools", "resources", "prompts", "python", "sql", "plugins")
WATCHED_SUFFIXES = frozenset({".yml", ".yaml", ".py", ".sql"})


def snapshot(project: Any) -> dict[Path, tuple[int, int]]:
    """Each watched file of `project` (a ProjectContext) with its (mtime in ns, size): two snapshots differ
    when a file was added, removed or changed."""
    from ..config import user_config_path

    found: dict[Path, tuple[int, int]] = {}
    for file in (project.site_file, project.user_config_file or user_config_path()):
        _note(found, Path(file))
    for name in WATCHED_FOLDERS:
        folder = project.path(name)
        for directory, subdirectories, files in os.walk(folder):
            # Caches and hidden folders (.git, editors' backups) never define an endpoint.
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".") and d != "__pycache__"]
            for file in files:
                if not file.startswith(".") and os.path.splitext(file)[1] in WATCHED_SUFFIXES:
                    _note(found, Path(directory) / file)
    return found


def _note(found: dict[Path, tuple[int, int]], file: Path) -> None:
    try:
        stat = file.stat()
    except OSError:
        return  # gone (or never there): its absence is what the snapshot records
    found[file] = (stat.st_mtime_ns, stat.st_size)
