"""MR -> MR translations come back on the input subject's own scale (medgen.data.scale_relation)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from medgen.data.mask import head_mask
from medgen.data.normalise import make_mapping
from medgen.data.scale_relation import fit_scale_relation
from medgen.synth.translate import MR_SUBJECT_UNITS, MR_UNITS, translate_volume
from medgen.models.artifact import ModelCard, TrainedModel

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"  # a real T1w head, 2 mm
OPTIONS = {"mr_norm": "percentile", "mr_percentiles": [0.5, 99.5], "ct_window": [-1024.0, 3000.0]}


class Identity(nn.Module):
    size_multiple = 4

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _mapping(array: np.ndarray, modality: str) -> dict:
    mask, _ = head_mask(modality, array)
    return make_mapping(modality, array, mask, mr_norm="percentile", mr_percentiles=(0.5, 99.5), ct_window=(-1024.0, 3000.0))


def _meta(relation: dict | None) -> ModelCard:
    # the cohort's median T2w mapping, deliberately far from any one subject's scale
    cohort_t2 = {"kind": "linear", "scale": 2000.0, "offset": 2200.0, "clip_normalised": [-1.0, 1.0], "units": "a.u.",
                 "source_range": [200.0, 4200.0], "method": "percentile"}
    data = {"spatial_dims": 2, "slice_axis": 2, "spacing": [2.0, 2.0, 2.0], "size": [16, 16, 16], "patch_size": None,
            "preprocess": OPTIONS, "mappings": {"T2w": cohort_t2}, "affine": np.diag([2.0, 2.0, 2.0, 1.0]).tolist()}
    if relation is not None:
        data["scale_relation"] = relation
    return ModelCard(model="toy", task={"name": "t1_t2", "kind": "translation", "source": "T1w", "target": "T2w"}, data=data)


def test_mr_output_follows_the_input_subjects_scale(tmp_path):
    img = nib.load(ANATOMICAL)
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    # a training cohort in which every subject's T2w scale is 2x its T1w scale (one gain per session)
    train = [t1, 0.5 * t1]
    relation = fit_scale_relation(["a", "b"], [_mapping(a, "T1w") for a in train], [_mapping(2.0 * a, "T2w") for a in train])
    assert abs(relation["target_scale_per_source_scale"] - 2.0) < 1e-6
    outputs = {}
    for gain in (1.0, 3.0):  # the same subject scanned with three times the receiver gain
        path = tmp_path / f"t1_gain{gain:g}.nii.gz"
        nib.save(nib.Nifti1Image(gain * t1, img.affine), path)
        summary = translate_volume(TrainedModel(Identity(), _meta(relation), None), path, tmp_path / f"out{gain:g}.nii.gz", progress=False)
        assert summary["units"] == MR_SUBJECT_UNITS
        outputs[gain] = np.asarray(nib.load(tmp_path / f"out{gain:g}.nii.gz").dataobj)
    mask, _ = head_mask("T1w", t1)
    # an identity network returns 2x the input's own intensities (up to its 0.5-99.5 percentile clip);
    # float32 resampling keeps relative errors near 1e-6, so 1e-3 is a safe bound
    p_lo, p_hi = np.percentile(t1[mask], [0.5, 99.5])
    inside = mask & (t1 > p_lo) & (t1 < p_hi)
    np.testing.assert_allclose(outputs[1.0][inside], 2.0 * t1[inside], rtol=1e-3, atol=1e-3 * float(p_hi))
    np.testing.assert_allclose(outputs[3.0], 3.0 * outputs[1.0], rtol=1e-3, atol=1e-3 * float(p_hi))
    # without a relation (older models, CT -> MR) the cohort's median scale is used, as stated
    summary = translate_volume(TrainedModel(Identity(), _meta(None), None), tmp_path / "t1_gain1.nii.gz", tmp_path / "cohort.nii.gz", progress=False)
    assert summary["units"] == MR_UNITS and summary["output_range"][1] > 4000.0


def test_report_panels_are_windowed_per_image(tmp_path):
    from medgen.report.plots import CT_WINDOW, panel_windows, translation_panel

    t1 = np.asarray(nib.load(ANATOMICAL).dataobj, dtype=np.float32)
    truth, output = 2.0 * t1, 10.0 * t1  # an output on five times its truth's scale
    _, out_win, ref_win = panel_windows("T1w", "T2w", t1, output, truth)
    # each image at its own 1st/99.5th percentiles: the output's window is five times the truth's
    np.testing.assert_allclose(out_win, 5.0 * np.asarray(ref_win), rtol=1e-5)
    hu = t1 * 2.0 - 1000.0
    assert panel_windows("T1w", "CT", t1, hu, hu)[1:] == (CT_WINDOW, CT_WINDOW)  # CT keeps the shared HU window
    paths = {}
    for name, data in (("src", t1), ("out", output), ("ref", truth)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, nib.load(ANATOMICAL).affine), paths[name])
    png = translation_panel(paths["src"], paths["out"], paths["ref"], tmp_path / "panel.png", source_name="T1w", target_name="T2w")
    assert png.stat().st_size > 0
