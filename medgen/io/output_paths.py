"""Checks on an output path before any work starts, so that a long job never fails at its last write.

An output can be written when no ancestor of it is a file, the nearest existing folder is
writable by this process, and the path itself is not occupied by the wrong kind of thing (a
folder where a file goes, a file where a folder goes). The check creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from medgen.errors import OutputPathError

__all__ = ["check_output_path"]


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_output_path(path: Path | str, kind: Literal["file", "folder"], *, flag: str = "--out") -> Path:
    """Raise :class:`~medgen.errors.OutputPathError` (or ``PermissionError``) unless ``path`` can
    be written as a ``kind``; ``flag`` is the command-line flag that named it (for the message)."""
    path = Path(path)
    absolute = path.absolute()
    if absolute.exists():
        if kind == "file" and absolute.is_dir():
            raise OutputPathError(f"{path}: a folder already stands where {flag} should write a file; choose a file name, e.g. {path / 'out'}")
        if kind == "folder" and not absolute.is_dir():
            raise OutputPathError(f"{path}: a file already stands where {flag} should write a folder; choose another path or move the file")
    existing = _nearest_existing(absolute.parent if kind == "file" or not absolute.exists() else absolute)
    if not existing.is_dir():
        raise OutputPathError(f"{path}: cannot be created under {existing}, which is a file, not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(13, f"permission denied: this user cannot write into {existing} (needed for {flag} {path})", str(existing))
    return path
