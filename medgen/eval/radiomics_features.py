"""Radiomic features and the Fréchet Radiomic Distance (FRD) through the ``frd-score`` package.

FRD (Konz, Osuala et al., "Fréchet Radiomic Distance (FRD): A Versatile Metric for Comparing
Medical Imaging Datasets", Med. Image Anal. 2026, arXiv:2412.01496) is the Fréchet distance of
PyRadiomics features (``pyradiomics-bhklab`` fork, imported as ``radiomics``), normalised per
feature. Version "v1" (default): Original + LoG + Wavelet images (~460 features), z-score w.r.t.
the *first* (reference, real) set, columns with NaN/inf dropped, ``log(d_F^2)``. Version "v0":
Original image only, joint min-max normalisation to [0, 7.4567], raw d_F^2.

``frd-score`` reads images from files, so arrays are written to a temporary folder as NIfTI and
the package's own per-image extraction (``process_image_mask_pair``) and normalisation
(``z_score_normalize`` / ``min_max_normalize``) are called; :func:`frd` calls its top-level
``compute_frd`` unchanged. No weights are needed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medgen.eval.distribution import frechet_distance, gaussian_stats

log = logging.getLogger(__name__)

#: The package's v0 min-max target range.
V0_NORM_RANGE = (0.0, 7.45670747756958)


def _frd():
    try:
        from frd_score import frd as frd_module
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the 'radiomics' features need `frd-score` and `pyradiomics-bhklab` (pip install frd-score pyradiomics-bhklab)") from exc
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return frd_module


def _write(arrays: Sequence[np.ndarray], folder: Path, prefix: str, *, is_mask: bool, spacing: Sequence[float] | None) -> list[str]:
    paths = []
    for i, arr in enumerate(arrays):
        a = np.asarray(arr)
        if a.ndim not in (2, 3):
            raise ValueError(f"{prefix}[{i}]: expected a 2D or 3D array, got shape {a.shape}")
        img = sitk.GetImageFromArray(a.astype(np.uint8) if is_mask else a.astype(np.float32))
        if spacing is not None:
            img.SetSpacing(tuple(float(s) for s in spacing))
        path = folder / f"{prefix}_{i:05d}.nii.gz"
        sitk.WriteImage(img, str(path))
        paths.append(str(path))
    return paths


def _masks(masks: Sequence[np.ndarray] | None, n: int, name: str) -> Sequence[np.ndarray] | None:
    if masks is not None and len(masks) != n:
        raise ValueError(f"{name}: {len(masks)} masks for {n} images")
    return masks


def _extractor(frd_module: Any, version: str, dim: int, feature_classes: Sequence[str] | None, image_types: Sequence[str] | None) -> Any:
    return frd_module.get_feature_extractor(
        frd_version=version,
        features=list(feature_classes) if feature_classes is not None else None,
        image_dim=dim,
        image_types=list(image_types) if image_types is not None else None,
    )


def radiomics_features(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    *,
    version: str = "v1",
    feature_classes: Sequence[str] | None = None,
    image_types: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
    return_names: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """Raw (unnormalised) PyRadiomics features of each image, float64 (N, F).

    ``images``: 2D (H, W) or 3D (D, H, W) arrays (all of one dimensionality); ``masks``: same
    shapes, nonzero = region (None: whole image, as frd-score does). ``feature_classes`` (e.g.
    ["firstorder", "glcm"]) and ``image_types`` (e.g. ["Original"]) restrict the extraction,
    None keeps the FRD ``version`` defaults. ``spacing`` (mm, SimpleITK x-y(-z) order) matters
    because v1 resamples to 2 mm. Raises ``ValueError`` if an image yields no features (mask with
    <= 1 voxel), so that rows always match the inputs.
    """
    if len(images) == 0:
        raise ValueError("no images given")
    masks = _masks(masks, len(images), "radiomics_features")
    dims = {np.asarray(im).ndim for im in images}
    if len(dims) != 1:
        raise ValueError(f"images mix dimensionalities {sorted(dims)}")
    frd_module = _frd()
    extractor = _extractor(frd_module, version, dims.pop(), feature_classes, image_types)
    rows: list[list[float]] = []
    names: list[str] | None = None
    with tempfile.TemporaryDirectory(prefix="medgen_radiomics_") as tmp:
        img_paths = _write(images, Path(tmp), "img", is_mask=False, spacing=spacing)
        mask_paths: list[str | None] = _write(masks, Path(tmp), "mask", is_mask=True, spacing=spacing) if masks is not None else [None] * len(images)
        for i, pair in enumerate(zip(img_paths, mask_paths)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = frd_module.process_image_mask_pair(pair, feature_extractor=extractor, frd_version=version)
            if result is None:
                raise ValueError(f"image {i}: no radiomic features (mask has <= 1 voxel)")
            values, feats, _ = result
            if names is None:
                names = list(feats)
            elif list(feats) != names:
                raise ValueError(f"image {i}: feature names differ from image 0's")
            rows.append(values)
    out = np.asarray(rows, dtype=np.float64)
    return (out, names or []) if return_names else out


def normalise_frd_features(real: np.ndarray, fake: np.ndarray, *, version: str = "v1") -> tuple[np.ndarray, np.ndarray]:
    """FRD normalisation of raw features, as frd-score does it.

    v1: float32 cast, rows with NaN dropped, z-score w.r.t. ``real`` (D1), then feature columns
    with NaN/inf in either set dropped. v0: joint min-max to [0, 7.4567], NaN -> mid-range.
    """
    frd_module = _frd()
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if version == "v1":
        sets = [s[~np.isnan(s).any(axis=1)].astype(np.float32) for s in (real, fake)]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            normed = [
                frd_module.z_score_normalize(s, 0.0, 1.0, base_distribution=sets[0], replace_nan=False, handle_std_zero=False) for s in sets
            ]
        keep = ~np.zeros(normed[0].shape[1], dtype=bool)
        for s in normed:
            keep &= np.isfinite(s).all(axis=0)
        return normed[0][:, keep].astype(np.float64), normed[1][:, keep].astype(np.float64)
    if version == "v0":
        joint = np.concatenate([real, fake], axis=0)
        lo, hi = V0_NORM_RANGE
        return tuple(frd_module.min_max_normalize(s, lo, hi, base_distribution=joint).astype(np.float64) for s in (real, fake))  # type: ignore[return-value]
    raise ValueError(f"unknown FRD version {version!r} (expected 'v0' or 'v1')")


#: Standardised radiomic features are clipped to this many real-set standard deviations.
Z_CLIP = 10.0


def standardise_features(real: np.ndarray, fake: np.ndarray, *, z_clip: float = Z_CLIP) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Radiomic features (N, F) on one scale for FD/KID/PRDC, so that no feature dominates.

    Each feature is z-scored with the *real* set's mean and standard deviation (ddof 1), as FRD
    does; features that are not finite in every image, or (nearly) constant in the real set
    (std <= 1e-9 x (1 + |mean|): z-scores would divide by ~0) are dropped; the z-scores are then
    clipped to +-``z_clip``. A feature can therefore add at most about (2 z_clip)^2 to FD, where
    an unclipped one with a near-zero real std blew FD up to 1e8. Returns the two arrays and a
    record of what was done (for the metrics file).
    """
    a, b = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, F) feature arrays with equal F, got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 real samples to standardise, got {a.shape[0]}")
    finite = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)
    mean = np.where(finite, np.nan_to_num(a).mean(axis=0), 0.0)
    std = np.where(finite, np.nan_to_num(a).std(axis=0, ddof=1), 0.0)
    keep = finite & (std > 1e-9 * (1.0 + np.abs(mean)))
    za = (a[:, keep] - mean[keep]) / std[keep]
    zb = (b[:, keep] - mean[keep]) / std[keep]
    clipped = int((np.abs(za) > z_clip).sum() + (np.abs(zb) > z_clip).sum())
    record = {
        "method": f"z-score with the real set's mean and std (ddof 1), clipped to +-{z_clip:g}; features not finite everywhere or constant in the real set dropped",
        "features_in": int(a.shape[1]),
        "features_kept": int(keep.sum()),
        "dropped_nonfinite": int((~finite).sum()),
        "dropped_constant": int((finite & ~keep).sum()),
        "values_clipped": clipped,
    }
    if not keep.any():
        raise ValueError("no radiomic feature varies across the real images: nothing to compare")
    return np.clip(za, -z_clip, z_clip), np.clip(zb, -z_clip, z_clip), record


