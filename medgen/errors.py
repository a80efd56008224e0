"""The failures a user can cause, each with its own exit status, and the one-line message of each.

``medgen`` maps every expected failure to one line on stderr, ``medgen <verb>: error: <file>:
<problem>; <what to do>``, and to the exit status of its class (:class:`ExitCode`, also listed in
the README). Anything else is a bug: its traceback is shown with a request to report it.
The library raises the exceptions below (or the standard ones :func:`classify` knows); the
command line is the only place that turns them into exit statuses.
"""

from __future__ import annotations

import errno
import gzip
import json
import re
import zlib
from enum import IntEnum
from pathlib import Path

from medgen.io.atomic import temp_target

__all__ = [
    "ExitCode", "MedgenError", "OptionError", "InputMissingError", "OutputPathError", "CorruptFileError",
    "ModelFileError", "ModalityMismatchError", "NonFiniteLossError", "NonFiniteGradientError", "classify", "one_line",
]


class ExitCode(IntEnum):
    """Exit status of ``medgen <verb>``, one per class of failure."""

    OK = 0
    INCOMPLETE = 1  #: ingest converted some inputs but not all, or a requested modality is missing
    USAGE = 2  #: a flag, option, JSON argument or value is invalid (argparse uses 2 as well)
    NONFINITE = 3  #: training stopped on a NaN/inf loss or gradient
    MISSING = 4  #: an input file or folder does not exist
    PERMISSION = 5  #: permission denied reading an input or writing an output
    OUTPUT = 6  #: an output path cannot be used (under a file, occupied by a folder, disk full, I/O error)
    CORRUPT = 7  #: an input file is truncated, corrupt, foreign or has a header medgen refuses
    MODEL_FILE = 8  #: a model or checkpoint file is refused (not medgen's, truncated, untrusted, wrong kind)
    MISMATCH = 9  #: the input does not fit the model (a CT for a T1w -> CT model), or the model does not fit the verb
    BUG = 70  #: an unexpected exception: a bug in medgen (the traceback is shown)
    INTERRUPTED = 130  #: stopped by Ctrl-C / SIGINT


class MedgenError(Exception):
    """A failure the user can fix; the message names the file, the problem and what to do."""

    exit_code: ExitCode = ExitCode.USAGE


class OptionError(MedgenError, ValueError):
    """A flag, config key or JSON option with an invalid value or an unknown name."""

    exit_code = ExitCode.USAGE


class InputMissingError(MedgenError, FileNotFoundError):
    """An input file or folder that does not exist."""

    exit_code = ExitCode.MISSING


class OutputPathError(MedgenError, OSError):
    """An output path that cannot be written (checked before the work starts)."""

    exit_code = ExitCode.OUTPUT


class CorruptFileError(MedgenError, ValueError):
    """An input file that is truncated, corrupt or not the kind of file expected."""

    exit_code = ExitCode.CORRUPT


class ModelFileError(MedgenError, RuntimeError):
    """A model or checkpoint file that cannot be used (see :mod:`medgen.io.torch_load`)."""

    exit_code = ExitCode.MODEL_FILE


class ModalityMismatchError(MedgenError, ValueError):
    """An input whose modality is not the one the model was trained on, or a model of the wrong
    kind for the verb (a translation model given to ``medgen sample``)."""

    exit_code = ExitCode.MISMATCH


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN/inf; the message names the training step and the term."""

    def __init__(self, step: int, term: str, value: float) -> None:
        super().__init__(f"non-finite loss at step {step}: term '{term}' = {value}; training stopped, no checkpoint written for this step")
        self.step, self.term, self.value = step, term, value


class NonFiniteGradientError(NonFiniteLossError):
    """A finite loss term gave a NaN/inf gradient; raised before the optimizer moves.

    A subclass of :class:`NonFiniteLossError` so that everything that stops on a bad loss stops
    on a bad gradient alike (same exit, no checkpoint for the step).
    """

    def __init__(self, step: int, term: str, value: float, parameter: str) -> None:
        FloatingPointError.__init__(
            self,
            f"non-finite gradient at step {step}: term '{term}' (loss {value:.6g}) gave a NaN/inf gradient of {parameter}; "
            "training stopped before the optimizer step, no checkpoint written for this step",
        )
        self.step, self.term, self.value, self.parameter = step, term, value, parameter


def one_line(text: str) -> str:
    """``text`` with its line breaks (and the indentation after them) folded into single spaces."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def _corrupt_types() -> tuple[type[BaseException], ...]:
    """Exception types of damaged or foreign files from the readers medgen uses (imported lazily)."""
    types: list[type[BaseException]] = [gzip.BadGzipFile, zlib.error, EOFError, json.JSONDecodeError, UnicodeDecodeError]
    try:
        from nibabel.filebasedimages import ImageFileError
        from nibabel.spatialimages import HeaderDataError
        from nibabel.wrapstruct import WrapStructError

        types += [ImageFileError, HeaderDataError, WrapStructError]
    except ImportError:  # pragma: no cover - nibabel is a dependency
        pass
    try:
        from pydicom.errors import InvalidDicomError

        types.append(InvalidDicomError)
    except ImportError:  # pragma: no cover - pydicom is a dependency
        pass
    return tuple(types)


