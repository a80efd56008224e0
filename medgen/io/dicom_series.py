"""Find DICOM image series in files and folders and load each as a float32 volume with a RAS affine.

Two steps, so that a caller can decide per series what to convert:

* :func:`scan_dicom` reads headers only (``stop_before_pixels``), groups files by
  SeriesInstanceUID, sets aside non-image objects (SR, RT, waveforms, DICOMDIR, presentation
  states, ...) and reports unreadable or truncated files by name. The geometry of every slice
  (or frame of an enhanced multi-frame object) is collected here, so loading needs no second
  header pass.
* :func:`load_series` orders slices along the slice normal, checks the stack (orientation,
  duplicates, spacing, gantry tilt, localizers), reads the pixels, applies the per-slice rescale
  and returns ``(X, Y, Z)`` float32 in physical units with a voxel -> RAS affine.

Why not SimpleITK's ImageSeriesReader alone: it only warns on missing slices, uneven spacing and
sheared (tilted) stacks and returns an image whose geometry silently misplaces slices; here each
of these is an error naming the series, or an explicit, recorded resampling.

Decisions worth knowing:

* One series with several ImageOrientationPatient values (e.g. a 3-plane localizer) is refused,
  not split: the parts are nearly always localizers, and a split would invent series identities.
* Files of one series that share slice positions (echoes, time points) are refused (4D is out of
  scope), naming the count.
* Compressed transfer syntaxes are decoded by pydicom with whatever decoder plugins are installed
  (RLE always; JPEG/JPEG 2000 via Pillow or GDCM where present). Without a decoder the error
  names the transfer syntax and the file; there is no silent fallback to another reader.
* Enhanced multi-frame objects (one file, many frames) are read from the per-frame/shared
  functional groups; a multi-frame object without plane position/orientation is refused.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medgen.io import dicom_geometry as geo

log = logging.getLogger(__name__)

__all__ = ["DicomSeriesError", "DicomFrame", "PixelLayout", "DicomSeries", "ScanReport", "LoadedSeries", "scan_dicom", "load_series"]

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
    slope: float
    intercept: float
    instance_number: int | None
    layout: PixelLayout


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

    @property
    def label(self) -> str:
        """``series 3 "T1w SE"``: for messages (no patient data)."""
        number = self.series_number if self.series_number is not None else "?"
        return f'series {number} "{self.description}"'

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


@dataclass
class LoadedSeries:
    """A converted series: ``array`` (X, Y, Z) float32 physical units, ``affine`` voxel -> RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    header: Dataset
    warnings: list[str] = field(default_factory=list)
    corrections: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Scanning


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