def frd_from_features(real: np.ndarray, fake: np.ndarray, *, version: str = "v1") -> float:
    """FRD from raw radiomic features (N1, F) and (N2, F): normalise, Fréchet distance, v1: log.

    Like frd-score, no regularisation is added when N <= F (only a warning here).
    """
    a, b = normalise_frd_features(real, fake, version=version)
    if min(a.shape[0], b.shape[0]) <= a.shape[1]:
        warnings.warn(f"FRD with N={min(a.shape[0], b.shape[0])} <= {a.shape[1]} features: singular covariances", RuntimeWarning, stacklevel=2)
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    d2 = frechet_distance(mu1, s1, mu2, s2)
    if version == "v1":
        return float(np.log(d2)) if d2 > 0 else float("-inf")
    return d2


def frd(
    real_images: Sequence[np.ndarray],
    fake_images: Sequence[np.ndarray],
    real_masks: Sequence[np.ndarray] | None = None,
    fake_masks: Sequence[np.ndarray] | None = None,
    *,
    version: str = "v1",
    feature_classes: Sequence[str] | None = None,
    image_types: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
    num_workers: int = 1,
) -> float:
    """FRD of two image sets by the package's own ``compute_frd`` (real = reference set D1).

    Arrays are written to a temporary folder; nothing else differs from running frd-score on
    folders. v1 value: ``log(d_F^2)`` (the package's default convention).
    """
    real_masks = _masks(real_masks, len(real_images), "real")
    fake_masks = _masks(fake_masks, len(fake_images), "fake")
    frd_module = _frd()
    with tempfile.TemporaryDirectory(prefix="medgen_frd_") as tmp:
        folder = Path(tmp)
        paths = [_write(real_images, folder, "real", is_mask=False, spacing=spacing), _write(fake_images, folder, "fake", is_mask=False, spacing=spacing)]
        masks = None
        if real_masks is not None or fake_masks is not None:
            masks = [
                _write(m, folder, f"{name}_mask", is_mask=True, spacing=spacing) if m is not None else None
                for m, name in ((real_masks, "real"), (fake_masks, "fake"))
            ]
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the package prints its result
            warnings.simplefilter("ignore")
            value = frd_module.compute_frd(
                paths,
                frd_version=version,
                features=list(feature_classes) if feature_classes is not None else None,
                image_types=list(image_types) if image_types is not None else None,
                paths_masks=masks,
                num_workers=num_workers,
            )
    return float(value)


class RadiomicsFeatures:
    """Feature extractor "radiomics": images (list of 2D/3D arrays) -> raw radiomic features (N, F).

    Compare sets with :func:`frd_from_features` (FRD normalisation) or, after
    :func:`standardise_features` (what the evaluation does), with any function of
    :mod:`medgen.eval.distribution`.
    """

    name = "radiomics"

    def __init__(self, *, version: str = "v1", feature_classes: Sequence[str] | None = None, image_types: Sequence[str] | None = None, spacing: Sequence[float] | None = None) -> None:
        self.options = {"version": version, "feature_classes": feature_classes, "image_types": image_types, "spacing": spacing}
        self.checksum = None  # no weights

    def __call__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        return radiomics_features(images, masks, **self.options)  # type: ignore[arg-type]

    def info(self) -> dict[str, Any]:
        from importlib.metadata import version as pkg_version

        return {"name": self.name, **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.options.items()}, "frd_score": pkg_version("frd-score"), "weights_sha256": None}
