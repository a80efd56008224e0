"""Finding what an ingest input holds: NIfTI files, DICOM folders, BIDS-like trees, manifests.

Each input path is classified once:

* ``*.nii`` / ``*.nii.gz`` file: one NIfTI source (subject and modality from a BIDS-like name
  ``sub-<label>[_...]_<modality>.nii.gz`` where present);
* ``*.tsv`` file: a manifest with a header row holding ``subject``, ``modality`` and ``path``
  columns (tab-separated); paths are relative to the manifest's folder and name a NIfTI file or
  a DICOM folder; given a subject, only its rows are read;
* folder with ``sub-*`` folders holding NIfTI (or itself a ``sub-*`` folder): a BIDS-like tree,
  ``sub-*/[ses-*/]anat/sub-*_<modality>.nii[.gz]`` (also ``sub-*/<modality>.nii.gz``, the layout
  of medgen's own outputs);
* any other folder or file: DICOM, to be scanned for series (NIfTI files in such a folder are
  taken as NIfTI files).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

SourceKind = Literal["nifti", "dicom"]

#: Labels that become folder and file names: no path separators, no leading dot.
SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MODALITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")

MANIFEST_COLUMNS = ("subject", "modality", "path")


@dataclass(frozen=True)
class Source:
    """One thing to convert: a NIfTI file or a DICOM folder, with what its input says about it."""

    kind: SourceKind
    path: Path
    root: Path  # the input it came from; messages name ``path`` relative to it
    subject: str | None = None
    modality: str | None = None
    display_root: str | None = None  # shown instead of the root's name (e.g. the subject's pseudonym)

    @property
    def display(self) -> str:
        """``path`` relative to its input (the input's own name when they are the same)."""
        return self.show(self.path)

    def show(self, path: Path | str) -> str:
        """How messages name ``path``, a file of this source: relative to the root, root renamed."""
        return display_path(Path(path), self.root, self.display_root)


@dataclass
class Discovery:
    """Sources found in the inputs, and what could not be used (``(what, reason)`` pairs)."""

    sources: list[Source] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def display_path(path: Path, root: Path, root_label: str | None = None) -> str:
    """``path`` relative to ``root``, prefixed by ``root_label`` (default: the root's name), for messages.

    With ``root_label``, a path outside ``root`` is shown by its file name only.
    """
    path, root = Path(path), Path(root)
    label = root_label or root.name or str(root)
    if path == root:
        return label
    try:
        return str(Path(label) / path.relative_to(root))
    except ValueError:
        return str(Path(label) / "..." / path.name) if root_label else str(path)


def is_nifti(path: Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` names."""
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def bids_entities(path: Path) -> tuple[str | None, str | None]:
    """(``sub-<label>``, modality suffix) from a BIDS-like NIfTI name; None where absent.

    The modality is the part after the last ``_`` (``sub-01_ses-1_T1w`` -> ``T1w``), or the whole
    stem when it has no ``_`` (``t1.nii.gz`` -> ``t1``).
    """
    stem = nifti_stem(path)
    parts = stem.split("_")
    subject = parts[0] if parts[0].startswith("sub-") and len(parts) > 1 else None
    modality = parts[-1] if parts[-1] and not parts[-1].startswith("sub-") else None
    return subject, modality


def _has_nifti(folder: Path) -> bool:
    return any(is_nifti(p) for p in folder.rglob("*.nii*") if p.is_file())


def is_bids_root(folder: Path) -> bool:
    """A folder with ``sub-*`` folders that hold NIfTI files, or a ``sub-*`` folder holding NIfTI."""
    if folder.name.startswith("sub-") and _has_nifti(folder):
        return True
    return any(p.is_dir() and p.name.startswith("sub-") and _has_nifti(p) for p in folder.iterdir())


def _bids_subject_dirs(root: Path) -> list[Path]:
    if root.name.startswith("sub-"):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-"))


def discover_bids(root: Path, found: Discovery) -> None:
    """Add the ``anat`` NIfTI files of a BIDS-like tree; other NIfTI files are reported as skipped."""
    for sub_dir in _bids_subject_dirs(root):
        for path in sorted(p for p in sub_dir.rglob("*") if p.is_file() and is_nifti(p)):
            rel = path.relative_to(sub_dir)
            # anat/ as in BIDS, or directly in sub-*/ as medgen writes its own outputs
            if not (len(rel.parts) == 1 or (path.parent.name == "anat" and len(rel.parts) <= 3)):
                found.skipped.append((display_path(path, root), "not in sub-*/[ses-*/]anat/ or sub-*/"))
                continue
            _, modality = bids_entities(path)
            found.sources.append(Source("nifti", path, root, subject=sub_dir.name, modality=modality))


def discover_manifest(
    tsv: Path, found: Discovery, *, subject: str | None = None, label_of: Callable[[str], str] | None = None
) -> None:
    """Add the rows of a manifest TSV (``subject``, ``modality``, ``path``); bad rows are failed.

    ``label_of`` turns a row's subject into the label medgen uses (a pseudonym); with ``subject``,
    only the rows whose subject or label is ``subject`` are taken: the workflow runs one ingest
    job per subject, each handed the whole manifest. Rows are named ``<manifest> row <n>``, never
    by their path (which may hold a name).
    """
    label_of = label_of or (lambda label: label)
    base = tsv.parent
    try:
        with tsv.open(newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh, delimiter="\t") if row and any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        from medgen.errors import CorruptFileError

        raise CorruptFileError(f"{tsv}: the manifest is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as tab-separated UTF-8 text") from None
    rows = [row for row in rows if not row[0].lstrip().startswith("#")]
    if not rows:
        found.failed.append((tsv.name, "manifest is empty"))
        return
    header = [c.strip().lower() for c in rows[0]]
    if not set(MANIFEST_COLUMNS) <= set(header):
        found.failed.append((tsv.name, f"manifest header must have tab-separated columns {', '.join(MANIFEST_COLUMNS)}; found {header}"))
        return
    col = {name: header.index(name) for name in MANIFEST_COLUMNS}
    for line_no, row in enumerate(rows[1:], start=2):
        what = f"{tsv.name} row {line_no}"
        values = {name: (row[i].strip() if i < len(row) else "") for name, i in col.items()}
        label = label_of(values["subject"]) if values["subject"] else ""
        if subject is not None and values["subject"] and subject not in (values["subject"], label):
            continue  # another job's row
        if not all(values.values()):
            found.failed.append((what, "needs subject, modality and path"))
            continue
        path = Path(values["path"])
        path = path if path.is_absolute() else base / path
        if not path.exists():
            found.failed.append((what, "the file or folder in its path column does not exist (paths are relative to the manifest's folder)"))
            continue
        kind: SourceKind = "nifti" if path.is_file() and is_nifti(path) else "dicom"
        found.sources.append(Source(kind, path, path, subject=label, modality=values["modality"], display_root=what))


def discover(
    inputs: Sequence[Path], *, subject: str | None = None, label_of: Callable[[str], str] | None = None
) -> Discovery:
    """Classify every input (see the module docstring); missing inputs raise FileNotFoundError.

    ``subject`` restricts manifests to that subject's rows; ``label_of`` maps a manifest's subject
    to the label used (see :func:`discover_manifest`).
    """
    paths = [Path(p) for p in inputs]
    absent = [str(p) for p in paths if not p.exists()]
    if absent:
        raise FileNotFoundError(f"input not found: {', '.join(absent)}")
    found = Discovery()
    for path in paths:
        if path.is_file() and is_nifti(path):
            named, modality = bids_entities(path)
            found.sources.append(Source("nifti", path, path, subject=named, modality=modality))
        elif path.is_file() and path.suffix.lower() == ".tsv":
            discover_manifest(path, found, subject=subject, label_of=label_of)
        elif path.is_dir() and is_bids_root(path):
            discover_bids(path, found)
        else:
            found.sources.append(Source("dicom", path, path))
            if path.is_dir():  # NIfTI files lying among DICOM files are converted as NIfTI
                for nii in sorted(p for p in path.rglob("*") if p.is_file() and is_nifti(p)):
                    named, modality = bids_entities(nii)
                    found.sources.append(Source("nifti", nii, path, subject=named, modality=modality))
    return found
