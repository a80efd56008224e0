"""One subject's modalities onto one common RAS grid: reorient, resample, (register), mask, crop, normalise.

The reference modality is reoriented to RAS and resampled to ``cfg.spacing`` (MONAI's grid,
computed in :mod:`medgen.data.grid`); every other modality (after an optional rigid SimpleITK
registration, folded into its affine so that it is interpolated only once) and the label map are
resampled onto that grid. A head/body mask from the reference decides where the ``cfg.size`` box
is centred; everything is cropped/padded identically, normalised per modality, and written to
``out_dir`` with ``normalisation.json`` holding the inverse mappings and the geometry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medgen.data.grid import crop_or_pad, resample_to, to_ras_grid
from medgen.data.mask import MaskMethod, head_mask
from medgen.data.normalise import apply_normalisation, background_value, invert_normalisation, make_mapping  # noqa: F401  (re-exported)
from medgen.io.atomic import atomic_write_json
from medgen.io.nifti import Volume, load_nifti, save_nifti
from medgen.layout import LABELS_FILE, MASK_FILE, NORMALISATION_JSON

log = logging.getLogger(__name__)

__all__ = [
    "PreprocessConfig",
    "preprocess_subject",
    "register_rigid",
    "apply_normalisation",
    "invert_normalisation",
    "load_normalisation",
]

#: Version of the layout of normalisation.json.
FORMAT_VERSION = 1

RegisterInit = Literal["scanner", "geometry", "moments"]
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (ITK's world frame); its own inverse


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of :func:`preprocess_subject` (mm, voxels, HU).

    ``register_init``: "scanner" keeps the scanner alignment and only puts the rotation centre at
    the reference centre (inputs of one session share scanner space); "geometry"/"moments" use
    SimpleITK's centred initialiser (image centres / centres of mass) for unrelated frames.
    """

    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    size: tuple[int, int, int] = (96, 112, 96)
    mr_norm: Literal["percentile", "zscore"] = "percentile"
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] = (-1024.0, 3000.0)
    register: bool = False
    reference: str | None = None
    mask_method: MaskMethod = "auto"
    register_init: RegisterInit = "scanner"
    register_iterations: int = 100
    register_shrink: tuple[int, ...] = (4, 2, 1)
    register_smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    register_sampling: float = 1.0
    register_bins: int = 32
    register_seed: int = 0

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or any(float(s) <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive values in mm, got {self.spacing}")
        if len(self.size) != 3 or any(int(s) < 1 or int(s) != s for s in self.size):
            raise ValueError(f"size must be three positive integers (voxels), got {self.size}")
        if self.mr_norm not in ("percentile", "zscore"):
            raise ValueError(f"mr_norm must be 'percentile' or 'zscore', got {self.mr_norm!r}")
        if len(self.register_shrink) != len(self.register_smoothing_mm):
            raise ValueError("register_shrink and register_smoothing_mm need one entry per resolution level")


# ---------------------------------------------------------------------------------------------
# Geometry helpers


def crop_start(mask: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Start index (may be negative) of the ``size`` box centred on the mask's bounding box.

    An empty mask centres the box on the volume.
    """
    shape = np.array(mask.shape)
    idx = np.argwhere(mask)
    centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0 if idx.size else (shape - 1) / 2.0
    size_arr = np.array(size, dtype=int)
    # Box [start, start + size) whose centre ((size - 1) / 2 from start) is closest to the bbox centre.
    return np.floor(centre - (size_arr - 1) / 2.0 + 0.5).astype(int)


# ---------------------------------------------------------------------------------------------
# Rigid registration (SimpleITK)


def _sitk_image(array: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """(X, Y, Z) array with RAS affine -> SimpleITK image in ITK's LPS world."""
    lps = _LPS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return img


def _transform_matrix_lps(tx: sitk.Euler3DTransform) -> np.ndarray:
    """4x4 matrix of ``x -> R (x - c) + c + t`` (LPS mm)."""
    rot = np.array(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.array(tx.GetCenter(), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = rot
    matrix[:3, 3] = centre + np.array(tx.GetTranslation()) - rot @ centre
    return matrix


def _initial_transform(fixed: sitk.Image, moving: sitk.Image, init: RegisterInit) -> sitk.Euler3DTransform:
    if init == "scanner":
        tx = sitk.Euler3DTransform()
        centre_index = [(n - 1) / 2.0 for n in fixed.GetSize()]
        tx.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint(centre_index))
        return tx
    how = {"geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY, "moments": sitk.CenteredTransformInitializerFilter.MOMENTS}[init]
    return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), how))


def register_rigid(fixed: Volume, moving: Volume, cfg: PreprocessConfig) -> dict[str, Any]:
    """Rigid (Euler3D) registration of ``moving`` to ``fixed`` by Mattes mutual information.

    Returns JSON-able parameters; ``fixed_to_moving_ras`` (4x4) maps a RAS point of the fixed
    (reference) image to the RAS point of the moving image that shows the same anatomy.
    """
    fixed_img = _sitk_image(fixed.array, fixed.affine)
    moving_img = _sitk_image(moving.array, moving.affine)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.register_bins)
    if cfg.register_sampling < 1.0:  # random subset (seeded); 1.0 uses every voxel, deterministic
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(cfg.register_sampling, cfg.register_seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        # A gentle step reduction (0.8 rather than 0.5) keeps a noisy MI gradient from stopping it early.
        learningRate=2.0, minStep=1e-4, numberOfIterations=cfg.register_iterations, relaxationFactor=0.8, gradientMagnitudeTolerance=1e-8
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(cfg.register_shrink))
    reg.SetSmoothingSigmasPerLevel(list(cfg.register_smoothing_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    initial = _initial_transform(fixed_img, moving_img, cfg.register_init)
    reg.SetInitialTransform(initial, inPlace=False)
    found = reg.Execute(fixed_img, moving_img)
    # With inPlace=False the result comes wrapped in a composite of one transform.
    if found.GetName() == "CompositeTransform":
        found = sitk.CompositeTransform(found).GetNthTransform(0)
    result = sitk.Euler3DTransform(found)
    lps = _transform_matrix_lps(result)
    ras = _LPS @ lps @ _LPS
    angle = float(np.degrees(np.arccos(np.clip((np.trace(lps[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))
    params = {
        "method": "SimpleITK Euler3DTransform, Mattes mutual information, multi-resolution",
        "initialiser": cfg.register_init,
        "angles_rad_lps": [result.GetAngleX(), result.GetAngleY(), result.GetAngleZ()],
        "translation_mm_lps": list(result.GetTranslation()),
        "center_mm_lps": list(result.GetCenter()),
        "rotation_deg": angle,
        "fixed_to_moving_ras": ras.tolist(),
        "metric": float(reg.GetMetricValue()),
        "iterations": int(reg.GetOptimizerIteration()),
        "stop": reg.GetOptimizerStopConditionDescription(),
    }
    log.info("registered: rotation %.2f deg, translation %s mm (LPS)", angle, np.round(result.GetTranslation(), 2).tolist())
    return params


def registered_affine(affine_ras: np.ndarray, fixed_to_moving_ras: np.ndarray) -> np.ndarray:
    """Moving image's affine after registration: its voxels placed where their anatomy is in the reference."""
    return np.linalg.inv(np.asarray(fixed_to_moving_ras, dtype=np.float64)) @ np.asarray(affine_ras, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# The subject pipeline


def _check_inputs(inputs: Mapping[str, Path | str], labels: Path | str | None, reference: str | None) -> tuple[dict[str, Path], str]:
    if not inputs:
        raise ValueError("preprocess_subject needs at least one modality")
    paths = {str(mod): Path(p) for mod, p in inputs.items()}
    for mod, path in [*paths.items(), *([("labels", Path(labels))] if labels is not None else [])]:
        if not path.is_file():
            raise FileNotFoundError(f"{mod}: input file {path} does not exist")
    ref = reference if reference is not None else next(iter(paths))
    if ref not in paths:
        raise ValueError(f"reference modality {ref!r} is not among the inputs {sorted(paths)}")
    if any(name in ("mask", "labels") for name in paths):
        raise ValueError("'mask' and 'labels' are reserved output names and cannot be modalities")
    return paths, ref


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _label_array(img: Volume, source: Path) -> np.ndarray:
    values = np.asarray(img.array, dtype=np.float64)
    rounded = np.rint(values)
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"{source}: label values must lie in 0..255 to be stored as uint8, found {values.min():g}..{values.max():g}")
    return rounded.astype(np.uint8)


def _geometry(img: Volume) -> dict[str, Any]:
    affine = np.asarray(img.affine, dtype=np.float64)
    return {
        "affine": affine.tolist(),
        "spacing": np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).tolist(),
        "size": [int(n) for n in img.array.shape],
        "axcodes": "".join(nib.aff2axcodes(affine)),
    }


def preprocess_subject(
    inputs: Mapping[str, Path | str],
    out_dir: Path | str,
    cfg: PreprocessConfig,
    labels: Path | str | None = None,
) -> dict[str, Any]:
    """Preprocess one subject; ``inputs`` maps modality -> NIfTI path (first key = default reference).

    Writes ``out_dir/<modality>.nii.gz`` (float32, normalised), ``mask.nii.gz`` (uint8),
    ``labels.nii.gz`` (uint8, when ``labels`` is given) and ``normalisation.json``; returns the
    content of the JSON. All outputs are (cfg.size) voxels of cfg.spacing mm, RAS, one affine.
    """
    paths, ref = _check_inputs(inputs, labels, cfg.reference)
    out_dir = Path(out_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = _run(paths, ref, out_dir, cfg, Path(labels) if labels is not None else None)
    # Hand the warnings on to the caller and keep ours (not third-party deprecations) in the JSON.
    ours = []
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if "medgen" in Path(w.filename).parts:
            ours.append(str(w.message))
    meta["warnings"] = meta["warnings"] + [m for m in ours if m not in meta["warnings"]]
    atomic_write_json(out_dir / NORMALISATION_JSON, meta)
    return meta


def _check_not_constant(path: Path, vol: Volume, notes: list[str]) -> None:
    """Refuse an image whose voxels all have one value, unless ingest let it through on purpose.

    Normalising such an image gives 0 everywhere and trains a model on nothing. Ingest refuses it
    too; with ``--allow-constant`` it marks the image ``"constant_allowed": true`` in the sidecar
    beside it, and only then is it accepted here (with a note).
    """
    array = np.asarray(vol.array)
    if not array.size or float(array.min()) != float(array.max()):
        return
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    sidecar = path.with_name(stem + ".json")
    try:
        allowed = sidecar.is_file() and json.loads(sidecar.read_text()).get("constant_allowed") is True
    except (OSError, ValueError):
        allowed = False
    value = float(array.min())
    if not allowed:
        raise ValueError(f"{path}: every voxel is {value:g}: a constant image holds nothing to learn from (normalised it would "
                         "be 0 everywhere); check the source data, or ingest it with --allow-constant "
                         "(config ingest.allow_constant: true) if it is intended")
    notes.append(f"{path.name}: every voxel is {value:g}; accepted because ingest marked it constant_allowed")


def _run(paths: dict[str, Path], ref: str, out_dir: Path, cfg: PreprocessConfig, labels: Path | None) -> dict[str, Any]:
    notes: list[str] = []
    digests = {mod: _sha256(p) for mod, p in paths.items()}

    ref_vol = load_nifti(paths[ref])
    _check_not_constant(paths[ref], ref_vol, notes)
    notes += ref_vol.warnings
    grid = to_ras_grid(ref_vol, cfg.spacing)
    images: dict[str, Volume] = {ref: grid}
    registration: dict[str, Any] = {ref: None}
    for mod, path in paths.items():
        if mod == ref:
            continue
        vol = load_nifti(path)
        _check_not_constant(path, vol, notes)
        notes += vol.warnings
        affine = vol.affine
        registration[mod] = None
        if cfg.register:
            params = register_rigid(grid, vol, cfg)
            registration[mod] = params
            affine = registered_affine(affine, np.array(params["fixed_to_moving_ras"]))
        images[mod] = resample_to(vol.array, affine, grid.array.shape, grid.affine)

    label_img = None
    if labels is not None:
        lab = load_nifti(labels)
        notes += lab.warnings
        label_img = resample_to(lab.array, lab.affine, grid.array.shape, grid.affine, nearest=True)

    mask, mask_info = head_mask(ref, grid.array, cfg.mask_method)
    start = crop_start(mask, cfg.size)
    mask_img = crop_or_pad(Volume(mask.astype(np.float32), grid.affine), start, cfg.size, 0.0)
    out_mask = np.asarray(mask_img.array).round().astype(np.uint8)
    cropped = {mod: crop_or_pad(img, start, cfg.size, background_value(mod)) for mod, img in images.items()}
    affine = np.asarray(mask_img.affine, dtype=np.float64)

    mappings: dict[str, Any] = {}
    for mod, img in cropped.items():
        # Statistics come from the whole head on the reference grid, before padding adds background.
        fit_on = np.asarray(images[mod].array, dtype=np.float32)
        mapping = make_mapping(mod, fit_on, mask if mask.any() else None, mr_norm=cfg.mr_norm, mr_percentiles=cfg.mr_percentiles, ct_window=cfg.ct_window)
        mappings[mod] = mapping
        save_nifti(out_dir / f"{mod}.nii.gz", apply_normalisation(np.asarray(img.array), mapping), affine, dtype=np.float32)
    save_nifti(out_dir / MASK_FILE, out_mask, affine, dtype=np.uint8)

    label_meta = None
    if label_img is not None and labels is not None:
        lab_out = _label_array(crop_or_pad(label_img, start, cfg.size, 0.0), labels)
        save_nifti(out_dir / LABELS_FILE, lab_out, affine, dtype=np.uint8)
        label_meta = {"source": labels.name, "values": sorted(int(v) for v in np.unique(lab_out))}

    for mod, path in paths.items():
        if _sha256(path) != digests[mod]:  # guards the promise that inputs are read-only
            raise RuntimeError(f"{path} changed while it was being preprocessed")

    config = asdict(cfg)
    return {
        "format_version": FORMAT_VERSION,
        "reference": ref,
        "modalities": list(paths),
        "normalisation": mappings,
        "sources": {mod: p.name for mod, p in paths.items()},
        "source_sha256": digests,
        "registration": registration,
        "labels": label_meta,
        "geometry": _geometry(mask_img),
        "crop_start_voxel": start.tolist(),
        "mask": {**mask_info, "voxels": int(out_mask.sum())},
        "config": config,
        "warnings": notes,
    }


def read_prep_record(prep_dir: Path | str) -> dict[str, Any]:
    """The whole ``prep_dir/normalisation.json`` that :func:`preprocess_subject` writes (mappings,
    geometry, the preprocessing settings)."""
    return json.loads((Path(prep_dir) / NORMALISATION_JSON).read_text())


def load_normalisation(prep_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Per-modality mappings from ``prep_dir/normalisation.json`` (for :func:`invert_normalisation`)."""
    return read_prep_record(prep_dir)["normalisation"]


def median_normalisation(prep_root: Path, subjects: Sequence[str], modalities: Sequence[str]) -> tuple[dict[str, dict], dict[str, Any]]:
    """Per modality, the training subjects' normalisation with median scale and offset (exact
    for CT's fixed HU window; the cohort's typical scale for MR), and the first subject's file
    (what a trained model's card records; :mod:`medgen.train.run` and the baselines use it)."""
    docs = [read_prep_record(Path(prep_root) / s) for s in subjects]
    mappings = {}
    for mod in modalities:
        per_subject = [d["normalisation"][mod] for d in docs]
        mapping = dict(per_subject[0])
        for key in ("scale", "offset"):
            mapping[key] = float(np.median([m[key] for m in per_subject]))
        if mapping.get("clip_normalised") is not None:
            lo, hi = mapping["clip_normalised"]
            mapping["source_range"] = [mapping["offset"] + lo * mapping["scale"], mapping["offset"] + hi * mapping["scale"]]
        mapping["method"] = f"{mapping.get('method', 'linear')} (median of {len(per_subject)} training subjects)"
        mappings[mod] = mapping
    return mappings, docs[0]
