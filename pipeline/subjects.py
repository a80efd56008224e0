"""Which subjects a configured data source holds, what each is called, and what each ingest job reads.

Everything is known when the workflow is parsed (no checkpoints): the phantom's subjects are
numbered, a DICOM root has one folder per subject, a BIDS-like tree one ``sub-*`` folder each,
and a manifest lists them. BIDS trees and manifests are read by :mod:`medgen.io.discover`, as
``medgen ingest`` reads them.

Labels carry no identity: a DICOM folder name or a manifest's subject (hospital exports name them
after the patient) becomes a keyed pseudonym ``sub-<hash>`` (:func:`medgen.io.deid.pseudonymise_subject`
with the study's secret), the same in every job and rerun with the same secret. BIDS ``sub-*``
labels and the phantom's are kept, and so is every label with ``data.keep_subject_labels: true``.
The workflow names subjects by these labels only; :func:`subject_sources` maps each back to its
input for the ingest rule, and :func:`write_subject_mapping` writes that map where the user asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medgen import layout
from medgen.io.atomic import atomic_write_bytes
from medgen.io.deid import pseudonymise_subject
from medgen.io.discover import SUBJECT_RE, ManifestError, ManifestRow, bids_images, bids_subject_dirs
from medgen.io.discover import read_manifest as _read_manifest

#: Keys of ``data`` that name the input source (exactly one is set).
SOURCE_KEYS = ("phantom", "dicom_root", "bids_root", "manifest")


def phantom_subjects(n: int) -> list[str]:
    """``sub-001`` ... as the phantom names them."""
    return [f"sub-{i:03d}" for i in range(1, n + 1)]


def _check_label(label: str, origin: str) -> str:
    if not SUBJECT_RE.match(label):
        raise ValueError(f"{origin}: a subject label must be letters, digits, '-', '_' or '.' (one is not)")
    return label


def read_manifest(path: Path) -> list[ManifestRow]:
    """Rows of a manifest TSV (:func:`medgen.io.discover.read_manifest`), every subject a valid label.

    Raises ValueError naming the manifest when it has no usable header or a subject is no label;
    rows without a subject are left to the input checks (:mod:`pipeline.checks`), which name them.
    """
    try:
        rows = _read_manifest(Path(path))
    except ManifestError as exc:
        raise ValueError(f"{path}: {exc}") from None
    for row in rows:
        if row.subject:
            _check_label(row.subject, f"{path} row {row.number}")
    return rows


def needs_secret(cfg: Mapping[str, Any]) -> bool:
    """True for every source but the phantom (its demo secret is public)."""
    return "phantom" not in cfg["data"]


def _original_labels(cfg: Mapping[str, Any]) -> tuple[list[str], bool]:
    """(labels as the source names them, whether they are kept as they are)."""
    data = cfg["data"]
    keep = bool(data.get("keep_subject_labels", False))
    if "phantom" in data:
        return phantom_subjects(data["phantom"]["subjects"]), True
    if "dicom_root" in data:
        root = Path(data["dicom_root"])
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), keep
    if "bids_root" in data:
        return [p.name for p in bids_subject_dirs(Path(data["bids_root"]))], True
    return sorted({row.subject for row in read_manifest(Path(data["manifest"])) if row.subject}), keep


def subject_sources(cfg: Mapping[str, Any], secret: str | None) -> dict[str, str]:
    """Workflow label -> the label its source uses (folder name, manifest subject), sorted by label.

    Raises ValueError when a label is needed but ``secret`` is None, when a kept label is not a
    valid name, or when two inputs would get the same pseudonym.
    """
    originals, keep = _original_labels(cfg)
    if keep:
        return {_check_label(o, "data"): o for o in originals}
    if not secret:
        raise ValueError("subject pseudonyms need the secret (MEDGEN_UID_SALT or ingest.uid_salt_file)")
    out: dict[str, str] = {}
    for original in originals:
        label = pseudonymise_subject(original, secret)
        if label in out:
            raise ValueError(f"two subjects of data get the same pseudonym {label}; rename one input folder")
        out[label] = original
    return dict(sorted(out.items()))


def subjects_of(cfg: Mapping[str, Any], secret: str | None = None) -> list[str]:
    """Sorted workflow subject labels of the configured data source (see :func:`subject_sources`)."""
    return list(subject_sources(cfg, secret))


def ingest_inputs(cfg: Mapping[str, Any], subject: str, sources: Mapping[str, str] | None = None) -> list[str]:
    """Paths that the ingest job of ``subject`` (a workflow label) reads (files or folders)."""
    data = cfg["data"]
    original = sources[subject] if sources is not None else subject
    if "phantom" in data:
        return [layout.phantom_dicom(cfg["results"], subject)]
    if "dicom_root" in data:
        return [str(Path(data["dicom_root"]) / original)]
    if "bids_root" in data:
        folder = next(p for p in bids_subject_dirs(Path(data["bids_root"])) if p.name == original)
        return [str(p) for p in bids_images(folder)[0]]
    # the manifest itself: ingest takes the rows of this subject (it knows each row's modality)
    return [data["manifest"]]


def write_subject_mapping(path: Path | str, sources: Mapping[str, str]) -> Path:
    """Write ``original<TAB>label`` lines, readable by the owner only (the one place originals and pseudonyms meet)."""
    lines = ["original\tlabel"] + [f"{original}\t{label}" for label, original in sorted(sources.items(), key=lambda kv: kv[1])]
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"), mode=0o600)
