"""The evaluation stage: one metrics file per (task, model), as the workflow and report read it.

Translation: paired metrics per test subject in scanner space (the translated volume against the
registered ground truth, inside a body mask), aggregated with bootstrap intervals, plus a panel
per subject. Generation: distribution metrics of the synthetic images against the real test
split, in each configured feature space, always beside a real-vs-real baseline at the same N, and
a memorization audit against the training split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medgen.data.datasets import SliceDataset
from medgen.data.normalise import apply_normalisation, is_ct
from medgen.data.preprocess import load_normalisation
from medgen.data.settings import MIN_MASK_FRACTION
from medgen.data.splits import read_split
from medgen.data.tasks import AugmentationDataset
from medgen.data.usable import largest_mask_fraction
from medgen.eval.body_mask import body_mask
from medgen.eval.distribution import evaluate_distribution
from medgen.eval.features import get_extractor
from medgen.eval.memorization import closest_pairs_figure, memorization_audit
from medgen.eval.paired import aggregate, paired_metrics
from medgen.eval.metrics_file import write_metrics
from medgen.eval.radiomics_features import standardise_features
from medgen.io.nifti import load_nifti
from medgen.models.artifact import ModelCard

log = logging.getLogger(__name__)


def _subject_metrics(subject: str, pred_path: Path, target_path: Path, prep_dir: Path, target: str) -> dict[str, Any]:
    pred, truth = load_nifti(pred_path), load_nifti(target_path)
    if pred.array.shape != truth.array.shape or not np.allclose(pred.affine, truth.affine, atol=1e-3):
        raise ValueError(f"{pred_path}: grid {pred.array.shape} differs from the ground truth {target_path} {truth.array.shape}")
    if is_ct(target):
        mask = body_mask(truth.array, "CT")
        return {"subject": subject, **paired_metrics(pred.array, truth.array, mask, modality="CT", spacing=tuple(truth.spacing))}
    # MR has no absolute scale: both volumes are put on the ground truth subject's own normalised
    # scale (its preprocessing mapping), where the metrics are defined.
    mapping = load_normalisation(prep_dir)[target]
    mask = body_mask(truth.array, "MR")
    a, b = apply_normalisation(pred.array, mapping), apply_normalisation(truth.array, mapping)
    return {"subject": subject, **paired_metrics(a, b, mask, modality="MR", spacing=tuple(truth.spacing))}


def evaluate_translation(
    *, task: Mapping[str, Any], model: str, pred_dir: Path, nifti_root: Path, prep_root: Path, split_path: Path, out_json: Path, seed: int = 0,
    baselines: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Paired metrics of ``pred_dir/<subject>.nii.gz`` for every test subject (see module doc);
    ``baselines`` (:func:`medgen.eval.baselines.read_baselines`) is written beside them."""
    subjects = read_split(split_path)["test"]
    target = task["target"]
    per_subject = []
    for subject in subjects:
        pred = Path(pred_dir) / f"{subject}.nii.gz"
        if not pred.exists():
            raise FileNotFoundError(f"{pred}: no translated volume for test subject {subject}")
        per_subject.append(_subject_metrics(subject, pred, Path(nifti_root) / subject / f"{target}.nii.gz", Path(prep_root) / subject, target))
        log.info("%s %s: MAE %.3g %s", model, subject, per_subject[-1]["mae"], per_subject[-1]["units"])
    result = {
        "kind": "translation",
        "task": task.get("name"),
        "model": model,
        "source": task["source"],
        "target": target,
        "units": per_subject[0]["units"] if per_subject else None,
        "per_subject": per_subject,
        "aggregate": aggregate(per_subject, seed=seed),
    }
    if baselines is not None:
        result["baselines"] = dict(baselines)
    write_metrics(out_json, result)
    return result


