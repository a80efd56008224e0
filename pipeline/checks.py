"""Input data checked at the door, before any job runs.

Every manifest row / BIDS file / DICOM folder must exist and be readable, every NIfTI file must
hold one 3D volume (X, Y, Z) or (X, Y, Z, 1) (headers only are read, with nibabel), and every
subject must have every configured modality. All problems are collected and reported together,
each with the file's full path, so that one run of the workflow shows everything to fix.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib

from medgen.io.discover import MANIFEST_COLUMNS, ManifestError, bids_entities, bids_images, bids_subject_dirs, is_nifti, read_manifest
from medgen.io.ingest import normalise_modality


class InputDataError(ValueError):
    """The configured input data cannot be used; the message lists every problem found."""


def check_input_data(cfg: dict[str, Any]) -> None:
    """Raise :class:`InputDataError` listing every problem of the configured data source."""
    problems = list(input_problems(cfg))
    if problems:
        raise InputDataError(
            f"input data: {len(problems)} problem(s) found before any job ran:\n  " + "\n  ".join(problems)
            + "\nFix or remove these files (or the subjects' rows), then run the workflow again."
        )


def input_problems(cfg: dict[str, Any]) -> Iterator[str]:
    """Each problem of the configured data source, as one line naming the full path."""
    data, modalities = cfg["data"], [normalise_modality(m) for m in cfg["modalities"]]
    if "manifest" in data:
        yield from _manifest_problems(Path(data["manifest"]), modalities)
    elif "bids_root" in data:
        yield from _bids_problems(Path(data["bids_root"]), modalities)
    elif "dicom_root" in data:
        yield from _dicom_root_problems(Path(data["dicom_root"]))


def _full(path: Path) -> str:
    return os.path.abspath(path)


def nifti_problem(path: Path) -> str | None:
    """Why the NIfTI file ``path`` cannot be ingested (None if its header says it can)."""
    if not os.access(path, os.R_OK):
        return f"{_full(path)}: not readable (check its permissions)"
    try:
        shape = tuple(nib.load(path).shape)
    except Exception as exc:  # nibabel raises several types for bad headers
        return f"{_full(path)}: not a readable NIfTI file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        what = f"a 4D series of {shape[3]} volumes" if len(shape) == 4 else f"{len(shape)}D"
        return f"{_full(path)}: is {what} (shape {shape}); medgen needs one 3D volume per file: extract the volume you want (e.g. nibabel's four_to_three)"
    return None


def _folder_problem(path: Path) -> str | None:
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{_full(path)}: folder not readable (check its permissions)"
    if not any(p.is_file() for p in path.rglob("*")):
        return f"{_full(path)}: folder holds no files"
    return None


def _path_problem(path: Path) -> str | None:
    if not path.exists():
        return f"{_full(path)}: does not exist"
    if path.is_dir():
        return _folder_problem(path)
    if is_nifti(path):
        return nifti_problem(path)
    return None if os.access(path, os.R_OK) else f"{_full(path)}: not readable (check its permissions)"


def _manifest_problems(tsv: Path, modalities: list[str]) -> Iterator[str]:
    if not tsv.is_file() or not os.access(tsv, os.R_OK):
        yield f"{_full(tsv)}: manifest missing or not readable"
        return
    try:
        rows = read_manifest(tsv)
    except ManifestError:
        first = next((line for line in tsv.read_text(encoding="utf-8").splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
        hint = " (columns must be separated by tabs, not spaces)" if first and "\t" not in first else ""
        yield f"{_full(tsv)}: the first line must be the header {chr(9).join(MANIFEST_COLUMNS)!r}{hint}; found {first or 'an empty file'!r}"
        return
    except ValueError as exc:  # not UTF-8 text
        yield str(exc)
        return
    found: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if not (row.subject and row.modality and row.path):
            yield f"{_full(tsv)} row {row.number}: needs subject, modality and path separated by tabs; found {row.text!r}"
            continue
        problem = _path_problem(row.resolve(tsv))
        if problem:
            yield f"{_full(tsv)} row {row.number} (subject {row.subject}, {row.modality}): {problem}"
        found[row.subject].add(normalise_modality(row.modality))
    for subject in sorted(found):
        missing = [m for m in modalities if m not in found[subject]]
        if missing:
            yield f"{_full(tsv)}: subject {subject} has no row for modality {', '.join(missing)} (has {', '.join(sorted(found[subject]))})"


def _bids_problems(root: Path, modalities: list[str]) -> Iterator[str]:
    for sub_dir in bids_subject_dirs(root):
        if not os.access(sub_dir, os.R_OK | os.X_OK):
            yield f"{_full(sub_dir)}: folder not readable (check its permissions)"
            continue
        files = bids_images(sub_dir)[0]
        present = set()
        for path in files:
            problem = nifti_problem(path)
            if problem:
                yield problem
            present.add(normalise_modality(bids_entities(path)[1] or ""))
        missing = [m for m in modalities if m not in present]
        if missing:
            yield f"{_full(sub_dir)}: no {', '.join(f'*_{m}.nii[.gz]' for m in missing)} under anat/ (found {', '.join(p.name for p in files) or 'no NIfTI file'})"


def _dicom_root_problems(root: Path) -> Iterator[str]:
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problem = _folder_problem(folder)
        if problem:
            yield problem
