"""The evaluation stage of a generation model, one metrics file per (task, model) as the workflow
and report read it (translation models: :mod:`medgen.eval.translation_run`): distribution metrics
of the synthetic images against the real test split, in each configured feature space, always
beside a real-vs-real baseline at the same N, and a memorization audit against the training split.
Also the study's in-domain encoder, trained on the training split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medgen.data.datasets import SliceDataset
from medgen.data.settings import MIN_MASK_FRACTION
from medgen.data.splits import read_split
from medgen.data.tasks import AugmentationDataset
from medgen.data.usable import largest_mask_fraction
from medgen.eval.distribution import evaluate_distribution
from medgen.eval.features import get_extractor
from medgen.eval.memorization import closest_pairs_figure, memorization_audit
from medgen.eval.metrics_file import write_metrics
from medgen.eval.radiomics_features import standardise_features
from medgen.models.artifact import ModelCard

log = logging.getLogger(__name__)


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
