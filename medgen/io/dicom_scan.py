"""Header scan: group DICOM files into series and note, per slice, its geometry and where its pixels lie.

:func:`scan_dicom` reads headers only (pydicom, ``stop_before_pixels``), groups files by
SeriesInstanceUID, sets aside non-image objects (SR, RT, waveforms, DICOMDIR, presentation
states, ...) and reports unreadable or truncated files by name. The geometry of every slice (or
frame of an enhanced multi-frame object) is collected here, so loading needs no second header
pass.

Why raw bytes beside pydicom: pydicom stops before the pixels but says neither where PixelData
starts nor whether the file holds all of it (it silently accepts a short final element). The
few bytes after the header give both (:class:`PixelLayout`): truncated files are refused here,
by name, instead of failing halfway through loading, and :mod:`medgen.io.dicom_pixels` reads
native little-endian pixels straight from that offset with numpy, falling back to pydicom's
decoders for everything else. The scan keeps pydicom for the header itself (character sets,
VRs, sequences, enhanced functional groups).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["DicomSeriesError", "DicomFrame", "PixelLayout", "DicomSeries", "ScanReport", "scan_dicom",
           "series_frames", "series_error", "header_number"]

#: Media Storage Directory (DICOMDIR).
_DICOMDIR_UID = "1.2.840.10008.1.3.10"

#: SOP class UID prefixes of objects that carry no image to convert, with the reason given.
_NON_IMAGE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report / key object"),
    ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data / registration / segmentation / surface object"),
    ("1.2.840.10008.5.1.4.1.1.4.2", "MR spectroscopy"),
    (_DICOMDIR_UID, "DICOMDIR (media directory)"),
)

#: Transfer syntaxes whose pixel bytes can be read straight into numpy.
_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}

_UNDEFINED_LENGTH = 0xFFFFFFFF


class DicomSeriesError(ValueError):
    """A series (or file) medgen refuses to convert; the message names the series, the fault and the tag."""


@dataclass(frozen=True)
class PixelLayout:
    """Where and how a file's pixels are stored (from the header scan)."""

    transfer_syntax: str
    rows: int
    cols: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    n_frames: int
    value_offset: int  # byte offset of the PixelData value in the file
    value_length: int | None  # None: encapsulated (compressed)

    @property
    def raw_readable(self) -> bool:
        """Whether numpy can read the pixels directly (native little endian, 8/16/32 bit, grey)."""
        return (
            self.transfer_syntax in _NATIVE_LE
            and self.value_length is not None
            and self.bits_allocated in (8, 16, 32)
            and self.samples == 1
        )


@dataclass(frozen=True)
class DicomFrame:
    """One 2D image: a single-frame file, or frame ``frame`` (0-based) of a multi-frame file.

    position: ImagePositionPatient (LPS mm) or None; orientation: ImageOrientationPatient (6,)
    or None; pixel_spacing: (between rows, between columns) mm or None.
    """

    path: Path
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float  # NaN when the header holds a value that is not a number
    intercept: float
    instance_number: int | None
    layout: PixelLayout
    image_type: tuple[str, ...] = ()
    spacing_source: str = "PixelSpacing (0028,0030)"


@dataclass
class DicomSeries:
    """The files of one SeriesInstanceUID, with the header of the first and per-frame geometry."""

    series_uid: str
    files: list[Path]
    modality: str
    description: str
    series_number: int | None
    header: Dataset
    study_uid: str = ""
    image_type: tuple[str, ...] = ()
    frames: list[DicomFrame] = field(default_factory=list)
    multiframe: bool = False
    gantry_tilt_deg: float | None = None  # GantryDetectorTilt (0018,1120) of the first file
    acq: str = ""  # plane label (axi/cor/sag) of one orientation split from a mixed series
    part: str = ""  # what this part is, when split from a larger series (for messages)

    @property
    def label(self) -> str:
        """``series 3`` (SeriesNumber (0020,0011); never the free-text description), plus the part."""
        number = self.series_number if self.series_number is not None else "? (no SeriesNumber (0020,0011))"
        return f"series {number}" + (f" [{self.part}]" if self.part else "")

    def where(self) -> str:
        """Label plus one file path, for error messages."""
        first = sorted(self.files)[0] if self.files else "?"
        return f"{self.label} ({first})"