def _number(value: object, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _single_frames(path: Path, ds: Dataset, layout: PixelLayout) -> list[DicomFrame]:
    inst = ds.get("InstanceNumber")
    return [
        DicomFrame(
            path=path, frame=None,
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            slope=_number(ds.get("RescaleSlope"), 1.0), intercept=_number(ds.get("RescaleIntercept"), 0.0),
            instance_number=int(inst) if inst not in (None, "") else None, layout=layout,
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
    top_slope, top_inter = _number(ds.get("RescaleSlope"), 1.0), _number(ds.get("RescaleIntercept"), 0.0)
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
                slope=_number(pvt.get("RescaleSlope"), top_slope) if pvt is not None else top_slope,
                intercept=_number(pvt.get("RescaleIntercept"), top_inter) if pvt is not None else top_inter,
                instance_number=k + 1, layout=layout,
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
        gantry_tilt_deg=_number(tilt, 0.0) if tilt not in (None, "") else None,
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


# --------------------------------------------------------------------------------------------
# Loading


def _fail(series: DicomSeries, message: str) -> DicomSeriesError:
    return DicomSeriesError(f"{series.where()}: {message}")


def _refuse_non_volumes(series: DicomSeries, frames: list[DicomFrame], min_slices: int) -> None:
    """Localizers, too few slices, colour and images without geometry."""
    if "LOCALIZER" in series.image_type:
        raise _fail(series, "is a localizer (ImageType (0008,0008) contains LOCALIZER), not a volume")
    if len(frames) < min_slices:
        raise _fail(series, f"has {len(frames)} slice(s), fewer than the {min_slices} needed for a volume")
    if any(f.layout.samples != 1 for f in frames):
        raise _fail(series, "is a colour image (SamplesPerPixel (0028,0002) > 1); only greyscale volumes are supported")
    for attr, tag in (("position", "ImagePositionPatient (0020,0032)"), ("orientation", "ImageOrientationPatient (0020,0037)"),
                      ("pixel_spacing", "PixelSpacing (0028,0030)")):
        missing = [f for f in frames if getattr(f, attr) is None]
        if missing:
            where = "per-frame/shared functional groups" if series.multiframe else "header"
            if series.multiframe:
                tag += {"position": " / PlanePositionSequence (0020,9113)", "orientation": " / PlaneOrientationSequence (0020,9116)",
                        "pixel_spacing": " / PixelMeasuresSequence (0028,9110)"}[attr]
            raise _fail(series, f"{len(missing)} of {len(frames)} slices lack {tag} in the {where}: no geometry to place them")
    dims = {(f.layout.rows, f.layout.cols) for f in frames}
    if len(dims) > 1:
        raise _fail(series, f"slices differ in size (Rows, Columns) (0028,0010/0011): {sorted(dims)}")


def _common_orientation(series: DicomSeries, frames: list[DicomFrame]) -> geo.Orientation:
    distinct: list[tuple[float, ...]] = []
    for f in frames:
        if not any(geo.same_orientation(f.orientation, d) for d in distinct):  # type: ignore[arg-type]
            distinct.append(f.orientation)  # type: ignore[arg-type]
    if len(distinct) > 1:
        shown = "; ".join("[" + ", ".join(f"{v:.4g}" for v in d) + "]" for d in distinct[:4])
        raise _fail(series, f"mixes {len(distinct)} slice orientations (ImageOrientationPatient (0020,0037): {shown}); "
                            "refusing to stack them (localizer or several acquisitions in one series?)")
    spacings = {f.pixel_spacing for f in frames}
    if len(spacings) > 1:
        raise _fail(series, f"slices differ in PixelSpacing (0028,0030): {sorted(spacings)[:4]}")
    try:
        return geo.orientation_axes(np.array(distinct[0]))
    except geo.GeometryError as exc:
        raise _fail(series, str(exc)) from None


def _read_raw(frames: list[DicomFrame]) -> np.ndarray:
    """Stored values (n, rows, cols) of native little-endian single-frame files, read with numpy."""
    lay = frames[0].layout
    dtype = np.dtype(f"<{'i' if lay.signed else 'u'}{lay.bits_allocated // 8}")
    count = lay.rows * lay.cols
    out = np.empty((len(frames), lay.rows, lay.cols), dtype=dtype)
    for n, f in enumerate(frames):
        out[n] = np.fromfile(f.path, dtype=dtype, count=count, offset=f.layout.value_offset).reshape(lay.rows, lay.cols)
    shift = lay.bits_allocated - lay.bits_stored
    if shift:
        if lay.signed:  # sign-extend the stored bits (two's complement in the low BitsStored bits)
            out = (out << shift) >> shift
        else:  # bits above BitsStored may hold overlays: not part of the value
            out &= dtype.type((1 << lay.bits_stored) - 1)
    return out


def _decode(series: DicomSeries, path: Path) -> np.ndarray:
    """All frames of one file via pydicom (compressed, big endian, multi-frame...): (frames, rows, cols)."""
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise assorted types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) if "ds" in locals() else None
        name = f"{UID(str(ts)).name} ({ts})" if ts else "unknown transfer syntax"
        raise _fail(series, f"cannot decode pixels of {path} [transfer syntax {name}]: {type(exc).__name__}: {exc}") from exc
    return arr[np.newaxis] if arr.ndim == 2 else arr


def _stored_values(series: DicomSeries, frames: list[DicomFrame]) -> np.ndarray:
    """Stored pixel values (n, rows, cols) for the frames in the given order."""
    if all(f.frame is None and f.layout.raw_readable for f in frames):
        layouts = {(f.layout.bits_allocated, f.layout.bits_stored, f.layout.signed) for f in frames}
        if len(layouts) == 1:
            try:
                return _read_raw(frames)
            except (OSError, ValueError) as exc:
                raise _fail(series, f"cannot read pixels: {exc}") from exc
    cache: dict[Path, np.ndarray] = {}
    slices = []
    for f in frames:
        if f.path not in cache:
            cache[f.path] = _decode(series, f.path)
        data = cache[f.path]
        slices.append(data[f.frame or 0])
    return np.stack(slices)


def _to_physical(stored: np.ndarray, frames: list[DicomFrame]) -> np.ndarray:
    """Apply each slice's RescaleSlope/Intercept; float32 (n, rows, cols)."""
    slopes = np.array([f.slope for f in frames], dtype=np.float64)
    inters = np.array([f.intercept for f in frames], dtype=np.float64)
    if np.all(slopes == 1) and np.all(inters == np.round(inters)) and np.abs(stored).max(initial=0) < 2**24 - 2**16:
        # Integers below 2**24 are exact in float32: skip the float64 detour (hot path for CT).
        out = stored.astype(np.float32)
        if np.any(inters):
            out += inters.astype(np.float32)[:, None, None]
        return out
    return (stored * slopes[:, None, None] + inters[:, None, None]).astype(np.float32)


def _check_stack(series: DicomSeries, dist: np.ndarray) -> None:
    dups = geo.duplicate_positions(dist)
    if dups:
        raise _fail(series, f"{dups} slice(s) share a position with another slice (ImagePositionPatient (0020,0032)); "
                            "several echoes/time points/acquisitions in one series are not supported")


def _spacing_problem(series: DicomSeries, check: geo.SpacingCheck, n: int) -> str:
    bad = check.steps[check.uneven]
    return (f"uneven slice spacing along the normal (ImagePositionPatient (0020,0032)): expected "
            f"{check.median_step:.4g} mm between all slices, found {len(bad)} step(s) of "
            f"{', '.join(f'{s:.4g}' for s in bad[:5])} mm; {n} slices found, a uniform stack over the same extent "
            f"would have {check.expected_count} (missing slice?)")


def load_series(
    series: DicomSeries,
    *,
    on_tilt: str = "refuse",
    on_uneven: str = "refuse",
    min_slices: int = 3,
) -> LoadedSeries:
    """Load ``series`` as float32 (X, Y, Z) physical values (HU for CT) with a voxel -> RAS affine.

    Slices are ordered by position along the slice normal (not file name or InstanceNumber).
    ``on_tilt`` / ``on_uneven``: "refuse" (DicomSeriesError) or "resample" (onto an orthogonal,
    uniform grid; recorded in ``corrections`` and ``warnings``). Series with fewer than
    ``min_slices`` slices or ImageType LOCALIZER raise DicomSeriesError.
    """
    for name, value in (("on_tilt", on_tilt), ("on_uneven", on_uneven)):
        if value not in ("refuse", "resample"):
            raise ValueError(f"{name} must be 'refuse' or 'resample', got {value!r}")
    frames = series.frames or _rescan(series)
    _refuse_non_volumes(series, frames, min_slices)
    orient = _common_orientation(series, frames)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    order, dist = geo.slice_order(positions, orient.normal)
    frames = [frames[i] for i in order]
    positions = positions[order]
    _check_stack(series, dist)
    spacing = geo.check_spacing(dist) if len(dist) > 1 else None
    offsets = geo.lateral_offsets(positions, orient)
    # Shear: slice origins that do not lie on the normal through the first one.
    shear_mm = float(np.linalg.norm(offsets, axis=1).max())
    sheared = shear_mm > geo.SHEAR_TOL_MM
    warnings: list[str] = []
    corrections: dict = {}
    header_tilt = series.gantry_tilt_deg or 0.0
    if sheared:
        angle = geo.tilt_angle_deg(positions, orient)
        if on_tilt == "refuse":
            raise _fail(series, f"gantry tilt of {angle:.2f} deg: slice positions (ImagePositionPatient (0020,0032)) are "
                                f"sheared off the slice normal by up to {shear_mm:.3g} mm (GantryDetectorTilt (0018,1120) = "
                                f"{header_tilt:g} deg); to resample onto an orthogonal grid, ingest with --on-tilt resample (config ingest.on_tilt: resample)")
        corrections["gantry_tilt_deg"] = round(angle, 4)
        corrections["tilt_resampled"] = True
        warnings.append(f"{series.label}: gantry tilt {angle:.2f} deg corrected by resampling each slice in plane onto "
                        "an orthogonal grid (bilinear)")
    elif abs(header_tilt) > 0.01:
        warnings.append(f"{series.label}: GantryDetectorTilt (0018,1120) = {header_tilt:g} deg but the slices lie along "
                        "their normal (tilt already in ImageOrientationPatient); no correction needed")
    if spacing is not None and not spacing.uniform and on_uneven == "refuse":
        raise _fail(series, _spacing_problem(series, spacing, len(frames)) + "; to interpolate, ingest with --on-uneven resample (config ingest.on_uneven: resample)")

    stored = _stored_values(series, frames)
    slices = _to_physical(stored, frames)  # (Z, rows, cols)
    volume = slices.transpose(2, 1, 0)  # (X=cols, Y=rows, Z): a view, F-contiguous like NIfTI
    pixel_spacing = frames[0].pixel_spacing
    assert pixel_spacing is not None
    if sheared:
        volume = geo.unshear(volume, offsets, pixel_spacing, fill=float(volume.min()))
    step = float(dist[-1] - dist[0]) / (len(dist) - 1) if len(dist) > 1 else _single_slice_step(series.header)
    if spacing is not None and not spacing.uniform:
        volume, step = geo.regrid_along_normal(volume, dist, spacing.median_step)
        corrections["resampled"] = True
        corrections["uneven_spacing"] = {"median_step_mm": spacing.median_step, "found_slices": len(frames),
                                         "output_slices": int(volume.shape[2]), "output_step_mm": step}
        warnings.append(f"{series.label}: " + _spacing_problem(series, spacing, len(frames))
                        + f"; resampled linearly along the normal to {volume.shape[2]} slices of {step:.4g} mm")
    affine = geo.stack_affine(orient, pixel_spacing, positions[0], step)
    for w in warnings:
        log.warning(w)
    return LoadedSeries(array=volume, affine=affine, header=series.header, warnings=warnings, corrections=corrections)


def _single_slice_step(header: Dataset) -> float:
    """Slice step (mm) for a one-slice volume: SpacingBetweenSlices, else SliceThickness, else 1."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _number(header.get(keyword), 0.0)
        if value > 0:
            return value
    return 1.0


def _rescan(series: DicomSeries) -> list[DicomFrame]:
    """Frames of a DicomSeries built without them (e.g. by hand): read the headers again."""
    frames: list[DicomFrame] = []
    for path in series.files:
        try:
            result = _scan_file(Path(path))
        except _FileFault as exc:
            raise _fail(series, f"{path}: {exc}") from None
        if isinstance(result, str):
            raise _fail(series, f"{path}: {result}")
        frames.extend(result.frames)
    return frames