def _refused_file_types() -> tuple[type[BaseException], ...]:
    """The readers' own refusals (their messages already name the file, problem and remedy)."""
    types: list[type[BaseException]] = []
    for module, name in (("medgen.io.nifti", "NiftiError"), ("medgen.io.dicom_series", "DicomSeriesError"),
                         ("medgen.io.dicom_geometry", "GeometryError")):
        try:
            types.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):  # pragma: no cover - defensive: a renamed class is a bug
            continue
    return tuple(types)


def _user_path(filename: object) -> object:
    """``filename`` as the user named it: an atomic writer's temporary file stands for its target."""
    if not isinstance(filename, str):
        return filename
    path = Path(filename)
    target = temp_target(path.name)
    return str(path.with_name(target)) if target else filename


def _os_message(exc: OSError, advice: str) -> str:
    where = _user_path(exc.filename) if exc.filename is not None else None
    problem = exc.strerror or str(exc)
    text = f"{where}: {problem}" if where is not None else problem
    if exc.filename2 is not None:
        text += f" (and {exc.filename2})"
    return f"{text}; {advice}"


def classify(exc: BaseException) -> tuple[ExitCode, str] | None:
    """The exit status and one-line message of an expected failure; None for a bug."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted; files written so far are complete (outputs appear whole or not at all)"
    if isinstance(exc, MedgenError):
        return exc.exit_code, one_line(str(exc))
    if isinstance(exc, NonFiniteLossError):
        return ExitCode.NONFINITE, one_line(str(exc))
    if isinstance(exc, _refused_file_types()):
        return ExitCode.CORRUPT, one_line(str(exc))
    if isinstance(exc, _corrupt_types()):
        name = getattr(exc, "filename", None)
        where = f"{name}: " if name else ""
        return ExitCode.CORRUPT, one_line(
            f"{where}an input file is damaged or not of the expected kind ({type(exc).__name__}: {exc}); "
            "check that the path points at the right file, or write it again"
        )
    if isinstance(exc, PermissionError):
        return ExitCode.PERMISSION, one_line(_os_message(exc, "give this user access to it, or choose another path"))
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)) and exc.filename is None:
        return ExitCode.MISSING, one_line(str(exc))  # a message written by medgen
    if isinstance(exc, FileNotFoundError):
        return ExitCode.MISSING, one_line(_os_message(exc, "check the path"))
    if isinstance(exc, NotADirectoryError):
        return ExitCode.OUTPUT, one_line(_os_message(exc, "a file stands where a folder is needed; choose another path"))
    if isinstance(exc, IsADirectoryError):
        return ExitCode.OUTPUT, one_line(_os_message(exc, "a folder stands where a file is needed; choose another path"))
    if isinstance(exc, OSError):
        advice = "free some disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check the disk and the path"
        return ExitCode.OUTPUT, one_line(_os_message(exc, advice))
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) and " " in exc.args[0]:
        # medgen raises KeyError for unknown names with a sentence listing the valid ones; a bare
        # key (KeyError('mappings')) is a failed lookup in the code: a bug
        return ExitCode.USAGE, one_line(exc.args[0])
    if isinstance(exc, ValueError):
        return ExitCode.USAGE, one_line(str(exc))
    return None

