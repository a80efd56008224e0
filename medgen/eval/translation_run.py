"""The evaluation stage of a translation model: paired metrics per test subject in scanner space
(the translated volume against the registered ground truth, inside a body mask), aggregated with
bootstrap intervals, in one metrics file per (task, model) as the workflow and report read it.

Neither torch nor MONAI is imported here (``import monai`` alone takes about 10 s per process on a
2-core machine): a translation model's evaluation job loads only numpy, nibabel and scipy, and
the baselines job (:mod:`medgen.eval.baselines`) adds torch but not MONAI.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medgen.data.normalise import apply_normalisation, is_ct
from medgen.data.preprocess import load_normalisation
from medgen.data.splits import read_split
from medgen.eval.body_mask import body_mask
from medgen.eval.metrics_file import write_metrics
from medgen.eval.paired import aggregate, paired_metrics
from medgen.io.nifti import load_nifti

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
    ``baselines`` (:func:`read_baselines`) is written beside them."""
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


def read_baselines(path: Path) -> dict[str, Any]:
    """The ``baselines`` section of a file written by :func:`medgen.eval.baselines.run_baselines`
    (per-subject rows and aggregates, without the fitted curves), for a model's metrics file."""
    doc = json.loads(Path(path).read_text())
    if doc.get("kind") != "translation_baselines" or not isinstance(doc.get("baselines"), dict):
        raise ValueError(f"{path}: not a baselines file written by `medgen baselines`; rerun that step")
    return {name: {k: v for k, v in entry.items() if k != "curve"} for name, entry in doc["baselines"].items()}
