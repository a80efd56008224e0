"""A checkpoint resumes only the run it belongs to (model, options, task, split, preprocessing, data)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.splits import read_split, write_split
from medgen.models.artifact import read_card
from medgen.train.fingerprint import differences, run_fingerprint

ROOT = Path(__file__).resolve().parent.parent
TASK = {"name": "t1_ct", "kind": "translation", "source": "T1w", "target": "CT"}
PIX2PIX = {"ngf": 4, "ndf": 8, "num_downs": 4, "num_layers_d": 2}


def _train_args(prep: Path, split: Path, out: Path, options: dict, steps: int = 2, *extra: str) -> list[str]:
    return ["train", "--prep-root", str(prep), "--split", str(split), "--task-json", json.dumps(TASK), "--model", "pix2pix",
            "--options-json", json.dumps(options), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--log-every", "1", "--image-every", "0", "--ckpt-every", "1", "--device", "cpu", *extra]


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["step"])


def _first_logged_step(run: Path) -> int:
    return json.loads((run / "log.jsonl").read_text().splitlines()[0])["step"]


def test_differences_name_the_changed_option_and_split():
    base = dict(model="pix2pix", options={"ngf": 16}, task=TASK, split={"train": ["a", "b"], "test": ["c"]},
                preprocess={"spacing": [1, 1, 1]}, data={"a/T1w.nii.gz": "0" * 64}, training={"batch_size": 4, "seed": 0})
    old = run_fingerprint(**base)
    assert run_fingerprint(**base)["digest"] == old["digest"]
    new = run_fingerprint(**{**base, "options": {"ngf": 32}, "split": {"train": ["a", "c"], "test": ["b"]}})
    assert new["digest"] != old["digest"]
    assert differences(old, new) == ["options.ngf: 16 -> 32", "split.test: +b -c", "split.train: +c -b"]
    # the step count is not part of a run: raising it extends the run
    assert run_fingerprint(**{**base, "training": {"batch_size": 4, "seed": 0, "max_steps": 99}})["digest"] == old["digest"]


def test_changed_model_option_is_refused_by_hand_then_restarts(tiny_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(tiny_cohort["prep"], tiny_cohort["split"], run, PIX2PIX)) == 0
    before = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    # ngf 4 -> 8 changes every weight's shape: refused with a message, never a state_dict traceback
    assert main(_train_args(tiny_cohort["prep"], tiny_cohort["split"], run, {**PIX2PIX, "ngf": 8})) == 2
    err = capsys.readouterr().err
    assert "belongs to a different run" in err and "options.ngf: 4 -> 8" in err and "--restart" in err
    assert "size mismatch" not in err
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing lost
    # --restart moves the old run aside (never deletes it) and trains the new one from scratch
    assert main(_train_args(tiny_cohort["prep"], tiny_cohort["split"], run, {**PIX2PIX, "ngf": 8}, 2, "--restart")) == 0
    assert (run / "checkpoint.stale-1.pt").read_bytes() == before
    assert (run / "model.stale-1.pt").exists() and (run / "log.stale-1.jsonl").exists()
    assert read_card(run / "model.pt").options["ngf"] == 8
    assert _first_logged_step(run) == 1


def test_changed_split_or_data_retrains_unchanged_resumes(tiny_cohort, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    prep = tmp_path / "prep"
    shutil.copytree(tiny_cohort["prep"], prep)
    split_path = tmp_path / "splits.json"
    shutil.copy(tiny_cohort["split"], split_path)
    run = tmp_path / "run"
    workflow = ("--on-mismatch", "restart")  # how the workflow's train rule calls it
    assert main(_train_args(prep, split_path, run, PIX2PIX, 2, *workflow)) == 0

    # unchanged, more steps: the run is extended from its checkpoint, nothing moved aside
    caplog.clear()
    assert main(_train_args(prep, split_path, run, PIX2PIX, 3, *workflow)) == 0
    assert "resumed from" in caplog.text and _step(run / "checkpoint.pt") == 3
    assert not list(run.glob("*.stale-*"))

    # a changed split (a test subject moves into training) retrains from scratch
    split = read_split(split_path)
    write_split({"train": [split["train"][0], split["test"][0]], "val": split["val"], "test": [split["train"][1]]}, split_path)
    caplog.clear()
    assert main(_train_args(prep, split_path, run, PIX2PIX, 3, *workflow)) == 0
    assert "split.train" in caplog.text and "training from scratch" in caplog.text and "resumed from" not in caplog.text
    assert _step(run / "checkpoint.stale-1.pt") == 3 and _first_logged_step(run) == 1

    # changed data of a training subject retrains from scratch
    t1 = prep / split["test"][0] / "T1w.nii.gz"
    img = nib.load(t1)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 0.5, img.affine, img.header), t1)
    caplog.clear()
    assert main(_train_args(prep, split_path, run, PIX2PIX, 3, *workflow)) == 0
    assert f"{split['test'][0]}/T1w.nii.gz" in caplog.text and "training from scratch" in caplog.text
    assert (run / "checkpoint.stale-2.pt").exists()


@pytest.mark.slow
def test_killed_run_resumes(tiny_cohort, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "medgen.cli", *_train_args(tiny_cohort["prep"], tiny_cohort["split"], run, PIX2PIX, 100000)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = _step(run / "checkpoint.pt")
    assert killed_at >= 1 and not (run / "model.pt").exists()
    again = [sys.executable, "-m", "medgen.cli", *_train_args(tiny_cohort["prep"], tiny_cohort["split"], run, PIX2PIX, killed_at + 1)]
    resumed = subprocess.run(again, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoint.pt'} at step {killed_at}" in resumed.stderr
    assert _step(run / "checkpoint.pt") == killed_at + 1 and not list(run.glob("*.stale-*"))


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_changed_option_restarts_under_torchrun(tiny_cohort, tmp_path):
    """Two ranks decide alike: only rank 0 moves the old run aside, neither resumes it."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MEDGEN_NO_PROGRESS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def torchrun(options: dict) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medgen.cli",
               *_train_args(tiny_cohort["prep"], tiny_cohort["split"], run, options, 2, "--on-mismatch", "restart")]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    first = torchrun(PIX2PIX)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun({**PIX2PIX, "ngf": 8})
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("moved it aside") == 1 and "resumed from" not in second.stderr
    assert sorted(p.name for p in run.glob("*.stale-*")) == ["checkpoint.stale-1.pt", "log.stale-1.jsonl", "model.stale-1.pt"]
    assert read_card(run / "model.pt").options["ngf"] == 8
