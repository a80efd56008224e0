"""Translation baselines: the fitted curves, the resolution floor, and a run on a tiny phantom cohort."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medgen.data.phantom import generate_cohort
from medgen.data.preprocess import PreprocessConfig, preprocess_subject
from medgen.data.splits import write_split
from medgen.eval.baselines import BASELINES, fit_lookup, fit_quantile_map, resolution_floor, run_baselines
from medgen.eval.translation_run import read_baselines
from medgen.io.nifti import load_nifti, save_nifti
from medgen.models.artifact import ModelCard


def test_quantile_map_recovers_a_monotone_relation_and_lookup_a_non_monotone_one():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    # quantile matching needs no pairing: an increasing map is recovered from the two marginals
    curve = fit_quantile_map(x, rng.permutation(2 * x + 0.5))
    grid = np.linspace(-0.9, 0.9, 7)
    np.testing.assert_allclose(curve(grid), 2 * grid + 0.5, atol=0.02)  # ~1/1000 quantile steps of a slope-2 map
    # two tissues, dark bone (x < 0: target 0.8) and bright brain (x >= 0: target -0.2): the lookup
    # gets both right; the monotone quantile map cannot (it sends dark to the low target value)
    y = np.where(x < 0, 0.8, -0.2)
    lookup = fit_lookup(x, y)
    np.testing.assert_allclose(lookup(np.array([-0.8, -0.3, 0.3, 0.8])), [0.8, 0.8, -0.2, -0.2], atol=1e-9)
    assert fit_quantile_map(x, y)(np.array([-0.8]))[0] == pytest.approx(-0.2)


def test_resolution_floor_is_the_truth_on_the_native_grid_and_blurs_on_a_coarser_one(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    head = np.zeros((24, 24, 24), np.float32)
    head[4:20, 4:20, 4:20] = 1
    t1 = np.where(head > 0, 100.0, 0.0).astype(np.float32)
    ct = np.where(head > 0, 40.0, -1000.0).astype(np.float32)
    ct[8:16, 8:16, 11:13] = 1500.0  # a thin bright plate, 2 voxels thick
    save_nifti(tmp_path / "T1w.nii.gz", t1, affine)
    save_nifti(tmp_path / "CT.nii.gz", ct, affine)
    meta = ModelCard(model="resolution_floor", task={"source": "T1w", "target": "CT"}, data={"spacing": [2.0, 2.0, 2.0], "preprocess": {"ct_window": [-1024.0, 3000.0]}})
    same = load_nifti(resolution_floor(tmp_path / "T1w.nii.gz", tmp_path / "CT.nii.gz", meta, tmp_path / "same.nii.gz")).array
    np.testing.assert_allclose(same, ct, atol=1e-2)  # resampling onto the same grid: float32 rounding only
    meta.data["spacing"] = [6.0, 6.0, 6.0]
    coarse = load_nifti(resolution_floor(tmp_path / "T1w.nii.gz", tmp_path / "CT.nii.gz", meta, tmp_path / "coarse.nii.gz")).array
    assert coarse.shape == ct.shape
    assert coarse[8:16, 8:16, 11:13].mean() < 1400.0  # the plate is thinner than a 6 mm voxel


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    subjects = generate_cohort(root / "phantom", n_subjects=4, seed=3, spacing_mm=4.0, write_dicom=False, workers=1)
    cfg = PreprocessConfig(spacing=(6.0, 6.0, 6.0), size=(32, 32, 32))
    for s in subjects:
        src = root / "phantom" / "nifti" / s
        preprocess_subject({m: src / f"{m}.nii.gz" for m in ("T1w", "T2w", "CT")}, root / "prep" / s, cfg)
    write_split({"train": subjects[:3], "val": [], "test": subjects[3:]}, root / "splits.json")
    return root


def test_baselines_on_a_phantom_cohort_score_like_models_and_in_the_expected_order(cohort: Path):
    task = {"name": "t1_ct", "kind": "translation", "source": "T1w", "target": "CT"}
    out = run_baselines(task=task, prep_root=cohort / "prep", nifti_root=cohort / "phantom" / "nifti", split_path=cohort / "splits.json",
                        out_dir=cohort / "baselines", out_json=cohort / "baselines.json")
    assert set(out["baselines"]) == set(BASELINES) and out["units"] == "HU"
    mae = {name: entry["aggregate"]["mae"]["mean"] for name, entry in out["baselines"].items()}
    for name, entry in out["baselines"].items():
        assert [row["subject"] for row in entry["per_subject"]] == ["sub-004"]
        volume, truth = load_nifti(cohort / "baselines" / name / "sub-004.nii.gz"), load_nifti(cohort / "phantom" / "nifti" / "sub-004" / "CT.nii.gz")
        assert volume.array.shape == truth.array.shape and np.allclose(volume.affine, truth.affine)
    # bone and air are both dark on T1w: a monotone intensity map cannot tell them apart, a
    # lookup fitted on paired voxels can in part, and the truth itself on the 6 mm grid does best
    assert mae["resolution_floor"] < mae["intensity_lookup"] < mae["identity_matched"]
    assert 0 < mae["resolution_floor"] < 150  # HU: partial volume at a 6 mm grid on a 4 mm phantom
    section = read_baselines(cohort / "baselines.json")
    assert "curve" not in section["intensity_lookup"] and "curve" in json.loads((cohort / "baselines.json").read_text())["baselines"]["intensity_lookup"]


def test_baselines_and_translation_evaluation_never_import_monai(cohort: Path, tmp_path: Path):
    # Each runs in its own process per task or model: `import monai` would cost it about 10 s.
    task = json.dumps({"name": "t1_ct", "kind": "translation", "source": "T1w", "target": "CT"})
    common = ["--prep-root", str(cohort / "prep"), "--nifti-root", str(cohort / "phantom" / "nifti"), "--split", str(cohort / "splits.json")]
    baselines = ["baselines", "--task-json", task, *common, "--out-dir", str(tmp_path / "baselines"), "--out", str(tmp_path / "baselines.json")]
    # the lookup's volumes stand in for a model's translations
    evaluate = ["evaluate", "translation", "--model", "m", "--task-json", task, *common, "--pred-dir", str(tmp_path / "baselines" / "intensity_lookup"),
                "--baselines", str(tmp_path / "baselines.json"), "--out", str(tmp_path / "m.json")]
    for argv, allowed in ((baselines, {"torch"}), (evaluate, set())):
        code = (
            "import sys\n"
            "from medgen.cli import main\n"
            f"assert main({argv!r}) == 0\n"
            f"loaded = sorted(m for m in ('monai', 'torch') if m in sys.modules and m not in {sorted(allowed)!r})\n"
            "assert not loaded, loaded\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    scored = json.loads((tmp_path / "m.json").read_text())
    lookup = json.loads((tmp_path / "baselines.json").read_text())["baselines"]["intensity_lookup"]
    assert scored["aggregate"]["mae"]["mean"] == pytest.approx(lookup["aggregate"]["mae"]["mean"], rel=1e-12)
