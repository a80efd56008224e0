"""Multi-modal digital brain phantom cohort (T1w, T2w, CT, labels) built from real anatomy.

Anatomy comes from the MNI ICBM152 2009a symmetric template (T1 and GM/WM probability maps shipped
inside nilearn's wheel, 1 mm, skull-stripped). Each subject is a smooth random deformation plus a
small similarity transform of the template. Since the template has no head, CSF, skull (inner
table, diploe, outer table), fat and skin are built as shells around the brain: each shell's outer
boundary is a distance from the brain surface given by a smooth, per-subject thickness field.
Every voxel holds tissue *fractions* (partial volume); MR images follow the spin-echo signal
equation, CT is a fraction-weighted mix of HU. Values are quantised exactly as the DICOM writer
stores them, so NIfTI and DICOM outputs hold the same numbers on the same grid.

Determinism: subject ``i`` (``sub-{i+1:03d}``) draws everything from child ``i`` of
``np.random.SeedSequence(seed)``, so a subject does not depend on which others are generated.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage as ndi
from tqdm import tqdm

from medgen.data.settings import PhantomSettings
from medgen.data.tissues import LABELS, LESION_LABEL, SHELL_ORDER, TISSUES
from medgen.io.atomic import atomic_folder, atomic_write_json
from medgen.io.dicom_write import PatientIdentity, default_rescale, quantise, write_dicom_series
from medgen.io.nifti import save_nifti

__all__ = [
    "SEQUENCES",
    "SubjectPhantom",
    "generate_cohort",
    "make_subject",
    "subject_ids",
    "write_subject_dicom",
    "write_subject_nifti",
]

log = logging.getLogger(__name__)

TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
#: Template padding (mm) for the brain distance field; beyond it the distance is clamped, which is
#: harmless as long as it exceeds the thickest possible head (sum of the largest shells, ~26 mm).
TEMPLATE_PAD_MM = 32.0
#: Output grid margin (mm) around the template brain: the head plus room for scaling, rotation and
#: deformation. Tests check that the grid border is air.
GRID_PAD_MM = 36.0

#: Spin-echo protocols (ms). MR values are scaled by MR_SCALE so that stored integers span ~0..3000.
SEQUENCES: dict[str, dict[str, float]] = {
    "T1w": {"tr_ms": 500.0, "te_ms": 15.0},
    "T2w": {"tr_ms": 4000.0, "te_ms": 100.0},
}
MR_SCALE = 3000.0
#: Gaussian point-spread function (voxels) applied to every image before noise.
PSF_SIGMA_VOX = 0.5

#: Base thickness ranges (mm) of each shell, drawn per subject, then modulated over the surface.
SHELL_THICKNESS_MM: dict[int, tuple[float, float]] = {
    6: (1.0, 3.0),  # subarachnoid CSF
    5: (1.0, 2.0),  # inner table
    4: (2.0, 4.5),  # diploe
    3: (1.5, 2.5),  # outer table
    2: (1.5, 4.0),  # subcutaneous fat
    1: (2.0, 4.0),  # skin and muscle
}

SERIES = (  # (NIfTI name, series description, modality, series number)
    ("T1w", "T1w SE", "MR", 1),
    ("T2w", "T2w SE", "MR", 2),
    ("CT", "CT head", "CT", 3),
)

_FIRST_NAMES = ("JANE", "JOHN", "MARIA", "AHMED", "LI", "SOFIA", "PETER", "AMARA", "LUCAS", "YUKI", "NOAH", "EVA")
_LAST_NAMES = ("DOE", "ROE", "SMITH", "GARCIA", "MUELLER", "NOVAK", "OKAFOR", "TANAKA", "SILVA", "JANSEN", "KOWALSKI")
_INSTITUTIONS = (
    "Example General Hospital", "Riverside Imaging Centre", "St Placeholder Clinic", "Northfield Medical Campus",
    "Lakeside University Hospital",
)


# --------------------------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """Template maps cropped to the brain and padded, on their 1 mm grid (RAS affine)."""

    gm: np.ndarray  # (X, Y, Z) float32 probability
    wm: np.ndarray
    sdist: np.ndarray  # signed distance (mm) to the brain envelope, negative inside
    affine: np.ndarray
    brain_min_mm: np.ndarray  # RAS bounding box of the brain
    brain_max_mm: np.ndarray


def _template_path(kind: str) -> Path:
    return Path(str(resources.files("nilearn") / "datasets" / "data" / TEMPLATE_FILE.format(kind)))


def _signed_distance(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Signed distance (mm) to the mask boundary, negative inside; the boundary lies half a voxel out."""
    outside = ndi.distance_transform_edt(~mask).astype(np.float32)
    inside = ndi.distance_transform_edt(mask).astype(np.float32)
    return np.where(mask, 0.5 - inside, outside - 0.5) * np.float32(spacing_mm)


