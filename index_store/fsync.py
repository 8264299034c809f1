"""fsync for files and directories: what makes a rename-into-place survive a power cut."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (new names, renames)."""
    try:
        fsync_file(path)
    except OSError:  # some filesystems cannot fsync a directory
        pass