@dataclass
class ScanReport:
    """What :func:`scan_dicom` found: image series, skipped non-image objects, failed files."""

    series: list[DicomSeries]
    skipped: list[tuple[Path, str]]
    failed: list[tuple[Path, str]]


def series_error(series: DicomSeries, message: str) -> DicomSeriesError:
    """The error to raise for ``series``: its label and one file, then ``message``."""
    return DicomSeriesError(f"{series.where()}: {message}")


# --------------------------------------------------------------------------------------------
# Reading one file


def _iter_files(inputs: Sequence[Path | str]) -> Iterable[Path]:
    """Every regular file under the inputs (folders recursively), sorted, each once.

    Hidden files and folders inside an input folder (``.DS_Store``, workflow timestamps) are
    not candidates; a hidden file named explicitly is.
    """
    seen: set[Path] = set()
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            candidates = sorted(
                p for p in item.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(item).parts)
            )
        elif item.is_file():
            candidates = [item]
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
        for path in candidates:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                yield path


class _FileFault(Exception):
    """A file that cannot be used; the message is the reason."""


def _read_header(path: Path) -> tuple[Dataset, int, bytes]:
    """Header (no pixel data), byte offset where reading stopped, and the 12 bytes found there."""
    size = path.stat().st_size
    if size == 0:
        raise _FileFault("empty file")
    with open(path, "rb") as fh:
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except InvalidDicomError:
            # No preamble/"DICM": old ACR-NEMA style files are still DICOM datasets; accept them
            # only if the forced read yields an SOP Class UID (a text file does not).
            fh.seek(0)
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds or not str(ds.SOPClassUID).startswith("1.2"):
                    raise _FileFault("not a DICOM file (no DICM prefix and no SOP Class UID)")
            except _FileFault:
                raise
            except Exception as exc:
                raise _FileFault(f"not a DICOM file ({type(exc).__name__})") from exc
        except Exception as exc:  # pydicom raises many types on damaged headers
            raise _FileFault(f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
        stop = fh.tell()
        head = fh.read(12)
    _check_lengths(ds, size)
    return ds, stop, head


def _check_lengths(ds: Dataset, size: int) -> None:
    """Refuse a header whose elements claim bytes beyond the end of the file (truncated file).

    pydicom silently accepts a short final element; the raw (not yet decoded) elements still
    know where their value starts and how long it should be, so compare with the file size.
    """
    for elem in getattr(ds, "_dict", {}).values():  # raw elements only: decoded ones lost the offset
        tell = getattr(elem, "value_tell", None)
        length = getattr(elem, "length", None)
        if tell is None or length is None or length == _UNDEFINED_LENGTH:
            continue
        if tell + length > size:
            raise _FileFault(
                f"truncated: element {elem.tag} declares {length} bytes at offset {tell}, the file ends at {size}"
            )


def _non_image_reason(ds: Dataset) -> str | None:
    """Why this object is not an image to convert, or None if it is one."""
    sop = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", ""))
    meta_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if meta_sop == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
        return "DICOMDIR (media directory, no image)"
    for prefix, what in _NON_IMAGE_PREFIXES:
        if sop.startswith(prefix):
            return f"{what}: {UID(sop).name}"
    return None


def _pixel_layout(ds: Dataset, stop: int, head: bytes, size: int) -> PixelLayout:
    """Locate PixelData after the header and check the file holds all of it."""
    if len(head) < 8:
        raise _FileFault("no PixelData (7FE0,0010): the file ends after the header")
    implicit, little = ds.original_encoding
    endian = "<" if little else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group, elem) != (0x7FE0, 0x0010):
        raise _FileFault(f"no PixelData (7FE0,0010); found ({group:04X},{elem:04X}) instead (float pixel data is not supported)")
    # Some writers store PixelData implicitly inside an explicit-VR file; the VR bytes tell.
    if implicit or not head[4:6].isalpha():
        (length,), header_len = struct.unpack(endian + "L", head[4:8]), 8
    else:
        (length,), header_len = struct.unpack(endian + "L", head[8:12]), 12
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    offset = stop + header_len
    available = size - offset
    if length == _UNDEFINED_LENGTH:
        if available < 16:  # at least a Basic Offset Table item and one fragment item header
            raise _FileFault("truncated: encapsulated PixelData (7FE0,0010) holds no fragments")
        value_length = None
    else:
        per_pixel = 2 if str(ds.get("PhotometricInterpretation", "")).startswith("YBR_FULL_422") else samples
        expected = (rows * cols * per_pixel * frames * bits + 7) // 8
        if length > available:
            raise _FileFault(f"truncated: PixelData (7FE0,0010) declares {length} bytes, the file holds {available}")
        if length < expected:
            raise _FileFault(
                f"PixelData (7FE0,0010) holds {length} bytes, Rows x Columns x frames needs {expected}"
            )
        value_length = length
    return PixelLayout(
        transfer_syntax=ts, rows=rows, cols=cols, samples=samples, bits_allocated=bits,
        bits_stored=int(ds.get("BitsStored", bits) or bits), signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        n_frames=frames, value_offset=offset, value_length=value_length,
    )


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    """``n`` floats from a multi-valued DS, or None when absent/malformed."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]))
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def header_number(value: object, default: float) -> float:
    """A header value as a float; ``default`` when absent or not a number."""
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _rescale_value(ds: Dataset | None, keyword: str, default: float) -> float:
    """RescaleSlope/Intercept of ``ds``: ``default`` when absent, NaN when present but not a number.

    Unlike :func:`header_number`, a malformed value is not replaced by the default: loading refuses it.
    pydicom raises while decoding a DS that is not a number; that too becomes NaN here.
    """
    if ds is None:
        return default
    try:
        value = ds.get(keyword)
        if value in (None, ""):
            return default
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _image_type(ds: Dataset) -> tuple[str, ...]:
    return tuple(str(v).upper() for v in (ds.get("ImageType") or []))


#: Pixel spacing of a 2D image without patient geometry, in order of preference: PixelSpacing is
#: calibrated to the patient; ImagerPixelSpacing is measured at the detector (it includes the
#: geometric magnification of a projection).
_PROJECTION_SPACING = (("PixelSpacing", "PixelSpacing (0028,0030)"), ("ImagerPixelSpacing", "ImagerPixelSpacing (0018,1164)"))


def _single_frames(path: Path, ds: Dataset, layout: PixelLayout) -> list[DicomFrame]:
    inst = ds.get("InstanceNumber")
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing, source = _floats(ds.get("PixelSpacing"), 2), "PixelSpacing (0028,0030)"
    if spacing is None and position is None and orientation is None:  # projection: detector spacing
        for keyword, name in _PROJECTION_SPACING[1:]:
            spacing, source = _floats(ds.get(keyword), 2), name
            if spacing is not None:
                break
    try:
        instance = int(inst) if inst not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    return [
        DicomFrame(
            path=path, frame=None, position=position, orientation=orientation,  # type: ignore[arg-type]
            pixel_spacing=spacing,  # type: ignore[arg-type]
            slope=_rescale_value(ds, "RescaleSlope", 1.0), intercept=_rescale_value(ds, "RescaleIntercept", 0.0),
            instance_number=instance, layout=layout, image_type=_image_type(ds), spacing_source=source,
        )
    ]


def _group_item(groups: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    """First item of a functional-group macro, per-frame first, then shared."""
    for source in (groups, shared):
        if source is not None and sequence in source and len(source[sequence].value):
            return source[sequence].value[0]
    return None


def _multi_frames(path: Path, ds: Dataset, layout: PixelLayout) -> list[DicomFrame]:
    """Per-frame geometry of an enhanced multi-frame object from its functional groups."""
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []) or [])
    shared_seq = ds.get("SharedFunctionalGroupsSequence", []) or []
    shared = shared_seq[0] if len(shared_seq) else None
    top_slope, top_inter = _rescale_value(ds, "RescaleSlope", 1.0), _rescale_value(ds, "RescaleIntercept", 0.0)
    frames = []
    for k in range(layout.n_frames):
        groups = per_frame[k] if k < len(per_frame) else None
        pos = _group_item(groups, shared, "PlanePositionSequence")
        ori = _group_item(groups, shared, "PlaneOrientationSequence")
        meas = _group_item(groups, shared, "PixelMeasuresSequence")
        pvt = _group_item(groups, shared, "PixelValueTransformationSequence")
        frames.append(
            DicomFrame(
                path=path, frame=k,
                position=_floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None,  # type: ignore[arg-type]
                orientation=_floats(ori.get("ImageOrientationPatient"), 6) if ori is not None else None,
                pixel_spacing=_floats(meas.get("PixelSpacing"), 2) if meas is not None else None,  # type: ignore[arg-type]
                slope=_rescale_value(pvt, "RescaleSlope", top_slope), intercept=_rescale_value(pvt, "RescaleIntercept", top_inter),
                instance_number=k + 1, layout=layout, image_type=_image_type(ds),
            )
        )
    return frames


@dataclass
class _Scanned:
    path: Path
    header: Dataset
    frames: list[DicomFrame]


def _scan_file(path: Path) -> _Scanned | str:
    """Header and frames of an image file, or the reason (str) it is a non-image object.

    Raises _FileFault for unreadable/truncated files.
    """
    ds, stop, head = _read_header(path)
    reason = _non_image_reason(ds)
    if reason is not None:
        return reason
    if "Rows" not in ds or "Columns" not in ds:
        sop = str(ds.get("SOPClassUID", "") or "")
        raise _FileFault(f"no image pixel module (Rows/Columns (0028,0010/0011) absent; {UID(sop).name if sop else 'no SOP class'})")
    layout = _pixel_layout(ds, stop, head, path.stat().st_size)
    if "SeriesInstanceUID" not in ds:
        raise _FileFault("image without SeriesInstanceUID (0020,000E)")
    multi = layout.n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
    frames = _multi_frames(path, ds, layout) if multi else _single_frames(path, ds, layout)
    return _Scanned(path, ds, frames)


# --------------------------------------------------------------------------------------------
# Grouping files into series


def _series_number(ds: Dataset) -> int | None:
    value = ds.get("SeriesNumber")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _make_series(uid: str, members: list[_Scanned]) -> DicomSeries:
    members = sorted(members, key=lambda m: str(m.path))
    first = members[0].header
    tilt = first.get("GantryDetectorTilt")
    return DicomSeries(
        series_uid=uid,
        files=[m.path for m in members],
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        series_number=_series_number(first),
        header=first,
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        image_type=tuple(str(v).upper() for v in (first.get("ImageType") or [])),
        frames=[f for m in members for f in m.frames],
        multiframe=any(f.frame is not None for m in members for f in m.frames),
        gantry_tilt_deg=header_number(tilt, 0.0) if tilt not in (None, "") else None,
    )


def scan_dicom(inputs: Sequence[Path | str]) -> ScanReport:
    """Group the DICOM image files under ``inputs`` (files or folders, any depth) into series.

    Headers only are read. Non-image objects go to ``skipped``, unreadable/truncated/pixel-less
    files to ``failed``, each with a reason; neither stops the scan. Series are ordered by
    (StudyInstanceUID, SeriesNumber, SeriesInstanceUID). Input files are opened read-only.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    groups: dict[str, list[_Scanned]] = {}
    skipped: list[tuple[Path, str]] = []
    failed: list[tuple[Path, str]] = []
    for path in _iter_files(inputs):
        try:
            result = _scan_file(path)
        except _FileFault as exc:
            failed.append((path, str(exc)))
            continue
        except OSError as exc:
            failed.append((path, f"cannot read ({exc.strerror or exc})"))
            continue
        if isinstance(result, str):
            skipped.append((path, result))
        else:
            groups.setdefault(str(result.header.SeriesInstanceUID), []).append(result)
    series = [_make_series(uid, members) for uid, members in groups.items()]
    series.sort(key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else -1, s.series_uid))
    return ScanReport(series=series, skipped=skipped, failed=failed)


def series_frames(series: DicomSeries) -> list[DicomFrame]:
    """The frames of ``series``; for a DicomSeries built without them (e.g. by hand), read the headers again."""
    if series.frames:
        return series.frames
    frames: list[DicomFrame] = []
    for path in series.files:
        try:
            result = _scan_file(Path(path))
        except _FileFault as exc:
            raise series_error(series, f"{path}: {exc}") from None
        if isinstance(result, str):
            raise series_error(series, f"{path}: {result}")
        frames.extend(result.frames)
    return frames
