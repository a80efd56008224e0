"""Writing files so that they appear whole or not at all, with the permissions the user's umask gives.

Every file medgen writes goes through this module: :func:`atomic_write_bytes` (or
:func:`atomic_write_with`, for libraries that write to a file object themselves) for a file,
:func:`atomic_folder` for a folder written as a whole. The data go to a hidden temp file
(``.<name>.<random>.tmp``) beside the target, which is then renamed into place, so a reader
never sees a partial file and a failed or killed write leaves any previous file as it was.

Mode: the temp file is created by :func:`tempfile.mkstemp` (0600, so that nobody reads it
half-written); before the rename it gets the mode a plain ``open(path, "w")`` would give
(``0666 & ~umask``, 0644 under the usual 022), as every other tool does, unless the caller asks
for another (0600 for the pseudonym mapping). Folders get ``0777 & ~umask``, as ``mkdir`` gives.

fsync: only where losing a file costs more than rerunning the step that wrote it, i.e. training
checkpoints and the final model (``durable=True``: file and folder are synced before the call
returns). Every other output is rebuilt by rerunning its step; for those the rename alone gives
readers whole files, and skipping fsync spares a sync per DICOM slice, NIfTI file or figure.

Not through this module, by nature: the training log ``log.jsonl`` (appended and flushed line by
line while training runs; truncated on resume through this module), TensorBoard's event files
(written by TensorBoard's own writer; truncated on resume through this module), and scratch
files inside temporary folders that exist only for one call (inputs of pyradiomics). Inputs are
never written to.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

#: Suffix of the temp files (``.<name>.<random>.tmp``) beside a target being written.
TMP_SUFFIX = ".tmp"

#: The name of a temp file (or folder) this module writes: ``.<target name>.<random>.tmp``.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def current_umask() -> int:
    """The process umask.

    Read from ``/proc/self/status`` where the kernel reports it (Linux), which leaves the umask
    untouched; elsewhere by setting and restoring it (POSIX has no read-only call), which another
    thread creating a file at that moment could see.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def default_folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 minus the umask."""
    return 0o777 & ~current_umask()


def temp_target(name: str) -> str | None:
    """The target name a temp file or folder of this module stands for (``.x.json.ab12.tmp`` -> ``x.json``), else None."""
    found = _TEMP_NAME.match(name)
    return found.group("name") if found else None


def atomic_write_with(
    path: Path | str,
    write: Callable[[IO[bytes]], None],
    *,
    durable: bool = False,
    mode: int | None = None,
    exclusive: bool = False,
) -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, then rename it into place.

    ``durable``: fsync the file and its folder so that the new content survives a power cut
    (checkpoints); otherwise the OS flushes when it likes. ``mode``: permissions instead of the
    umask's (e.g. 0o600 for a file only its owner may read). ``exclusive``: never replace an
    existing ``path`` (FileExistsError), even one that appeared while writing. A failure removes
    the temp file and leaves any previous ``path`` as it was.
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
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def _link_new(tmp: str, path: Path) -> None:
    """Put ``tmp`` at ``path`` unless ``path`` exists (FileExistsError); ``tmp`` is gone afterwards."""
    try:
        os.link(tmp, path)  # atomic, and fails if the name is taken
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(path)) from None
    except OSError:  # a file system without hard links: claim the name, then fill it in one rename
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_bytes(
    path: Path | str, data: bytes, *, durable: bool = False, mode: int | None = None, exclusive: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda fh: fh.write(data), durable=durable, mode=mode, exclusive=exclusive)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


@contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield a hidden temp folder beside ``path`` to fill; on success it takes the place of ``path``.

    A previous ``path`` is replaced as a whole (moved aside, then removed), so no file of an
    earlier write survives next to the new ones. The folder gets the mode ``mkdir`` would give.
    On failure the temp folder is removed and any previous ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, default_folder_mode())  # mkdtemp makes it 0700
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename folder ``tmp`` to ``path``, replacing whatever ``path`` was."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    os.replace(path, aside / path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(aside / path.name, path)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


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
