"""An MR output's intensity scale, derived from the input subject's own source scale.

MR intensities are arbitrary units whose scale differs between scanners and subjects. A model
translating MR source -> MR target works on normalised images; to return its output in units
the user's subject has, the target's normalisation (scale, offset) is derived from the input's
own source normalisation through the training cohort's relation between the two: per training
subject, ``target_scale / source_scale`` and ``target_offset / source_scale`` are recorded, and
their medians (robust with few subjects) multiply the input's source scale. A subject scanned
with twice the gain of another thus gets outputs twice as large, as its own target would be.

The ratio is a model of one shared receiver gain per session; the per-subject ratios are kept
in the model card so that their spread (how well the relation holds in the cohort) can be seen.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def fit_scale_relation(subjects: Sequence[str], source_maps: Sequence[Mapping[str, Any]], target_maps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cohort's target-per-source-scale ratios (medians over subjects) and the per-subject
    values they come from; mappings as :mod:`medgen.data.normalise` writes them."""
    s = np.array([float(m["scale"]) for m in source_maps])
    ts = np.array([float(m["scale"]) for m in target_maps])
    to = np.array([float(m["offset"]) for m in target_maps])
    scale_ratio, offset_ratio = ts / s, to / s
    return {
        "model": "target scale and offset proportional to the source scale (median ratios over training subjects)",
        "target_scale_per_source_scale": float(np.median(scale_ratio)),
        "target_offset_per_source_scale": float(np.median(offset_ratio)),
        "subjects": [
            {"subject": str(subj), "source_scale": float(a), "source_offset": float(m["offset"]), "target_scale": float(b), "target_offset": float(c)}
            for subj, a, m, b, c in zip(subjects, s, source_maps, ts, to)
        ],
    }


def subject_target_mapping(cohort_target: Mapping[str, Any], relation: Mapping[str, Any], source_map: Mapping[str, Any]) -> dict[str, Any]:
    """The target normalisation of one subject: the cohort's target mapping with scale and offset
    set from the subject's own ``source_map`` through ``relation`` (see the module docstring)."""
    scale = float(source_map["scale"])
    mapping = dict(cohort_target)
    mapping["scale"] = relation["target_scale_per_source_scale"] * scale
    mapping["offset"] = relation["target_offset_per_source_scale"] * scale
    if mapping.get("clip_normalised") is not None:
        lo, hi = mapping["clip_normalised"]
        mapping["source_range"] = [mapping["offset"] + lo * mapping["scale"], mapping["offset"] + hi * mapping["scale"]]
    mapping["method"] = f"{cohort_target.get('method', 'linear')}; scale from the input's own source scale x cohort ratio"
    return mapping
