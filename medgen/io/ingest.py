"""Ingest: DICOM folders, NIfTI files, BIDS-like trees and manifests -> de-identified NIfTI + JSON.

Every converted image lands at ``out_dir/<subject>/<modality>.nii.gz`` (float32, a header built
from scratch so that nothing of the source header travels) with a sidecar
``out_dir/<subject>/<modality>.json`` that holds whitelisted acquisition parameters
(:func:`medgen.io.deid.sidecar_from_header`) and how the conversion went.

Naming:

* subject: ``subject=`` if given (a manifest then contributes only that subject's rows); else the BIDS ``sub-*`` folder, the manifest's subject or a
  BIDS-like file name; for DICOM a keyed pseudonym of PatientID
  (:func:`medgen.io.deid.pseudonymise_subject`), never the ID or the name.
* modality: the manifest's or the BIDS suffix; for DICOM :func:`classify_series`.
* Two images with the same subject and modality in one run are ordered by SeriesNumber, then
  pseudonymised SeriesInstanceUID (NIfTI: by path); the first keeps ``<modality>``, the next
  become ``<modality>_run-2``, ``_run-3`` ... and the summary says so.

Nothing in the input is modified; failures of one series or file never stop the others.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medgen import __version__
from medgen.io.atomic import atomic_write_json
from medgen.io.deid import has_burned_in_annotation, pseudonymise_subject, pseudonymise_uid, sidecar_from_header
from medgen.io.discover import MODALITY_RE, SUBJECT_RE, Discovery, Source, discover, display_path, is_nifti
from medgen.io.nifti import NiftiError, load_nifti, save_nifti

log = logging.getLogger(__name__)

#: MR series naming: (pattern, label), tried in order on SeriesDescription, then ProtocolName,
#: then SequenceName; the first field with a match decides. Callers may insert their own
#: entries (e.g. ``MR_SERIES_PATTERNS.insert(0, (re.compile("my_t1_protocol", re.I), "T1w"))``).
#: FLAIR and T2* come before T2 so that "t2_flair" and "t2star" are not taken for T2w.
#: Letters around a token are excluded (not ``\b``, which treats ``_`` as part of a word).
MR_SERIES_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"flair", re.I), "FLAIR"),
    (re.compile(r"(?<![a-z0-9])(t2\*|t2[-_ ]?star|swi|t2[-_ ]?fl2d|gre[-_ ]?t2)", re.I), "T2starw"),
    (re.compile(r"(?<![a-z0-9])(t1|mp[-_ ]?rage|mp2rage|spgr|fspgr|tfe|bravo|tfl3d)", re.I), "T1w"),
    (re.compile(r"(?<![a-z0-9])t2(?![0-9])", re.I), "T2w"),
    (re.compile(r"(?<![a-z])(pd|pdw|proton[-_ ]?density)(?![a-z])", re.I), "PDw"),
]

#: Spellings of a modality accepted in file names, manifests and ``modalities=``, and the label
#: they stand for; anything else is kept as written.
MODALITY_ALIASES: dict[str, str] = {
    "t1": "T1w", "t1w": "T1w", "t2": "T2w", "t2w": "T2w", "flair": "FLAIR", "pd": "PDw", "pdw": "PDw",
    "t2star": "T2starw", "t2starw": "T2starw", "ct": "CT", "mr": "MR",
}

_POLICIES = {
    "on_tilt": ("refuse", "resample"),
    "on_uneven": ("refuse", "resample"),
    "nonfinite": ("error", "zero", "min"),
    "form_mismatch": ("error", "warn"),
}


@dataclass
class IngestOptions:
    """How to treat doubtful input (see ``medgen ingest --help``)."""

    on_tilt: str = "refuse"
    on_uneven: str = "refuse"
    keep_descriptions: bool = False
    uid_salt: str = "medgen"
    nonfinite: str = "error"
    form_mismatch: str = "error"
    min_slices: int = 3

    def validate(self) -> None:
        """Raise ValueError for an unknown policy value."""
        for name, allowed in _POLICIES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {self.min_slices}")
        if not self.uid_salt:
            raise ValueError("uid_salt must not be empty")


@dataclass
class IngestSummary:
    """What an ingest run did; ``skipped``/``failed`` hold (what, reason), never patient identifiers."""

    converted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def render(self) -> str:
        """A human summary: counts, then one line per converted, skipped, failed and missing item."""
        lines = [
            f"ingest: converted {len(self.converted)}, skipped {len(self.skipped)}, failed {len(self.failed)}"
            + (f", missing {len(self.missing)}" if self.missing else "")
        ]
        for item in self.converted:
            shape = "x".join(str(n) for n in item["shape"])
            spacing = "x".join(f"{s:.3g}" for s in item["spacing"])
            lines.append(f"  converted {item['subject']}/{item['name']} <- {item['source']} {item['what']} ({shape}, {spacing} mm)")
            for note in item.get("notes", []):
                lines.append(f"    note: {note}")
            for warning in item.get("warnings", []):
                lines.append(f"    warning: {warning}")
        lines += [f"  skipped {what}: {reason}" for what, reason in self.skipped]
        lines += [f"  failed {what}: {reason}" for what, reason in self.failed]
        lines += [f"  missing {text}" for text in self.missing]
        return "\n".join(lines)

    @property
    def exit_code(self) -> int:
        """0, unless a requested modality is missing or nothing was converted (1)."""
        return 1 if self.missing or not self.converted else 0


@dataclass
class _Loaded:
    """A volume ready to write, with its sidecar and the warnings to show."""

    array: np.ndarray
    affine: np.ndarray
    sidecar: dict[str, Any]
    warnings: list[str]


class _Refused(Exception):
    """A source deliberately not converted (reported as skipped, not failed)."""


class _Failed(Exception):
    """A source that could not be converted; the message is already safe to show."""


@dataclass
class _Job:
    """One image to convert; ``load`` reads it, raising _Refused or another exception."""

    subject: str
    modality: str
    source: str  # "dicom" | "nifti"
    what: str
    order: tuple[float, str]
    load: Callable[[], _Loaded]


# --------------------------------------------------------------------------- naming


def normalise_modality(label: str) -> str:
    """The canonical spelling of a modality label (:data:`MODALITY_ALIASES`), else ``label``."""
    label = label.strip()
    return MODALITY_ALIASES.get(label.lower(), label)


def classify_series(header: Any) -> str:
    """The modality label of a DICOM series: "CT"; for MR T1w/T2w/FLAIR/PDw/T2starw or "MR"; else its Modality code.

    MR series are recognised from their SeriesDescription, ProtocolName or SequenceName with
    :data:`MR_SERIES_PATTERNS`; a series matching none is plain "MR".
    """
    modality = str(header.get("Modality", "") or "").strip().upper()
    if modality != "MR":
        return modality or "OT"
    for keyword in ("SeriesDescription", "ProtocolName", "SequenceName"):
        text = str(header.get(keyword, "") or "")
        for pattern, label in MR_SERIES_PATTERNS:
            if pattern.search(text):
                return label
    return "MR"


def _check_label(label: str, pattern: re.Pattern[str], kind: str) -> str:
    if not pattern.match(label):
        raise ValueError(f"{kind} label {label!r} must be letters, digits and - (subject also . _), not starting with a symbol")
    return label


def _scrub(value: Any, paths: Sequence[Path]) -> Any:
    """``value`` with every input path replaced by "<input>" (sidecars never carry local paths)."""
    if isinstance(value, str):
        for p in sorted({str(p) for p in paths if str(p) not in ("", ".")}, key=len, reverse=True):
            value = value.replace(p, "<input>")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, paths) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, paths) for v in value]
    return value


def _spacing(affine: np.ndarray) -> list[float]:
    return [float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))]


# --------------------------------------------------------------------------- NIfTI


def _nifti_job(src: Source, subject: str | None, options: IngestOptions) -> _Job:
    subject = subject or src.subject
    if not subject:
        raise ValueError("no subject: pass --subject, use a BIDS-like name sub-<label>_<modality>.nii.gz or a manifest")
    if not src.modality:
        raise ValueError("no modality: name the file <...>_<modality>.nii.gz or use a manifest")
    paths = [src.path, src.path.resolve(), src.root, src.root.resolve()]

    def load() -> _Loaded:
        try:
            vol = load_nifti(src.path, nonfinite=options.nonfinite, form_mismatch=options.form_mismatch)  # type: ignore[arg-type]
        except NiftiError as exc:  # name the file as the summary does, not by its absolute path
            raise _Failed(str(exc).replace(str(src.path), src.display)) from exc
        warnings = _scrub(list(vol.warnings), paths)
        sidecar = {
            "medgen_version": __version__,
            "source": "nifti",
            "shape": list(vol.array.shape),
            "spacing": _spacing(vol.affine),
            "warnings": warnings,
        }
        return _Loaded(vol.array, vol.affine, sidecar, warnings)

    return _Job(subject, normalise_modality(src.modality), "nifti", src.display, (math.inf, str(src.path)), load)


# --------------------------------------------------------------------------- DICOM


def _dicom_subject(header: Any, salt: str) -> str:
    """Keyed pseudonym of PatientID (of the study UID when PatientID is empty)."""
    patient_id = str(header.get("PatientID", "") or "").strip()
    key = patient_id or "study:" + str(header.get("StudyInstanceUID", "") or "")
    return pseudonymise_subject(key, salt)


def _series_number(header: Any) -> float:
    try:
        return float(header.get("SeriesNumber"))
    except (TypeError, ValueError):
        return math.inf


def _series_what(series: Any, src: Source) -> str:
    """"<folder> series <N> (<Modality>)": enough to find it, nothing read from identifying fields."""
    folder = Path(series.files[0]).parent if series.files else src.path
    number = series.series_number if series.series_number is not None else "?"
    return f"{display_path(folder, src.root)} series {number} ({series.modality or '?'})"


def _series_text(text: str, series: Any, src: Source, *, keep_descriptions: bool, for_sidecar: bool) -> str:
    """A message of the DICOM reader made safe to show: file paths shortened (sidecars: removed),
    the series description withheld unless kept (scanner free text may hold a name)."""
    for path in sorted({str(p) for p in series.files}, key=len, reverse=True):
        text = text.replace(path, "<file>" if for_sidecar else display_path(Path(path), src.root))
    text = _scrub(text, [src.path, src.path.resolve(), src.root, src.root.resolve()])
    description = str(series.description or "").strip()
    if description and not keep_descriptions:
        text = text.replace(f'"{description}"', '"<description withheld>"')
        if len(description) >= 3:
            text = text.replace(description, "<description withheld>")
    return text


def _dicom_load(series: Any, src: Source, options: IngestOptions) -> Callable[[], _Loaded]:
    def clean(value: Any, for_sidecar: bool) -> Any:
        if isinstance(value, str):
            return _series_text(value, series, src, keep_descriptions=options.keep_descriptions, for_sidecar=for_sidecar)
        if isinstance(value, dict):
            return {k: clean(v, for_sidecar) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, for_sidecar) for v in value]
        return value

    def load() -> _Loaded:
        from medgen.io.dicom_series import DicomSeriesError, load_series

        try:
            loaded = load_series(series, on_tilt=options.on_tilt, on_uneven=options.on_uneven, min_slices=options.min_slices)
        except DicomSeriesError as exc:
            raise _Refused(clean(str(exc), for_sidecar=False)) from exc
        except Exception as exc:  # reported as failed; the message must be as safe as a refusal's
            raise _Failed(clean(f"{type(exc).__name__}: {exc}", for_sidecar=False)) from exc
        warnings = clean([str(w) for w in loaded.warnings], for_sidecar=True)
        if has_burned_in_annotation(series.header):
            warnings.append("BurnedInAnnotation is YES: the pixels may show identifying text; review before sharing")
        sidecar = sidecar_from_header(series.header, keep_descriptions=options.keep_descriptions, salt=options.uid_salt)
        sidecar.update(
            {
                "medgen_version": __version__,
                "source": "dicom",
                "n_slices": len(series.frames) or len(series.files),
                "shape": list(np.shape(loaded.array)),
                "spacing": _spacing(loaded.affine),
                "warnings": warnings,
                "corrections": clean(dict(loaded.corrections or {}), for_sidecar=True),
            }
        )
        return _Loaded(np.asarray(loaded.array, dtype=np.float32), np.asarray(loaded.affine, dtype=np.float64), sidecar, warnings)

    return load


def _dicom_jobs(src: Source, subject: str | None, options: IngestOptions, summary: IngestSummary, seen: set[str]) -> list[_Job]:
    """Scan one DICOM input; its unreadable/non-image files go to the summary, its series become jobs."""
    from medgen.io.dicom_series import scan_dicom

    log.info("scanning %s for DICOM", src.display)
    report = scan_dicom([src.path])
    for target, found in ((summary.skipped, report.skipped), (summary.failed, report.failed)):
        for path, reason in found:
            if is_nifti(Path(path)):
                continue  # discovery took it as a NIfTI source
            shown = display_path(Path(path), src.root)
            target.append((shown, str(reason).replace(str(path), shown)))
            log.warning("%s %s: %s", "skipped" if target is summary.skipped else "failed", shown, target[-1][1])
    jobs = []
    for series in report.series:
        what = _series_what(series, src)
        if series.series_uid in seen:
            summary.skipped.append((what, "same series already read from another input"))
            continue
        seen.add(series.series_uid)
        header = series.header
        jobs.append(
            _Job(
                subject=subject or src.subject or _dicom_subject(header, options.uid_salt),
                modality=normalise_modality(src.modality) if src.modality else classify_series(header),
                source="dicom",
                what=what,
                order=(_series_number(header), pseudonymise_uid(str(series.series_uid), options.uid_salt)),
                load=_dicom_load(series, src, options),
            )
        )
    return jobs


# --------------------------------------------------------------------------- the run


def _collect_jobs(found: Discovery, subject: str | None, options: IngestOptions, summary: IngestSummary) -> list[_Job]:
    jobs: list[_Job] = []
    seen_series: set[str] = set()
    for src in found.sources:
        try:
            if src.kind == "nifti":
                jobs.append(_nifti_job(src, subject, options))
            else:
                jobs.extend(_dicom_jobs(src, subject, options, summary, seen_series))
        except ValueError as exc:
            summary.failed.append((src.display, str(exc)))
    valid = []
    for job in jobs:
        try:
            _check_label(job.subject, SUBJECT_RE, "subject")
            _check_label(job.modality, MODALITY_RE, "modality")
        except ValueError as exc:
            summary.failed.append((job.what, str(exc)))
            continue
        valid.append(job)
    return sorted(valid, key=lambda j: (j.subject, j.modality, j.order, j.what))


def _write(job: _Job, loaded: _Loaded, name: str, out_dir: Path) -> dict[str, Any]:
    subject_dir = out_dir / job.subject
    image = save_nifti(subject_dir / f"{name}.nii.gz", loaded.array, loaded.affine)
    sidecar = atomic_write_json(subject_dir / f"{name}.json", loaded.sidecar)
    return {
        "subject": job.subject,
        "modality": job.modality,
        "name": name,
        "output": str(image),
        "sidecar": str(sidecar),
        "source": job.source,
        "what": job.what,
        "shape": list(loaded.array.shape),
        "spacing": _spacing(loaded.affine),
        "warnings": list(loaded.warnings),
        "notes": [],
    }


def _run_job(job: _Job, names: dict[tuple[str, str], list[str]], out_dir: Path, summary: IngestSummary) -> None:
    """Load, name and write one job; its failure is recorded, never raised."""
    try:
        loaded = job.load()
    except _Refused as exc:
        summary.skipped.append((job.what, str(exc)))
        log.warning("skipped %s: %s", job.what, exc)
        return
    except Exception as exc:  # one bad series must not stop the rest; the reason is reported
        reason = str(exc) if isinstance(exc, _Failed) else f"{type(exc).__name__}: {exc}"
        summary.failed.append((job.what, reason))
        log.warning("failed %s: %s", job.what, exc)
        return
    taken = names.setdefault((job.subject, job.modality), [])
    name = job.modality if not taken else f"{job.modality}_run-{len(taken) + 1}"
    try:
        item = _write(job, loaded, name, out_dir)
    except (OSError, ValueError) as exc:
        summary.failed.append((job.what, f"cannot write {job.subject}/{name}: {exc}"))
        log.warning("failed %s: %s", job.what, exc)
        return
    if taken:
        item["notes"].append(f"{job.subject}/{job.modality} already taken by {taken[0]} in this run; written as {name}")
    taken.append(job.what)
    summary.converted.append(item)
    log.info("converted %s -> %s/%s.nii.gz", job.what, job.subject, name)


def _missing(requested: Sequence[str], subjects: set[str], summary: IngestSummary) -> list[str]:
    """One line per (subject, requested modality) that was not converted, naming what was."""
    wanted = [normalise_modality(m) for m in requested]
    out = []
    for subject in sorted(subjects):
        found = sorted({c["modality"] for c in summary.converted if c["subject"] == subject})
        have = {m.lower() for m in found}
        for modality in wanted:
            if modality.lower() not in have:
                out.append(f"{subject}: {modality} not found (found: {', '.join(found) or 'nothing'})")
    if not subjects:
        out += [f"{normalise_modality(m)} not found (no subject found in the inputs)" for m in requested]
    return out


def ingest(
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    subject: str | None = None,
    modalities: Sequence[str] | None = None,
    options: IngestOptions | None = None,
) -> IngestSummary:
    """Convert every image found in ``inputs`` to ``out_dir/<subject>/<modality>.nii.gz`` + ``.json``.

    ``subject`` assigns all inputs to one subject (of a manifest, only that subject's rows are
    read: the workflow gives each per-subject job the whole manifest). ``modalities`` must each be found for every
    subject (else listed in ``summary.missing``, exit code 1); other images are still converted.
    Raises FileNotFoundError for an input that does not exist and ValueError for bad options.
    """
    options = options or IngestOptions()
    options.validate()
    if subject is not None:
        _check_label(subject, SUBJECT_RE, "subject")
    out_dir = Path(out_dir)
    found = discover([Path(p) for p in inputs], subject=subject)
    summary = IngestSummary(skipped=list(found.skipped), failed=list(found.failed))
    jobs = _collect_jobs(found, subject, options, summary)
    names: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        _run_job(job, names, out_dir, summary)
    if modalities:
        subjects = {job.subject for job in jobs} | ({subject} if subject else set())
        summary.missing = _missing(modalities, subjects, summary)
        for line in summary.missing:
            log.warning("missing %s", line)
    return summary
