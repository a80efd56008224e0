"""Which subjects a configured data source holds, and what each ingest job reads.

Everything is known when the workflow is parsed (no checkpoints): the phantom's subjects are
numbered, a DICOM root has one folder per subject, a BIDS-like tree one ``sub-*`` folder each,
and a manifest lists them.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def phantom_subjects(n: int) -> list[str]:
    """``sub-001`` ... as the phantom names them."""
    return [f"sub-{i:03d}" for i in range(1, n + 1)]


def _check_label(label: str, origin: str) -> str:
    if not _LABEL.match(label):
        raise ValueError(f"{origin}: subject label {label!r} must be letters, digits, '-', '_' or '.'")
    return label


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a manifest TSV (columns subject, modality, path; paths relative to the TSV)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    missing = {"subject", "modality", "path"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}")
    for row in rows:
        _check_label(row["subject"], str(path))
    return rows


def subjects_of(cfg: dict[str, Any]) -> list[str]:
    """Sorted subject labels of the configured data source."""
    data = cfg["data"]
    if "phantom" in data:
        return phantom_subjects(data["phantom"]["subjects"])
    if "dicom_root" in data:
        root = Path(data["dicom_root"])
        return sorted(_check_label(p.name, str(root)) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if "bids_root" in data:
        root = Path(data["bids_root"])
        return sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    return sorted({row["subject"] for row in read_manifest(Path(data["manifest"]))})


def ingest_inputs(cfg: dict[str, Any], subject: str) -> list[str]:
    """Paths that the ingest job of ``subject`` reads (files or folders)."""
    data = cfg["data"]
    if "phantom" in data:
        return [f"{cfg['results']}/phantom/dicom/{subject}"]
    if "dicom_root" in data:
        return [str(Path(data["dicom_root"]) / subject)]
    if "bids_root" in data:
        folder = Path(data["bids_root"]) / subject
        return sorted(str(p) for p in folder.glob("**/anat/*.nii*"))
    # the manifest itself: ingest takes the rows of this subject (it knows each row's modality)
    return [data["manifest"]]