def _slices(prep_root: Path, subjects: Sequence[str], modalities: Sequence[str], limit: int | None, seed: int, *, min_mask_fraction: float, split: str) -> np.ndarray:
    """Real slices (N, H, W) of every modality on the normalised scale (a seeded subset of
    ``limit``; None: all). A subject without a single slice whose head mask covers
    ``min_mask_fraction`` cannot serve evaluation: ``ValueError`` naming it and the cause."""
    ds = SliceDataset(prep_root, subjects, modalities, min_mask_fraction=min_mask_fraction)
    served = {ds.volumes.subjects[v] for v, _ in ds.index}
    empty = [s for s in ds.volumes.subjects if s not in served]
    if empty:
        largest = {s: largest_mask_fraction(prep_root, s) for s in empty}
        details = "; ".join(f"subject {s}: largest head-mask share of an axial slice {f:.1%}" for s, f in largest.items())
        raise ValueError(
            f"{split} split: {len(empty)} subject(s) have no axial slice whose head mask covers at least {min_mask_fraction:.0%} of it "
            f"(preprocess.min_mask_fraction), so they cannot serve evaluation: {details}. "
            "Lower preprocess.min_mask_fraction, enlarge preprocess.size to fit the head, or leave the subject out."
        )
    images = np.stack([ds[i][m][0].numpy() for i in range(len(ds)) for m in modalities])
    if limit is not None and len(images) > limit:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))]
    return images


def evaluate_generation(
    *,
    card: ModelCard,
    model: str,
    manifest: Path,
    prep_root: Path,
    split_path: Path,
    out_json: Path,
    extractors: Mapping[str, Mapping[str, Any]],
    max_real: int | None = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Distribution metrics and memorization audit of the samples listed in ``manifest`` (drawn
    from the model ``card`` describes)."""
    task = card.task
    modalities = task["modalities"]
    split = read_split(split_path)
    fraction = float(task.get("min_mask_fraction", MIN_MASK_FRACTION))  # the model's training threshold
    fake_ds = AugmentationDataset(manifest, card.data["mappings"], task.get("classes") or modalities)
    fake = np.stack([fake_ds[i]["image"][0].numpy() for i in range(len(fake_ds))])
    real = _slices(prep_root, split["test"], modalities, max_real, seed, min_mask_fraction=fraction, split="test")
    # The memorization audit compares with every training slice (no subset: a copy of any
    # training image must be found).
    train = _slices(prep_root, split["train"], modalities, None, seed + 1, min_mask_fraction=fraction, split="train")
    log.info("%s: %d synthetic, %d real test, %d real training slices", model, len(fake), len(real), len(train))
    features: dict[str, Any] = {}
    feature_fn = None
    for name, options in extractors.items():
        extractor = get_extractor(name, **dict(options))
        real_f, fake_f = extractor(real), extractor(fake)
        standardisation = None
        if name == "radiomics":  # radiomic features span many orders of magnitude
            real_f, fake_f, standardisation = standardise_features(real_f, fake_f)
        features[name] = {"checksum": getattr(extractor, "checksum", None), "info": extractor.info(), **evaluate_distribution(real_f, fake_f, seed=seed)}
        if standardisation is not None:
            features[name]["standardisation"] = standardisation
        if name == "encoder":
            feature_fn = extractor
    audit = memorization_audit(train, real, fake, feature_fn=feature_fn)
    figures = Path(out_json).with_suffix("")
    figure = closest_pairs_figure(train, fake, audit["pixel"]["closest_pairs"], figures / "closest_pairs.png")
    spaces = {space: {k: audit[space][k] for k in ("metric", "threshold", "threshold_from", "likely_copy_share", "authenticity", "test_authenticity")} for space in ("pixel", "feature") if space in audit}
    result = {
        "kind": "generation",
        "task": task.get("name"),
        "model": model,
        "n": {"synthetic": len(fake), "real_test": len(real), "real_train": len(train)},
        "min_mask_fraction": fraction,
        "features": features,
        "memorization": {
            "likely_copy_share": audit["likely_copy_share"],
            "likely_copies": audit["likely_copies"],
            "alpha": audit["alpha"],
            "threshold": audit["pixel"].get("threshold"),
            "n_train": audit["n_train"],
            "n_test": audit["n_test"],
            "n_synthetic": audit["n_synthetic"],
            "spaces": spaces,
            "warnings": audit["warnings"],
            "closest_pairs": audit["pixel"]["closest_pairs"],
            "closest_pairs_png": str(figure.relative_to(Path(out_json).parent)),
        },
    }
    write_metrics(out_json, result)
    return result


def train_study_encoder(*, prep_root: Path, split_path: Path, modalities: Sequence[str], out_path: Path, steps: int, seed: int = 0) -> Path:
    """The in-domain encoder of a study, trained on the real training split only."""
    from medgen.eval.encoder import train_encoder

    torch.manual_seed(seed)
    subjects = read_split(split_path)["train"]
    return train_encoder(SliceDataset(prep_root, subjects, modalities), out_path, steps=steps, seed=seed, modalities=modalities)
