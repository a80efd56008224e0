"""The one way medgen reads a file written by ``torch.save``: weights-only, with errors a user can act on.

``torch.load(..., weights_only=True)`` refuses any pickle that would build objects other than
tensors and plain Python values, so nothing in a file can execute code when read. Its own error
messages, though, advise retrying with ``weights_only=False`` (which would run whatever the file
holds) and differ by fault (RuntimeError, EOFError, KeyError, UnpicklingError, ...).
:func:`safe_load` turns every one of them into a :class:`~medgen.errors.ModelFileError` that
names the file, says what is wrong with it and what to do, and never passes on that advice.
Every ``torch.load`` in medgen goes through here (a test greps for others).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from medgen.errors import InputMissingError, ModelFileError

__all__ = ["safe_load", "ModelFileError"]


def safe_load(path: Path | str, *, what: str, remedy: str, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; any failure becomes a one-message error.

    ``what`` names the kind of file expected ("trained model", "encoder checkpoint", ...) and
    ``remedy`` says what to do when the file is unusable; both go into the message. ``mmap``
    leaves the tensors on disk until used (for reading a file's metadata alone).
    A missing path raises :class:`~medgen.errors.InputMissingError`, a permission problem the
    ``PermissionError`` itself (the command line reports both with their own exit status).
    """
    path = Path(path)
    if not path.exists():
        raise InputMissingError(f"{path}: no such file (expected a {what}); check the path")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a {what}; pass the file itself")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except PermissionError:
        raise
    except pickle.UnpicklingError as exc:
        if not _is_refused_object(exc):  # e.g. a text file: not a pickle at all
            raise ModelFileError(
                f"{path}: not a readable {what}: it is not a file written by torch.save. {remedy}"
            ) from None
        raise ModelFileError(
            f"{path}: refused: it holds Python objects other than tensors and plain values "
            f"({_refusal(exc)}), so it is not a {what} written by medgen, or it was written by code "
            f"medgen does not trust; medgen never runs code stored in a file. {remedy}"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        raise ModelFileError(
            f"{path}: not a readable {what}: the file is truncated, damaged or of another kind "
            f"({_first_sentence(exc)}). {remedy}"
        ) from None


def _is_refused_object(exc: BaseException) -> bool:
    """True when weights-only unpickling refused an object the file names (a class, a function)."""
    return bool(re.search(r"Unsupported (global|class)|not an allowed global", str(exc)))


def _refusal(exc: BaseException) -> str:
    """What weights-only unpickling refused, without torch's advice on how to load it anyway."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\.$|$)", text, flags=re.MULTILINE)
    return found.group(1).strip() if found else "a type outside the weights-only allow-list"


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__ + (" (the file is empty or ends early)" if isinstance(exc, EOFError) else "")
    if isinstance(exc, KeyError):
        return f"unexpected content ({type(exc).__name__} {text})"
    return text.split(". ")[0].rstrip(".")
