"""The README's "Bring your own data" command, run as written from a plain shell.

A small manifest study is built from real NIfTI files that installed packages ship (nibabel's
``anatomical.nii`` and cropped, thinned copies of nilearn's MNI152 T1), and the workflow runs to
its report with ``.venv/bin/snakemake --cores 2 --configfile my_study.yaml`` and a PATH that
does not hold the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pytest
import yaml

from medgen.data.splits import make_split, read_split
from medgen.models.artifact import read_card

ROOT = Path(__file__).resolve().parent.parent
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
MNI_T1 = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"


def _save(img: nib.Nifti1Image, path: Path) -> None:
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    nib.save(out, path)


def write_package_data_study(folder: Path) -> Path:
    """Three T1w subjects from package data and a manifest (tab-separated, header row, paths
    relative to the manifest); returns the manifest's path."""
    data = folder / "data"
    data.mkdir(parents=True)
    shutil.copy(ANATOMICAL, data / "anatomical.nii")  # 33x41x25 voxels of 2 mm, LAS
    mni = nib.load(MNI_T1)  # 197x233x189 voxels of 1 mm
    _save(mni.slicer[20:180:3, 20:215:3, 10:175:3], data / "mni_thin3.nii.gz")
    _save(mni.slicer[30:170:4, 30:205:4, 20:170:4], data / "mni_crop_thin4.nii.gz")
    rows = [("anat", "T1w", "data/anatomical.nii"), ("mni3", "T1w", "data/mni_thin3.nii.gz"), ("mni4", "T1w", "data/mni_crop_thin4.nii.gz")]
    manifest = folder / "manifest.tsv"
    manifest.write_text("subject\tmodality\tpath\n" + "".join("\t".join(r) + "\n" for r in rows))
    return manifest


def study_config(manifest: Path, split_seed: int = 0) -> dict:
    return {
        "results": "results",
        "data": {"manifest": str(manifest)},
        "modalities": ["T1w"],
        "preprocess": {"spacing": [4.0, 4.0, 4.0], "size": [32, 32, 32]},
        "split": {"fractions": [0.34, 0.33, 0.33], "seed": split_seed},
        "tasks": {"t1w_synthesis": {"kind": "generation", "modalities": ["T1w"], "samples": 8,
                                    "models": {"gan": {"ngf": 8, "ndf": 8, "latent_dim": 16, "steps": 3, "batch_size": 4}}}},
        "train": {"gpus": 0, "image_every": 0, "ckpt_every": 1, "log_every": 1, "device": "cpu"},
        "eval": {"features": ["encoder"], "encoder_steps": 3, "max_real": 16},
    }


def checkout(folder: Path) -> Path:
    """A checkout of this repository (its workflow files linked) whose ``.venv`` is the
    environment running the tests, as `make test` leaves a fresh clone."""
    clone = folder / "clone"
    clone.mkdir()
    for name in ("Snakefile", "rules", "pipeline", "configs", "medgen"):
        (clone / name).symlink_to(ROOT / name)
    (clone / ".venv").symlink_to(Path(sys.prefix))
    return clone