@lru_cache(maxsize=1)
def _template() -> _Template:
    """Load the template once per process (~3 s: the distance transform dominates)."""
    imgs = {k: nib.load(_template_path(k)) for k in ("gm", "wm")}
    affine = imgs["gm"].affine
    if not np.allclose(np.abs(affine[:3, :3]), np.eye(3)):
        raise ValueError("expected the 1 mm axis-aligned MNI template")
    gm, wm = (np.asarray(imgs[k].dataobj, dtype=np.float32) / 255.0 for k in ("gm", "wm"))
    # Brain envelope: smoothing before thresholding closes narrow sulci, filling holes adds the
    # ventricles; CSF inside the envelope then comes from 1 - GM - WM.
    envelope = ndi.gaussian_filter(gm + wm, 2.0) > 0.4
    envelope = ndi.binary_fill_holes(envelope)
    lo = np.argwhere(envelope).min(axis=0)
    hi = np.argwhere(envelope).max(axis=0) + 1
    pad = int(TEMPLATE_PAD_MM)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, envelope = (np.pad(a[crop], pad) for a in (gm, wm, envelope))
    shift = np.eye(4)
    shift[:3, 3] = lo - pad
    cropped_affine = affine @ shift
    brain_min = (affine @ np.array([*lo, 1.0]))[:3]
    brain_max = (affine @ np.array([*(hi - 1), 1.0]))[:3]
    return _Template(gm, wm, _signed_distance(envelope, 1.0), cropped_affine, brain_min, brain_max)


