"""Input data checked at the door: every problem of a manifest / BIDS tree / DICOM root at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from medgen.data.splits import read_split
from pipeline.checks import input_problems

ROOT = Path(__file__).resolve().parent.parent
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _volume(path: Path, shape: tuple[int, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.float32), np.eye(4)), path)
    return path


def _config(data: dict, modalities=("T1w", "CT")) -> dict:
    return {"data": data, "modalities": list(modalities)}


def _bad_manifest_study(folder: Path) -> Path:
    _volume(folder / "a_t1.nii.gz", (8, 8, 8))
    _volume(folder / "a_ct.nii.gz", (8, 8, 8, 1))  # a trailing singleton axis is fine
    shutil.copy(NIBABEL_DATA / "example4d.nii.gz", folder / "b_t1.nii.gz")  # 4D: 2 volumes
    (folder / "c_ct").mkdir()  # an empty DICOM folder
    _volume(folder / "c_t1.nii.gz", (8, 8, 8))
    manifest = folder / "manifest.tsv"
    manifest.write_text(
        "subject\tmodality\tpath\n"
        "A\tT1w\ta_t1.nii.gz\nA\tCT\ta_ct.nii.gz\n"
        "B\tT1w\tb_t1.nii.gz\nB\tCT\tb_ct_missing.nii.gz\n"
        "C\tt1\tc_t1.nii.gz\nC\tCT\tc_ct\n"
        "D\tT1w\ta_t1.nii.gz\n"
    )
    return manifest


def test_manifest_problems_are_listed_together_with_full_paths(tmp_path):
    manifest = _bad_manifest_study(tmp_path)
    problems = list(input_problems(_config({"manifest": str(manifest)})))
    assert len(problems) == 4, problems
    assert any(f"{tmp_path / 'b_t1.nii.gz'}: is a 4D series of 2 volumes" in p for p in problems)
    assert any(f"{tmp_path / 'b_ct_missing.nii.gz'}: does not exist" in p for p in problems)
    assert any(f"{tmp_path / 'c_ct'}: folder holds no files" in p for p in problems)
    assert any("subject D has no row for modality CT" in p for p in problems)


def test_space_separated_manifest_is_named_as_such(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("subject modality path\nA T1w a.nii.gz\n")
    (problem,) = input_problems(_config({"manifest": str(manifest)}, ["T1w"]))
    assert "separated by tabs, not spaces" in problem and str(manifest) in problem


def test_bids_subject_without_a_modality_and_a_4d_file(tmp_path):
    _volume(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz", (8, 8, 8))
    _volume(tmp_path / "sub-01" / "anat" / "sub-01_CT.nii.gz", (8, 8, 8))
    _volume(tmp_path / "sub-02" / "anat" / "sub-02_T1w.nii.gz", (8, 8, 8, 3))
    problems = list(input_problems(_config({"bids_root": str(tmp_path)})))
    assert len(problems) == 2, problems
    assert "sub-02_T1w.nii.gz: is a 4D series of 3 volumes" in problems[0]
    assert f"{tmp_path / 'sub-02'}: no *_CT.nii[.gz]" in problems[1]


def test_workflow_stops_before_any_job_with_every_problem(tmp_path):
    manifest = _bad_manifest_study(tmp_path / "study")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config({"manifest": str(manifest)})))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1", "--configfile", str(config)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "input data: 4 problem(s) found before any job ran" in res.stderr
    assert str(tmp_path / "study" / "b_ct_missing.nii.gz") in res.stderr and "subject D has no row" in res.stderr
    assert not (tmp_path / "results").exists()


def test_split_names_a_test_subject_without_usable_slices(tiny_cohort, tmp_path, capsys):
    from medgen.cli import main

    prep = tmp_path / "prep"
    shutil.copytree(tiny_cohort["prep"], prep)
    subjects = sorted(p.name for p in prep.iterdir())
    args = ["split", "--subjects", *subjects, "--out", str(tmp_path / "splits.json"), "--fractions", "0.5", "0.25", "0.25", "--prep-root", str(prep)]
    assert main(args) == 0  # the phantom's heads fill their slices
    test_subject = read_split(tmp_path / "splits.json")["test"][0]
    (tmp_path / "splits.json").unlink()
    # a head 4x4 voxels wide in a 32x32 grid: 1.6% of a slice at most, below the 5% training and evaluation share
    mask_path = prep / test_subject / "mask.nii.gz"
    mask = nib.load(mask_path)
    small = np.zeros(mask.shape, dtype=np.uint8)
    small[14:18, 14:18, 10:20] = 1
    nib.save(nib.Nifti1Image(small, mask.affine), mask_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"test subject {test_subject}: no axial slice of {mask_path} has 5% head mask (largest 1.6%)" in err
    assert not (tmp_path / "splits.json").exists()
