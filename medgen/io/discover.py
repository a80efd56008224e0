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

#: A subject label, which becomes a folder and file name: no path separators, no leading dot
#: (also the workflow's ``{subject}`` wildcard constraint).
SUBJECT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
SUBJECT_RE = re.compile(rf"^{SUBJECT_PATTERN}$")
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


def bids_subject_dirs(root: Path) -> list[Path]:
    """The ``sub-*`` folders of a BIDS-like tree, sorted (``root`` itself when it is one)."""
    if root.name.startswith("sub-"):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-"))


def bids_images(sub_dir: Path) -> tuple[list[Path], list[Path]]:
    """(images, other NIfTI files) of one ``sub-*`` folder, sorted.

    Images lie in ``anat/`` as in BIDS (``sub-*/anat/``, ``sub-*/ses-*/anat/``) or directly in
    ``sub-*/`` as medgen writes its own outputs; NIfTI files elsewhere (``func/``, ``dwi/``) are not.
    """
    images, others = [], []
    for path in sorted(p for p in sub_dir.rglob("*") if p.is_file() and is_nifti(p)):
        rel = path.relative_to(sub_dir)
        ok = len(rel.parts) == 1 or (path.parent.name == "anat" and len(rel.parts) <= 3)
        (images if ok else others).append(path)
    return images, others


def discover_bids(root: Path, found: Discovery) -> None:
    """Add the images of a BIDS-like tree (:func:`bids_images`); other NIfTI files are reported as skipped."""
    for sub_dir in bids_subject_dirs(root):
        images, others = bids_images(sub_dir)
        found.skipped += [(display_path(path, root), "not in sub-*/[ses-*/]anat/ or sub-*/") for path in others]
        for path in images:
            _, modality = bids_entities(path)
            found.sources.append(Source("nifti", path, root, subject=sub_dir.name, modality=modality))


class ManifestError(ValueError):
    """A manifest that cannot be read as a table (empty, or a header without the needed columns)."""


@dataclass(frozen=True)
class ManifestRow:
    """One data row of a manifest, its cells stripped (empty when the row lacks them)."""

    number: int  # "row <n>" in messages: the header is row 1; blank and comment lines are not counted
    subject: str
    modality: str
    path: str
    text: str  # the row as written (its cells joined by tabs), for messages

    def resolve(self, tsv: Path) -> Path:
        """The row's path, relative to the manifest's folder unless absolute."""
        path = Path(self.path)
        return path if path.is_absolute() else Path(tsv).parent / path


def read_manifest(tsv: Path) -> list[ManifestRow]:
    """The data rows of a manifest TSV (see the module docstring).

    Blank lines and lines starting with ``#`` are skipped; header names are matched without
    regard to case or surrounding spaces, and other columns are ignored. Raises
    :class:`ManifestError` for an empty manifest or a header that lacks a needed column, and
    :class:`medgen.errors.CorruptFileError` for a file that is not UTF-8 text.
    """
    try:
        with Path(tsv).open(newline="", encoding="utf-8") as fh:
            lines = [row for row in csv.reader(fh, delimiter="\t") if row and any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        from medgen.errors import CorruptFileError

        raise CorruptFileError(f"{tsv}: the manifest is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as tab-separated UTF-8 text") from None
    lines = [row for row in lines if not row[0].lstrip().startswith("#")]
    if not lines:
        raise ManifestError("manifest is empty")
    header = [c.strip().lower() for c in lines[0]]
    missing = [name for name in MANIFEST_COLUMNS if name not in header]
    if missing:
        raise ManifestError(
            f"manifest lacks column(s) {', '.join(missing)}: its header must have tab-separated columns "
            f"{', '.join(MANIFEST_COLUMNS)}; found {header}"
        )
    col = {name: header.index(name) for name in MANIFEST_COLUMNS}
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        values = {name: (cells[i].strip() if i < len(cells) else "") for name, i in col.items()}
        rows.append(ManifestRow(number, values["subject"], values["modality"], values["path"], "\t".join(cells)))
    return rows


def discover_manifest(
    tsv: Path, found: Discovery, *, subject: str | None = None, label_of: Callable[[str], str] | None = None
) -> None:
    """Add the rows of a manifest TSV (:func:`read_manifest`); bad rows are failed.

    ``label_of`` turns a row's subject into the label medgen uses (a pseudonym); with ``subject``,
    only the rows whose subject or label is ``subject`` are taken: the workflow runs one ingest
    job per subject, each handed the whole manifest. Rows are named ``<manifest> row <n>``, never
    by their path (which may hold a name).
    """
    label_of = label_of or (lambda label: label)
    try:
        rows = read_manifest(tsv)
    except ManifestError as exc:
        found.failed.append((tsv.name, str(exc)))
        return
    for row in rows:
        what = f"{tsv.name} row {row.number}"
        label = label_of(row.subject) if row.subject else ""
        if subject is not None and row.subject and subject not in (row.subject, label):
            continue  # another job's row
        if not (row.subject and row.modality and row.path):
            found.failed.append((what, "needs subject, modality and path"))
            continue
        path = row.resolve(tsv)
        if not path.exists():
            found.failed.append((what, "the file or folder in its path column does not exist (paths are relative to the manifest's folder)"))
            continue
        kind: SourceKind = "nifti" if path.is_file() and is_nifti(path) else "dicom"
        found.sources.append(Source(kind, path, path, subject=label, modality=row.modality, display_root=what))


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
