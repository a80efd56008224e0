"""Ingest: DICOM folders, NIfTI files, BIDS-like trees and manifests -> de-identified NIfTI + JSON.

Every converted image lands at ``out_dir/<subject>/<modality>.nii.gz`` (float32, a header built
from scratch so that nothing of the source header travels) with a sidecar
``out_dir/<subject>/<modality>.json`` that holds whitelisted acquisition parameters
(:func:`medgen.io.deid.sidecar_from_header`) and how the conversion went.

Naming:

* subject: ``subject=`` if given (a manifest then contributes only that subject's rows, matched
  by their subject or its pseudonym); else the BIDS ``sub-*`` folder or BIDS-like file name; a
  manifest's subject as a keyed pseudonym (as written with ``keep_subject_labels``); for DICOM a
  keyed pseudonym of PatientID (:func:`medgen.io.deid.pseudonymise_subject`), never the ID or
  the name. The key is the study's secret (``IngestOptions.uid_salt``, else ``MEDGEN_UID_SALT``).
* messages name inputs relative to the input, with the input's own name replaced by ``subject=``
  when given (hospital exports name folders after the patient); every log handler gets the same
  redaction as the summary (:mod:`medgen.io.redact`).
* modality: the manifest's or the BIDS suffix; for DICOM :func:`classify_series`.
* A DICOM series that mixes slice orientations is split into one image per orientation
  (:func:`medgen.io.dicom_series.split_series`), each written as ``<modality>_acq-<plane>``
  (plane axi/cor/sag from the slice normal); a series of several 2D images without patient
  geometry (CR, DX, MG) gives one image each.
* Two images with the same name in one run are ordered by SeriesNumber, then pseudonymised
  SeriesInstanceUID, then part (NIfTI: by path); the first keeps ``<name>``, the next become
  ``<name>_run-2``, ``_run-3`` ... and the summary says so.

Nothing in the input is modified; failures of one series or file never stop the others. With
``subject=`` (the workflow's one job per subject), what the run did is also written as JSON in the
subject's folder (:data:`medgen.layout.INGEST_SUMMARY`), for the report and other programs; its
messages name inputs by the subject, as the log does. Without ``subject=`` they would name the
input folders (possibly after the patient), so no summary file is written.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medgen import __version__
from medgen.io.atomic import atomic_write_json
from medgen.io.deid import has_burned_in_annotation, pseudonymise_subject, pseudonymise_uid, sidecar_from_header
from medgen.io.discover import MODALITY_RE, SUBJECT_RE, Discovery, Source, discover, is_nifti
from medgen.io.redact import Redactor, redacting_logs
from medgen.io.secret import load_secret
from medgen.io.nifti import NiftiError, load_nifti, save_nifti
from medgen.layout import INGEST_SUMMARY

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

    on_tilt: str = "resample"
    on_uneven: str = "refuse"
    keep_descriptions: bool = False
    uid_salt: str | None = None  # the secret; None: read by ingest() from MEDGEN_UID_SALT
    nonfinite: str = "error"
    form_mismatch: str = "error"
    min_slices: int = 1
    allow_constant: bool = False
    keep_subject_labels: bool = False  # manifest subjects as written (else keyed pseudonyms)
    merge_patients: bool = False  # let one --subject take inputs of several patients

    def validate(self) -> None:
        """Raise ValueError for an unknown policy value."""
        for name, allowed in _POLICIES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} (ingest.{name}) must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.min_slices < 1:
            raise ValueError(f"--min-slices (ingest.min_slices) must be >= 1, got {self.min_slices}")
        if self.uid_salt is not None and not self.uid_salt:
            raise ValueError("the secret (MEDGEN_UID_SALT / ingest.uid_salt_file) must not be empty")


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

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data: each converted image without its local paths (its file is
        ``<subject>/<name>.nii.gz`` under the output folder); skipped and failed as {what, reason}."""
        local = ("output", "sidecar")
        return {
            "medgen_version": __version__,
            "exit_code": self.exit_code,
            "converted": [{k: v for k, v in item.items() if k not in local} for item in self.converted],
            "skipped": [{"what": what, "reason": reason} for what, reason in self.skipped],
            "failed": [{"what": what, "reason": reason} for what, reason in self.failed],
            "missing": list(self.missing),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IngestSummary":
        """The summary that :meth:`to_dict` gave (as read back from its JSON file)."""

        def pairs(key: str) -> list[tuple[str, str]]:
            return [(str(i.get("what", "")), str(i.get("reason", ""))) for i in data.get(key) or [] if isinstance(i, dict)]

        return cls(converted=list(data.get("converted") or []), skipped=pairs("skipped"), failed=pairs("failed"), missing=list(data.get("missing") or []))

    def write(self, path: Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``, atomically."""
        return atomic_write_json(path, self.to_dict())


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
    order: tuple[float, str, int]
    load: Callable[[], _Loaded]
    acq: str = ""  # plane of one orientation split from a mixed DICOM series: written as <modality>_acq-<plane>
    notes: list[str] = field(default_factory=list)
    patient: str | None = None  # DICOM: PatientID (or study) key, only compared, never shown


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


def _constant_value(array: np.ndarray) -> float | None:
    """The value of every voxel when ``array`` is constant, else None."""
    if not np.size(array):
        return None
    lo, hi = float(np.min(array)), float(np.max(array))
    return lo if lo == hi else None


def _allow_constant(sidecar: dict[str, Any], warnings: list[str], value: float) -> None:
    """Record in the sidecar that a constant image was let through (preprocessing reads this)."""
    warnings.append(f"every voxel is {value:g}: kept because ingest.allow_constant is true (--allow-constant)")
    sidecar["constant_allowed"] = True


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
        constant = _constant_value(vol.array)
        if constant is not None and not options.allow_constant:
            raise _Refused(f"{src.display}: every voxel is {constant:g}: a constant image holds nothing to learn from and is "
                           "usually a damaged export; if it is intended, pass --allow-constant (config ingest.allow_constant: true)")
        sidecar = {
            "medgen_version": __version__,
            "source": "nifti",
            "shape": list(vol.array.shape),
            "spacing": _spacing(vol.affine),
            "warnings": warnings,
        }
        if constant is not None:
            _allow_constant(sidecar, warnings, constant)
        return _Loaded(vol.array, vol.affine, sidecar, warnings)

    return _Job(subject, normalise_modality(src.modality), "nifti", src.display, (math.inf, str(src.path), 0), load)


# --------------------------------------------------------------------------- DICOM


def _dicom_subject(header: Any, salt: str) -> str:
    """Keyed pseudonym of PatientID (of the study UID when PatientID is empty)."""
    return pseudonymise_subject(_patient_key(header), salt)


def _series_number(header: Any) -> float:
    try:
        return float(header.get("SeriesNumber"))
    except (TypeError, ValueError):
        return math.inf


def _series_what(series: Any, src: Source) -> str:
    """"<folder> series <N> (<Modality>)": enough to find it, nothing read from identifying fields."""
    folder = Path(series.files[0]).parent if series.files else src.path
    number = series.series_number if series.series_number is not None else "?"
    return f"{src.show(folder)} series {number} ({series.modality or '?'})"


def _series_text(text: str, series: Any, src: Source, *, keep_descriptions: bool, for_sidecar: bool) -> str:
    """A message of the DICOM reader made safe to show: file paths shortened (sidecars: removed),
    the series description withheld unless kept (scanner free text may hold a name)."""
    for path in sorted({str(p) for p in series.files}, key=len, reverse=True):
        text = text.replace(path, "<file>" if for_sidecar else src.show(path))
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
            loaded = load_series(series, on_tilt=options.on_tilt, on_uneven=options.on_uneven, min_slices=options.min_slices,
                                 allow_constant=options.allow_constant)
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
                "conversion": clean(dict(loaded.info or {}), for_sidecar=True),
            }
        )
        constant = _constant_value(loaded.array)
        if constant is not None:  # load_series refused it unless allowed
            _allow_constant(sidecar, warnings, constant)
        return _Loaded(np.asarray(loaded.array, dtype=np.float32), np.asarray(loaded.affine, dtype=np.float64), sidecar, warnings)

    return load


def _redact_series(redactor: Redactor, series: Any, src: Source, keep_descriptions: bool) -> None:
    """Make every log handler show what the summary shows: file paths relative, descriptions withheld."""
    for path in series.files:
        redactor.add(str(path), src.show(path))
    description = str(series.description or "").strip()
    if description and not keep_descriptions:
        redactor.add(description, "<description withheld>")


def _patient_key(header: Any) -> str:
    """Who a series belongs to: PatientID, else its study (what the PatientID pseudonym is made of)."""
    patient_id = str(header.get("PatientID", "") or "").strip()
    return patient_id or "study:" + str(header.get("StudyInstanceUID", "") or "")


def _dicom_jobs(
    src: Source, subject: str | None, options: IngestOptions, summary: IngestSummary, seen: set[str], redactor: Redactor
) -> list[_Job]:
    """Scan one DICOM input; its unreadable/non-image files go to the summary, its series become jobs."""
    from medgen.io.dicom_series import scan_dicom, split_series

    for path in (src.path, src.path.resolve()):
        redactor.add(str(path), src.show(src.path))
    log.info("scanning %s for DICOM", src.display)
    report = scan_dicom([src.path])
    for target, found in ((summary.skipped, report.skipped), (summary.failed, report.failed)):
        for path, reason in found:
            if is_nifti(Path(path)):
                continue  # discovery took it as a NIfTI source
            shown = src.show(path)
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
        _redact_series(redactor, series, src, options.keep_descriptions)
        split = split_series(series)
        for path, reason in split.dropped:
            shown = src.show(Path(path))
            summary.skipped.append((shown, _series_text(reason, series, src, keep_descriptions=options.keep_descriptions, for_sidecar=False)))
        notes = [_series_text(n, series, src, keep_descriptions=options.keep_descriptions, for_sidecar=False) for n in split.notes]
        for index, part in enumerate(split.parts):
            jobs.append(
                _Job(
                    subject=subject or src.subject or _dicom_subject(header, options.uid_salt),
                    modality=normalise_modality(src.modality) if src.modality else classify_series(header),
                    source="dicom",
                    what=what + (f" [{part.part}]" if part.part else ""),
                    order=(_series_number(header), pseudonymise_uid(str(series.series_uid), options.uid_salt), index),
                    load=_dicom_load(part, src, options),
                    acq=part.acq,
                    notes=notes if index == 0 else [],
                    patient=_patient_key(header),
                )
            )
    return jobs


# --------------------------------------------------------------------------- the run


def _collect_jobs(
    found: Discovery, subject: str | None, options: IngestOptions, summary: IngestSummary, redactor: Redactor
) -> list[_Job]:
    jobs: list[_Job] = []
    seen_series: set[str] = set()
    for src in found.sources:
        try:
            if src.kind == "nifti":
                jobs.append(_nifti_job(src, subject, options))
            else:
                jobs.extend(_dicom_jobs(src, subject, options, summary, seen_series, redactor))
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
        "acq": job.acq,
        "output": str(image),
        "sidecar": str(sidecar),
        "source": job.source,
        "what": job.what,
        "shape": list(loaded.array.shape),
        "spacing": _spacing(loaded.affine),
        "warnings": list(loaded.warnings),
        "notes": list(job.notes),
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
    base = job.modality + (f"_acq-{job.acq}" if job.acq else "")
    taken = names.setdefault((job.subject, base), [])
    name = base if not taken else f"{base}_run-{len(taken) + 1}"
    try:
        item = _write(job, loaded, name, out_dir)
    except (OSError, ValueError) as exc:
        summary.failed.append((job.what, f"cannot write {job.subject}/{name}: {exc}"))
        log.warning("failed %s: %s", job.what, exc)
        return
    if taken:
        item["notes"].append(f"{job.subject}/{base} already taken by {taken[0]} in this run; written as {name}")
    taken.append(job.what)
    summary.converted.append(item)
    log.info("converted %s -> %s/%s.nii.gz", job.what, job.subject, name)


def _check_one_patient(jobs: Sequence[_Job], subject: str, options: IngestOptions) -> None:
    """Refuse to file the series of several patients under one ``subject`` unless told to merge."""
    groups: dict[str, list[str]] = {}
    for job in jobs:
        if job.patient is not None:
            groups.setdefault(job.patient, []).append(job.what)
    if len(groups) > 1 and not options.merge_patients:
        listed = "; ".join(f"patient {n}: {', '.join(whats)}" for n, whats in enumerate(groups.values(), start=1))
        raise ValueError(
            f"the inputs of subject {subject} hold {len(groups)} patients (different PatientID (0010,0020), or "
            f"StudyInstanceUID (0020,000D) where PatientID is empty): {listed}. Ingest each patient's folder "
            "as its own subject, or pass --merge-patients (config ingest.merge_patients: true) if they are one person"
        )


def _missing(requested: Sequence[str], subjects: set[str], summary: IngestSummary) -> list[str]:
    """One line per (subject, requested modality) that was not converted, naming what was."""
    wanted = [normalise_modality(m) for m in requested]
    out = []
    for subject in sorted(subjects):
        # One orientation split from a mixed series (<modality>_acq-<plane>) is not the <modality> image.
        found = sorted({c["modality"] for c in summary.converted if c["subject"] == subject and not c.get("acq")})
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
    With ``subject``, the summary is also written to ``out_dir/<subject>/ingest_summary.json``.
    Raises FileNotFoundError for an input that does not exist and ValueError for bad options.
    """
    options = replace(options or IngestOptions())
    options.validate()
    if options.uid_salt is None:
        options.uid_salt = load_secret()
    if subject is not None:
        _check_label(subject, SUBJECT_RE, "subject")
    out_dir = Path(out_dir)
    salt = options.uid_salt
    label_of = None if options.keep_subject_labels else (lambda label: pseudonymise_subject(label, salt))
    found = discover([Path(p) for p in inputs], subject=subject, label_of=label_of)
    if subject is not None:  # the input folder may be named after the patient: show the subject instead
        found.sources = [s if s.display_root else replace(s, display_root=subject) for s in found.sources]
    summary = IngestSummary(skipped=list(found.skipped), failed=list(found.failed))
    redactor = Redactor()
    with redacting_logs(redactor):
        jobs = _collect_jobs(found, subject, options, summary, redactor)
        if subject is not None:
            _check_one_patient(jobs, subject, options)
        names: dict[tuple[str, str], list[str]] = {}
        for job in jobs:
            _run_job(job, names, out_dir, summary)
    if modalities:
        subjects = {job.subject for job in jobs} | ({subject} if subject else set())
        summary.missing = _missing(modalities, subjects, summary)
        for line in summary.missing:
            log.warning("missing %s", line)
    if subject is not None:
        summary.write(out_dir / subject / INGEST_SUMMARY)
    return summary
