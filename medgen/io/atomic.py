"""Writing files so that they appear whole or not at all, with the permissions the user's umask gives.

Every writer in medgen goes through :func:`atomic_write_bytes` (or :func:`atomic_write_with`,
for libraries that write to a file object themselves): the data go to a hidden temp file beside
the target, which is then renamed into place, so a reader never sees a partial file. The temp
file is created by :func:`tempfile.mkstemp` (mode 0600, so that nobody reads it half-written);
before the rename it gets the mode a plain ``open(path, "w")`` would give (``0666 & ~umask``,
0644 under the usual 022), as every other tool does.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

#: Suffix of the temp files (``.<name>.<random>.tmp``) beside a target being written.
TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def atomic_write_with(
    path: Path | str, write: Callable[[IO[bytes]], None], *, durable: bool = False, mode: int | None = None
) -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, then rename it into place.

    ``durable``: fsync the file and its folder so that the new content survives a power cut
    (checkpoints); otherwise the OS flushes when it likes. ``mode``: permissions instead of the
    umask's (e.g. 0o600 for a file only its owner may read). A failure removes the temp file and
    leaves any previous ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path | str, data: bytes, *, durable: bool = False, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda fh: fh.write(data), durable=durable, mode=mode)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def fsync_dir(folder: Path | str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