def plain_shell_env() -> dict[str, str]:
    """The environment of a plain shell: no virtual environment on PATH. PYTHONPATH names this
    source tree so that the medgen under test is imported (an editable install does the same)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["PATH"] = PLAIN_PATH
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_readme_command(clone: Path, *extra: str) -> subprocess.CompletedProcess:
    # The README: `.venv/bin/snakemake --cores 8 --configfile my_study.yaml` (2 cores here).
    # (extra arguments go before --configfile, which takes several values)
    return subprocess.run([".venv/bin/snakemake", "--cores", "2", *extra, "--configfile", "my_study.yaml"],
                          cwd=clone, env=plain_shell_env(), capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_readme_command_runs_a_package_data_study_from_a_plain_shell(tmp_path):
    assert shutil.which("medgen", path=PLAIN_PATH) is None and shutil.which("snakemake", path=PLAIN_PATH) is None
    clone = checkout(tmp_path)
    manifest = write_package_data_study(tmp_path / "study")
    (clone / "my_study.yaml").write_text(yaml.safe_dump(study_config(manifest)))
    res = run_readme_command(clone)
    assert res.returncode == 0, res.stderr[-4000:]
    results = clone / "results"
    assert "id=\"metrics\"" in (results / "report.html").read_text()
    assert json.loads((results / "metrics" / "t1w_synthesis" / "gan.json").read_text())

    # An unchanged rerun has nothing to do.
    assert "Nothing to be done" in (again := run_readme_command(clone, "-n")).stdout + again.stderr

    # A changed split retrains from scratch: the old checkpoint is moved aside, never resumed.
    run = results / "models" / "t1w_synthesis" / "gan"
    old_split = read_split(results / "splits.json")
    old_ckpt = (run / "checkpoint.pt").read_bytes()
    subjects = [s for part in old_split.values() for s in part]
    seed = next(s for s in range(1, 50) if _split_of(subjects, s) != _split_of(subjects, 0))
    (clone / "my_study.yaml").write_text(yaml.safe_dump(study_config(manifest, split_seed=seed)))
    res = run_readme_command(clone)
    assert res.returncode == 0, res.stderr[-4000:]
    assert read_split(results / "splits.json") != old_split
    train_log = (results / "logs" / "train" / "t1w_synthesis" / "gan.log").read_text()
    print(train_log)  # shown with -s: the evidence of a changed split retraining
    assert "belongs to a different run" in train_log and "split.train" in train_log and "resumed from" not in train_log
    assert (run / "checkpoint.stale-1.pt").read_bytes() == old_ckpt
    new = read_card(run / "model.pt")
    assert new.data["train_subjects"] == read_split(results / "splits.json")["train"]


def _split_of(subjects: list[str], seed: int) -> dict:
    return dict(make_split(subjects, fractions=(0.34, 0.33, 0.33), seed=seed))


def test_failed_job_shows_the_end_of_its_log_on_the_console(tmp_path):
    # a file whose header reads but whose voxels were cut off: only the ingest job finds out
    data = tmp_path / "study" / "data"
    data.mkdir(parents=True)
    whole = ANATOMICAL.read_bytes()
    (data / "cut.nii").write_bytes(whole[: len(whole) // 2])
    manifest = tmp_path / "study" / "manifest.tsv"
    manifest.write_text("subject\tmodality\tpath\ncut\tT1w\tdata/cut.nii\n")
    clone = checkout(tmp_path)
    config = {**study_config(manifest), "split": {"fractions": [1.0, 0.0, 0.0]}}
    config["data"] = {**config["data"], "keep_subject_labels": True}  # the log is named after subject "cut"
    (clone / "my_study.yaml").write_text(yaml.safe_dump(config))
    res = run_readme_command(clone, "results/nifti/cut/T1w.nii.gz")
    assert res.returncode != 0
    log = clone / "results" / "logs" / "ingest" / "cut.log"
    tail = log.read_text().splitlines()[-3:]
    assert "last " in res.stderr and str(log.relative_to(clone)) in res.stderr
    assert all(line in res.stderr for line in tail if line.strip()), (tail, res.stderr[-3000:])


def test_every_job_runs_the_medgen_of_the_snakemake_python(tmp_path):
    manifest = write_package_data_study(tmp_path / "study")
    clone = checkout(tmp_path)
    config = study_config(manifest)
    config["train"]["gpus"] = 2  # multi-GPU training goes through torch.distributed.run, not a `torchrun` on PATH
    (clone / "my_study.yaml").write_text(yaml.safe_dump(config))
    res = run_readme_command(clone, "-n", "-p")
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout + res.stderr
    commands = [line.strip().removeprefix("Shell command:").strip() for line in text.splitlines() if "-m medgen.cli" in line]
    assert len(commands) >= 10, text[-3000:]  # ingest x3, preprocess x3, split, encoder, train, sample, evaluate
    # the interpreter of the environment's bin/ folder (the one .venv/bin/snakemake runs on)
    assert all(Path(c.split()[0]).parent == Path(sys.executable).parent for c in commands), commands
    assert any("-m torch.distributed.run --standalone --nproc_per_node 2 -m medgen.cli train" in c for c in commands)
    assert not any(line.strip().startswith(("medgen ", "torchrun ")) for line in text.splitlines())