@lru_cache(maxsize=2)
def _template_maps(spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """GM/WM maps pre-blurred so that sampling them every ``spacing_mm`` approximates voxel averaging."""
    tpl = _template()
    # A box of width h has variance h^2/12; the template voxel already contributes 1 mm^2/12.
    sigma = np.sqrt(max(spacing_mm**2 - 1.0, 0.0) / 12.0)
    if sigma == 0:
        return tpl.gm, tpl.wm
    return ndi.gaussian_filter(tpl.gm, sigma), ndi.gaussian_filter(tpl.wm, sigma)


def output_grid(spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the phantom grid at ``spacing_mm`` (isotropic, axis-aligned)."""
    tpl = _template()
    centre = (tpl.brain_min_mm + tpl.brain_max_mm) / 2
    extent = tpl.brain_max_mm - tpl.brain_min_mm + 2 * GRID_PAD_MM
    shape = tuple(int(n) for n in np.ceil(extent / spacing_mm).astype(int) + 1)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = centre - (np.array(shape) - 1) / 2 * spacing_mm
    return shape, affine


# --------------------------------------------------------------------------------------------
# Random fields and subject parameters
# --------------------------------------------------------------------------------------------


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing_mm: float, correlation_mm: float, channels: int
) -> np.ndarray:
    """``channels`` smooth random fields on a grid, (channels, *shape) float32, zero mean, unit std.

    Gaussian bumps on a coarse control lattice (spacing ``correlation_mm``) with random weights. The
    lattice is separable, so the fields are three small matrix products instead of interpolating
    millions of voxels with scipy.ndimage.zoom.
    """
    weights = []
    for n in shape:
        x = np.arange(n) * spacing_mm
        centres = (np.arange(int(np.ceil(x[-1] / correlation_mm)) + 3) - 1) * correlation_mm
        weights.append(np.exp(-0.5 * ((x[None, :] - centres[:, None]) / correlation_mm) ** 2).astype(np.float32))
    z = rng.standard_normal((channels, *(w.shape[0] for w in weights))).astype(np.float32)
    f = np.tensordot(z, weights[0], axes=([1], [0]))  # (c, b, d, i)
    f = np.tensordot(f, weights[1], axes=([1], [0]))  # (c, d, i, j)
    f = np.tensordot(f, weights[2], axes=([1], [0]))  # (c, i, j, k)
    f -= f.mean(axis=(1, 2, 3), keepdims=True)
    f /= f.std(axis=(1, 2, 3), keepdims=True)
    return np.ascontiguousarray(f, dtype=np.float32)


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_params(rng: np.random.Generator) -> dict[str, Any]:
    """Scalar per-subject parameters (JSON-ready)."""
    scale = float(rng.uniform(0.95, 1.05))
    return {
        "global_scale": scale,
        "axis_scale": (scale * rng.uniform(0.98, 1.02, 3)).tolist(),
        "rotation_deg": rng.uniform(-4.0, 4.0, 3).tolist(),
        "translation_mm": rng.uniform(-2.0, 2.0, 3).tolist(),
        "deformation_std_mm": float(rng.uniform(1.5, 3.0)),
        "deformation_correlation_mm": 30.0,
        "shell_base_thickness_mm": {LABELS[k]: float(rng.uniform(*r)) for k, r in SHELL_THICKNESS_MM.items()},
        "shell_modulation": float(rng.uniform(0.15, 0.3)),
        "shell_correlation_mm": 40.0,
        "bias_amplitude": float(rng.uniform(0.05, 0.10)),
        "bias_correlation_mm": 80.0,
        "mr_noise_fraction_of_wm": float(rng.uniform(0.02, 0.04)),
        "ct_noise_hu": float(rng.uniform(5.0, 12.0)),
        "cortical_bone_hu": float(rng.uniform(1200.0, 1500.0)),
        "diploe_hu": float(rng.uniform(550.0, 850.0)),
    }


def _subject_tissues(rng: np.random.Generator, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Tissue table with per-subject jitter of relaxation (+-3 %) and PD (+-2 %) and per-subject bone HU."""
    table = []
    for t in TISSUES:
        row = {"label": t.label, "name": t.name, "t1_ms": t.t1_ms, "t2_ms": t.t2_ms, "pd": t.pd, "hu": t.hu}
        if t.label != 0:
            row["t1_ms"] *= float(rng.uniform(0.97, 1.03))
            row["t2_ms"] *= float(rng.uniform(0.97, 1.03))
            row["pd"] *= float(rng.uniform(0.98, 1.02))
        if t.label in (3, 5):
            row["hu"] = params["cortical_bone_hu"]
        elif t.label == 4:
            row["hu"] = params["diploe_hu"]
        table.append(row)
    return table


def _draw_identity(rng: np.random.Generator, index: int) -> PatientIdentity:
    """A fake identity; the subject index in the ID and accession makes it differ between subjects."""
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    birth = np.datetime64("1940-01-01") + int(rng.integers(0, 60 * 365))
    study = np.datetime64("2015-01-01") + int(rng.integers(0, 10 * 365))
    ymd = lambda d: str(d).replace("-", "")  # noqa: E731
    return PatientIdentity(
        name=f"{last}^{first}",
        patient_id=f"MG{int(rng.integers(100, 1000))}{index + 1:04d}",
        birth_date=ymd(birth),
        sex=str(rng.choice(["F", "M"])),
        institution=str(rng.choice(_INSTITUTIONS)),
        study_date=ymd(study),
        accession=f"ACC{int(rng.integers(1000, 10000))}{index + 1:04d}",
        referring_physician=f"{rng.choice(_LAST_NAMES)}^{rng.choice(_FIRST_NAMES)}",
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
    )


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


def _template_coordinates(
    shape: tuple[int, int, int], affine: np.ndarray, params: dict[str, Any], displacement: np.ndarray
) -> np.ndarray:
    """Template voxel coordinates (3, X, Y, Z) of every output voxel (pull-back of the subject warp).

    Subject = c + R S (template - c) + t, then a smooth displacement: template point =
    c + S^-1 R^T (x - c - t) + u(x), with u in mm.
    """
    tpl = _template()
    centre = (tpl.brain_min_mm + tpl.brain_max_mm) / 2
    inv = np.diag(1.0 / np.asarray(params["axis_scale"])) @ _rotation(params["rotation_deg"]).T
    tpl_inv = np.linalg.inv(tpl.affine)
    # index -> template index, as one affine map plus the displacement
    lin = tpl_inv[:3, :3] @ inv @ affine[:3, :3]
    origin_tpl = inv @ (affine[:3, 3] - centre - np.asarray(params["translation_mm"])) + centre
    off = tpl_inv[:3, :3] @ origin_tpl + tpl_inv[:3, 3]
    disp = np.tensordot(tpl_inv[:3, :3].astype(np.float32), displacement, axes=([1], [0]))
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    coords = np.empty((3, *shape), dtype=np.float32)
    for a in range(3):
        coords[a] = (lin[a, 0] * i)[:, None, None] + (lin[a, 1] * j)[None, :, None] + (lin[a, 2] * k)[None, None, :]
        coords[a] += off[a] + disp[a]
    return coords


def _cumulative(boundary_mm: np.ndarray | float, sdist: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Fraction of each voxel (width ``spacing_mm``) lying closer to the brain than ``boundary_mm``."""
    return np.clip(0.5 + (boundary_mm - sdist) / spacing_mm, 0.0, 1.0)


def _tissue_fractions(
    gm: np.ndarray, wm: np.ndarray, sdist: np.ndarray, thickness: dict[int, np.ndarray], spacing_mm: float
) -> np.ndarray:
    """Tissue fractions (10, X, Y, Z) float32 indexed by label (lesion channel still empty); they sum to 1."""
    fractions = np.zeros((LESION_LABEL + 1, *gm.shape), dtype=np.float32)
    inside = _cumulative(0.0, sdist, spacing_mm)
    total = gm + wm
    norm = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-6), 1.0)
    fractions[7] = gm * norm * inside
    fractions[8] = wm * norm * inside
    fractions[6] = (1.0 - (gm + wm) * norm) * inside  # ventricles and sulci
    boundary = np.zeros_like(sdist)
    previous = inside
    for label in SHELL_ORDER:
        boundary += thickness[label]
        current = _cumulative(boundary, sdist, spacing_mm)
        fractions[label] += current - previous
        previous = current
    fractions[0] = 1.0 - previous
    return fractions


@dataclass
class _Lesion:
    centre_mm: list[float]
    semi_axes_mm: list[float]
    rotation_deg: list[float]
    tissue: str
    t1_ms: float
    t2_ms: float
    pd: float
    hu: float
    region: tuple[slice, slice, slice] = field(repr=False, default=(slice(0), slice(0), slice(0)))
    fraction: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))

    def as_json(self) -> dict[str, Any]:
        keys = ("centre_mm", "semi_axes_mm", "rotation_deg", "tissue", "t1_ms", "t2_ms", "pd", "hu")
        return {k: getattr(self, k) for k in keys}


def _add_lesions(
    rng: np.random.Generator, fractions: np.ndarray, affine: np.ndarray, spacing_mm: float
) -> list[_Lesion]:
    """0-3 ellipsoids (semi-axes 2.5-6 mm) in WM or GM; each replaces GM/WM in proportion (partial volume)."""
    lesions = []
    for _ in range(int(rng.integers(0, 4))):
        tissue = "wm" if rng.random() < 0.7 else "gm"
        candidates = np.flatnonzero(fractions[8 if tissue == "wm" else 7] > (0.8 if tissue == "wm" else 0.6))
        centre_idx = np.unravel_index(int(rng.choice(candidates)), fractions.shape[1:])
        centre = (affine @ np.array([*centre_idx, 1.0]))[:3] + rng.uniform(-0.5, 0.5, 3) * spacing_mm
        axes = rng.uniform(2.5, 6.0, 3)
        angles = rng.uniform(-90.0, 90.0, 3)
        lesion = _Lesion(
            centre.tolist(), axes.tolist(), angles.tolist(), tissue,
            t1_ms=float(rng.uniform(1000.0, 1800.0)), t2_ms=float(rng.uniform(100.0, 250.0)),
            pd=float(rng.uniform(0.75, 0.95)), hu=float(rng.uniform(10.0, 70.0)),
        )
        _rasterise(lesion, fractions, affine, spacing_mm)
        lesions.append(lesion)
    return lesions


def _rasterise(lesion: _Lesion, fractions: np.ndarray, affine: np.ndarray, spacing_mm: float) -> None:
    """Fill ``lesion.fraction`` on a bounding box and move that share of GM/WM to the lesion channel."""
    centre, axes = np.asarray(lesion.centre_mm), np.asarray(lesion.semi_axes_mm)
    centre_idx = np.linalg.solve(affine[:3, :3], centre - affine[:3, 3])
    reach = axes.max() / spacing_mm + 2
    lo = np.maximum(np.floor(centre_idx - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre_idx + reach).astype(int) + 1, fractions.shape[1:])
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    idx = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), axis=-1)
    offset = idx @ affine[:3, :3].T + affine[:3, 3] - centre
    local = offset @ _rotation(lesion.rotation_deg)  # coordinates in the ellipsoid frame
    r = np.sqrt(((local / axes) ** 2).sum(axis=-1))
    # (r - 1) * smallest semi-axis approximates the signed distance to the surface (mm)
    share = np.clip(0.5 - (r - 1.0) * axes.min() / spacing_mm, 0.0, 1.0).astype(np.float32)
    brain = fractions[7][region] + fractions[8][region]
    lesion.fraction = share * brain
    lesion.region = region
    for label in (7, 8):
        fractions[label][region] *= 1.0 - share
    fractions[LESION_LABEL][region] += lesion.fraction


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def spin_echo(pd: float, t1_ms: float, t2_ms: float, tr_ms: float, te_ms: float) -> float:
    """Spin-echo signal S = PD (1 - exp(-TR/T1)) exp(-TE/T2) (arbitrary units, PD in 0..1)."""
    return float(pd * (1.0 - np.exp(-tr_ms / t1_ms)) * np.exp(-te_ms / t2_ms))


def _mix(fractions: np.ndarray, values: np.ndarray, lesions: list[_Lesion], lesion_values: list[float]) -> np.ndarray:
    """Fraction-weighted tissue values (X, Y, Z) float32; lesions add their own values on their region."""
    image = np.tensordot(values[:LESION_LABEL].astype(np.float32), fractions[:LESION_LABEL], axes=(0, 0))
    for lesion, value in zip(lesions, lesion_values):
        image[lesion.region] += np.float32(value) * lesion.fraction
    return image


def _mr_image(
    rng: np.random.Generator,
    fractions: np.ndarray,
    lesions: list[_Lesion],
    table: list[dict[str, Any]],
    sequence: dict[str, float],
    bias: np.ndarray,
    noise_fraction: float,
) -> tuple[np.ndarray, float]:
    """Quantised MR image (float32 holding integers >= 0) and the Rician sigma used."""
    signal = lambda t: MR_SCALE * spin_echo(t["pd"], t["t1_ms"], t["t2_ms"], **sequence)  # noqa: E731
    values = np.array([signal(t) for t in table])
    lesion_values = [signal(vars(lesion)) for lesion in lesions]
    image = ndi.gaussian_filter(_mix(fractions, values, lesions, lesion_values), PSF_SIGMA_VOX)
    image *= bias
    sigma = noise_fraction * values[8]
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    magnitude = np.sqrt(real * real + imag * imag)  # Rician: magnitude of complex Gaussian noise
    return quantise(magnitude, "MR", default_rescale("MR"), what="phantom MR").astype(np.float32), float(sigma)


def _ct_image(
    rng: np.random.Generator,
    fractions: np.ndarray,
    lesions: list[_Lesion],
    table: list[dict[str, Any]],
    sigma_hu: float,
) -> np.ndarray:
    """Quantised CT image in HU (float32 holding integers)."""
    values = np.array([t["hu"] for t in table])
    image = ndi.gaussian_filter(_mix(fractions, values, lesions, [lesion.hu for lesion in lesions]), PSF_SIGMA_VOX)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma_hu)
    stored = quantise(image, "CT", default_rescale("CT"), what="phantom CT")
    slope, intercept = default_rescale("CT")
    return (stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


@dataclass
class SubjectPhantom:
    """One subject: images (X, Y, Z) float32 on ``affine`` (RAS mm), labels uint8, and its parameters."""

    subject: str
    index: int
    affine: np.ndarray
    images: dict[str, np.ndarray]  # "T1w", "T2w" (integer-valued), "CT" (integer HU)
    labels: np.ndarray
    params: dict[str, Any]
    identity: PatientIdentity
    file_order_seed: np.random.SeedSequence = field(repr=False)  # DICOM file-name shuffle


def subject_ids(n_subjects: int) -> list[str]:
    """``sub-001`` ... for ``n_subjects`` subjects."""
    return [f"sub-{i + 1:03d}" for i in range(n_subjects)]


def _children(seed_seq: np.random.SeedSequence, n: int) -> list[np.random.SeedSequence]:
    """The first ``n`` children of ``seed_seq`` without advancing it (``spawn`` would, so a second
    call with the same object would draw a different subject)."""
    return [
        np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, i), pool_size=seed_seq.pool_size)
        for i in range(n)
    ]


def make_subject(seed_seq: np.random.SeedSequence, index: int, spacing_mm: float = 2.0) -> SubjectPhantom:
    """Draw subject ``index`` from its own seed sequence (child ``index`` of the cohort's)."""
    children = _children(seed_seq, 5)
    anatomy_rng, lesion_rng, noise_rng, identity_rng = (np.random.default_rng(s) for s in children[:4])
    shape, affine = output_grid(spacing_mm)
    params = _draw_params(anatomy_rng)
    table = _subject_tissues(anatomy_rng, params)

    displacement = smooth_noise(anatomy_rng, shape, spacing_mm, params["deformation_correlation_mm"], 3)
    displacement *= np.float32(params["deformation_std_mm"])
    coords = _template_coordinates(shape, affine, params, displacement)
    del displacement
    tpl = _template()
    gm_map, wm_map = _template_maps(spacing_mm)
    sample = lambda a: ndi.map_coordinates(a, coords, order=1, mode="nearest", output=np.float32)  # noqa: E731
    gm, wm = sample(gm_map), sample(wm_map)
    # Distances scale with the subject's size; the smooth deformation changes them by a few % only.
    sdist = sample(tpl.sdist) * np.float32(params["global_scale"])
    del coords

    modulation = smooth_noise(anatomy_rng, shape, spacing_mm, params["shell_correlation_mm"], len(SHELL_ORDER))
    thickness = {
        label: np.float32(params["shell_base_thickness_mm"][LABELS[label]])
        * np.clip(1.0 + params["shell_modulation"] * modulation[n], 0.5, 1.5)
        for n, label in enumerate(SHELL_ORDER)
    }
    del modulation
    fractions = _tissue_fractions(gm, wm, sdist, thickness, spacing_mm)
    del gm, wm, sdist, thickness
    lesions = _add_lesions(lesion_rng, fractions, affine, spacing_mm)

    bias_field = smooth_noise(noise_rng, shape, spacing_mm, params["bias_correlation_mm"], 1)[0]
    bias = np.exp(params["bias_amplitude"] * bias_field)  # multiplicative, about +-10-20 % at 2 sigma
    images = {}
    noise = {}
    for name, sequence in SEQUENCES.items():
        images[name], noise[f"{name}_rician_sigma"] = _mr_image(
            noise_rng, fractions, lesions, table, sequence, bias, params["mr_noise_fraction_of_wm"]
        )
    images["CT"] = _ct_image(noise_rng, fractions, lesions, table, params["ct_noise_hu"])
    labels = np.argmax(fractions, axis=0).astype(np.uint8)

    subject = subject_ids(index + 1)[index]
    params = {
        **params,
        "subject": subject,
        "spacing_mm": spacing_mm,
        "grid_shape": list(shape),
        "affine": affine.tolist(),
        "template": "MNI ICBM152 2009a symmetric (nilearn), GM/WM probability maps",
        "sequences": SEQUENCES,
        "mr_scale": MR_SCALE,
        "psf_sigma_voxels": PSF_SIGMA_VOX,
        "noise": noise,
        "tissues": table,
        "labels": {str(k): v for k, v in LABELS.items()},
        "lesions": [lesion.as_json() for lesion in lesions],
    }
    identity = _draw_identity(identity_rng, index)
    return SubjectPhantom(subject, index, affine, images, labels, params, identity, children[4])


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_subject_nifti(phantom: SubjectPhantom, out_dir: Path) -> Path:
    """``out_dir/nifti/<sub>/{T1w,T2w,CT}.nii.gz`` (float32), ``labels.nii.gz`` (uint8), ``phantom.json``."""
    folder = Path(out_dir) / "nifti" / phantom.subject
    for name, image in phantom.images.items():
        save_nifti(folder / f"{name}.nii.gz", image, phantom.affine)
    save_nifti(folder / "labels.nii.gz", phantom.labels, phantom.affine, dtype=np.uint8)
    atomic_write_json(folder / "phantom.json", phantom.params)
    return folder


def write_subject_dicom(phantom: SubjectPhantom, out_dir: Path, *, uid_entropy: Sequence[str]) -> Path:
    """All three series in one folder ``out_dir/dicom/<sub>/`` with shuffled, extension-less names.

    The folder is written beside the target and swapped in, so a rerun replaces it as a whole.
    The three series share one study and frame of reference (they are co-registered by construction).
    """
    target = Path(out_dir) / "dicom" / phantom.subject
    target.parent.mkdir(parents=True, exist_ok=True)
    n_slices = phantom.labels.shape[2]
    total = n_slices * len(SERIES)
    width = max(5, len(str(total)))
    order = np.random.default_rng(phantom.file_order_seed).permutation(total)
    names = [f"IM{n + 1:0{width}d}" for n in order]
    entropy = list(uid_entropy) + [phantom.subject]
    study_uid = generate_uid(entropy_srcs=entropy + ["study"])
    frame_uid = generate_uid(entropy_srcs=entropy + ["frame-of-reference"])
    with atomic_folder(target) as tmp:
        for n, (name, description, modality, number) in enumerate(SERIES):
            if modality == "MR":
                seq = SEQUENCES[name]
                extra = {"RepetitionTime": seq["tr_ms"], "EchoTime": seq["te_ms"], "MagneticFieldStrength": 3.0,
                         "ImagingFrequency": 127.74, "ScanningSequence": "SE", "SequenceVariant": "NONE"}
            else:
                extra = {"KVP": 120.0}
            write_dicom_series(
                phantom.images[name], phantom.affine, tmp, modality=modality, series_description=description,
                series_number=number, identity=phantom.identity, study_uid=study_uid,
                frame_of_reference_uid=frame_uid, file_names=names[n * n_slices:(n + 1) * n_slices],
                extra=extra, uid_entropy=entropy,
            )
        if target.exists():
            log.info("replacing %s", target)
    return target


def _generate_one(
    seed_seq: np.random.SeedSequence, index: int, out_dir: Path, spacing_mm: float, write_dicom: bool, seed: int
) -> dict[str, float]:
    """Make and write one subject; returns timings (s) of each stage."""
    t0 = time.perf_counter()
    phantom = make_subject(seed_seq, index, spacing_mm)
    t1 = time.perf_counter()
    write_subject_nifti(phantom, out_dir)
    t2 = time.perf_counter()
    if write_dicom:
        write_subject_dicom(phantom, out_dir, uid_entropy=["medgen-phantom", f"seed={seed}", f"spacing={spacing_mm:g}"])
    t3 = time.perf_counter()
    return {"make": t1 - t0, "nifti": t2 - t1, "dicom": t3 - t2}


def generate_cohort(
    out_dir: Path,
    n_subjects: int,
    seed: int,
    spacing_mm: float = PhantomSettings.spacing_mm,
    only: Sequence[str] | None = None,
    write_dicom: bool = True,
    *,
    workers: int | None = None,
) -> list[str]:
    """Write ``n_subjects`` phantom subjects (or the ``only`` subset) under ``out_dir``; return their ids.

    Per subject: ``nifti/<sub>/{T1w,T2w,CT,labels}.nii.gz`` + ``phantom.json`` and, with
    ``write_dicom``, ``dicom/<sub>/`` (three series, shuffled file names). ``spacing_mm`` is the
    isotropic voxel size. ``workers`` processes (default: one per CPU, at most one per subject).
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    ids = subject_ids(n_subjects)
    wanted = list(dict.fromkeys(only)) if only else ids
    unknown = [s for s in wanted if s not in ids]
    if unknown:
        raise ValueError(f"unknown subject(s) {unknown}: the cohort has {ids[0]}..{ids[-1]}")
    children = _children(np.random.SeedSequence(seed), n_subjects)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _template_maps(spacing_mm)  # load once before forking so that workers share it
    jobs = [(children[ids.index(s)], ids.index(s), out_dir, spacing_mm, write_dicom, seed) for s in wanted]
    n_workers = min(len(jobs), workers or os.cpu_count() or 1)
    start = time.perf_counter()
    totals = {"make": 0.0, "nifti": 0.0, "dicom": 0.0}
    progress = tqdm(total=len(jobs), desc="phantom", unit="subject", disable=None)
    if n_workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for future in as_completed([pool.submit(_generate_one, *job) for job in jobs]):
                _accumulate(totals, future.result())
                progress.update()
    else:
        for job in jobs:
            _accumulate(totals, _generate_one(*job))
            progress.update()
    progress.close()
    log.info(
        "phantom: %d subject(s) in %.1f s with %d worker(s) (per subject: make %.2f s, NIfTI %.2f s, DICOM %.2f s)",
        len(jobs), time.perf_counter() - start, n_workers, *(totals[k] / len(jobs) for k in ("make", "nifti", "dicom")),
    )
    return wanted


def _accumulate(totals: dict[str, float], timing: dict[str, float]) -> None:
    for key, value in timing.items():
        totals[key] += value
