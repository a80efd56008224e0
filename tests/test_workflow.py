"""The Snakemake workflow: DAGs for every data source, config errors at start, and a real run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medgen.data.splits import read_split

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _snakemake(workdir: Path, config: dict | None, *args: str) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--directory", str(workdir), *args]
    if config is not None:
        cfg_path = workdir / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg_path)]
    return subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)


def _job_counts(stdout: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if parts and parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    return counts


def _most_jobs_running(log: str) -> int:
    """The most jobs the scheduler had running at once, from the order of its own log lines."""
    running: set[str] = set()
    most = 0
    started = re.compile(r"^\s+jobid: (\d+)$")
    finished = re.compile(r"^Finished jobid: (\d+)")
    for line in log.splitlines():
        if m := started.match(line):
            running.add(m.group(1))
            most = max(most, len(running))
        elif m := finished.match(line):
            running.discard(m.group(1))
    return most


def test_default_dag(tmp_path):
    res = _snakemake(tmp_path, None, "-n", "--printshellcmds")
    assert res.returncode == 0, res.stderr
    counts = _job_counts(res.stdout + res.stderr)
    assert counts == {"phantom": 1, "ingest": 20, "preprocess": 20, "split": 1, "encoder": 1, "train": 3, "sample": 1, "translate": 2, "evaluate": 3, "baselines": 2, "downstream": 1, "report": 1, "all": 1}
    # trainings start in this order: the downstream task's model, the generation model (the longest
    # chain of jobs after training), then the other translation model
    # and the downstream study after every training (it would hold a core that a training needs)
    priority = {m.group(1, 2): int(m.group(3)) for m in re.finditer(r"rule train:.*?wildcards: task=(\w+), model=(\w+)\n\s+priority: (\d+)", res.stdout, re.S)}
    downstream = int(re.search(r"rule downstream:.*?priority: (\d+)", res.stdout, re.S).group(1))
    assert priority[("t1w_to_t2w", "pix2pix")] > priority[("t1w_synthesis", "vaegan")] > priority[("t1w_to_ct", "pix2pix")] > downstream, (priority, downstream)
    # a generation model is validated on samples drawn at the temperature its samples are drawn at
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    config["tasks"]["t1w_synthesis"]["models"]["vaegan"]["sample"] = {"temperature": 0.7}
    res = _snakemake(tmp_path, config, "-n", "--printshellcmds")
    assert res.returncode == 0, res.stderr
    train = next(line for line in res.stdout.splitlines() if " train " in line and "--model vaegan" in line)
    sample = next(line for line in res.stdout.splitlines() if " sample " in line and "vaegan/model.pt" in line)
    assert "--sample-temperature 0.7" in train and "--encoder " in train and "--temperature 0.7" in sample


def test_dag_for_each_user_data_source(tmp_path):
    # the files pass the door checks (they exist and hold 3D volumes); -n runs no job on them
    volume = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4))
    for name in ("patA", "patB", "patC", "patD"):
        (tmp_path / "dicom" / name).mkdir(parents=True)
        (tmp_path / "dicom" / name / "1.dcm").write_bytes(b"")
    for sub in ("sub-01", "sub-02", "sub-03"):
        anat = tmp_path / "bids" / sub / "anat"
        anat.mkdir(parents=True)
        nib.save(volume, anat / f"{sub}_T1w.nii.gz")
    for name in "abc":
        nib.save(volume, tmp_path / f"{name}.nii.gz")
    (tmp_path / "m.tsv").write_text("subject\tmodality\tpath\nS1\tT1w\ta.nii.gz\nS2\tT1w\tb.nii.gz\nS3\tT1w\tc.nii.gz\n")
    for data, n in (({"dicom_root": "dicom"}, 4), ({"bids_root": "bids"}, 3), ({"manifest": "m.tsv"}, 3)):
        res = _snakemake(tmp_path, {"data": data, "modalities": ["T1w"]}, "-n")
        assert res.returncode == 0, res.stderr
        counts = _job_counts(res.stdout + res.stderr)
        assert "phantom" not in counts
        assert counts["preprocess"] == n, (data, counts)


def test_invalid_config_stops_before_any_job(tmp_path):
    res = _snakemake(tmp_path, {"data": {"phantom": {"subjects": 4}}, "modalities": ["T1w"], "preprocess": {"spacng": [1, 1, 1]}}, "--cores", "1")
    assert res.returncode != 0
    assert "config key 'preprocess': unknown key(s) 'spacng'" in res.stderr
    assert not (tmp_path / "results").exists()


TINY_STUDY = {
    "data": {"phantom": {"subjects": 4, "seed": 3, "spacing_mm": 4.0}},
    "modalities": ["T1w", "T2w", "CT"],
    "preprocess": {"spacing": [6.0, 6.0, 6.0], "size": [32, 32, 32]},
    "split": {"fractions": [0.5, 0.25, 0.25]},
    "tasks": {
        "t1_gen": {"kind": "generation", "modalities": ["T1w"], "samples": 16, "seeds": [0, 1],
                   "models": {"gan": {"ngf": 8, "ndf": 8, "latent_dim": 16, "steps": 4, "batch_size": 4}}},
        "t1_ct": {"kind": "translation", "source": "T1w", "target": "CT", "downstream": True,
                  "models": {"pix2pix": {"ngf": 4, "ndf": 8, "num_downs": 4, "num_layers_d": 2, "steps": 4, "batch_size": 2}}},
    },
    "train": {"gpus": 0, "image_every": 0, "ckpt_every": 2, "device": "cpu"},
    "eval": {"features": ["encoder"], "encoder_steps": 5, "max_real": 32,
             "downstream": {"steps": 2, "batch_size": 4, "channels": [4, 8], "seeds": [0, 1, 2]}},
}


@pytest.mark.slow
def test_real_run_on_a_small_phantom(tmp_path):
    config = json.loads(json.dumps(TINY_STUDY))
    res = _snakemake(tmp_path, config, "--cores", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    # --cores 2 and one-thread jobs: never more than two jobs at once (a Snakemake release that
    # overcommitted the cores ran six at once in the demo)
    assert _most_jobs_running(res.stderr) == 2
    results = tmp_path / "results"
    split = read_split(results / "splits.json")
    assigned = [s for key in ("train", "val", "test") for s in split[key]]
    assert sorted(assigned) == ["sub-001", "sub-002", "sub-003", "sub-004"]
    for subject in assigned:
        prep = results / "prep" / subject
        images = [nib.load(str(prep / f"{m}.nii.gz")) for m in ("T1w", "T2w", "CT", "mask", "labels")]
        for img in images:
            assert img.shape == (32, 32, 32)
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            np.testing.assert_allclose(img.affine, images[0].affine, atol=1e-4)
        ct = images[2].get_fdata()
        assert -1.0 - 1e-5 <= ct.min() and ct.max() <= 1.0 + 1e-5
        sidecar = json.loads((results / "nifti" / subject / "CT.json").read_text())
        assert "DOE" not in json.dumps(sidecar)
    # translated test volumes are in the ingested volume's own grid, in HU
    test_subject = split["test"][0]
    synth = nib.load(str(results / "synth" / "t1_ct" / "pix2pix" / f"{test_subject}.nii.gz"))
    truth = nib.load(str(results / "nifti" / test_subject / "CT.nii.gz"))
    assert synth.shape == truth.shape and np.allclose(synth.affine, truth.affine, atol=1e-5)
    metrics = json.loads((results / "metrics" / "t1_ct" / "pix2pix.json").read_text())
    assert metrics["units"] == "HU" and metrics["per_subject"][0]["subject"] == test_subject
    # the three baselines beside the model, on the same test subjects
    assert set(metrics["baselines"]) == {"identity_matched", "intensity_lookup", "resolution_floor"}
    for baseline in metrics["baselines"].values():
        assert [r["subject"] for r in baseline["per_subject"]] == [test_subject] and baseline["aggregate"]["mae"]["mean"] > 0
    downstream = json.loads((results / "metrics" / "t1_ct" / "downstream.json").read_text())
    assert set(downstream["settings"]) == {"real", "real+pix2pix"} and downstream["seeds"] == [0, 1, 2]
    table = (results / "metrics.tsv").read_text()
    assert "\tintensity_lookup\t" in table and "\tdownstream\t" in table
    # two seeds of the generation model: one folder each
    assert (results / "models" / "t1_gen" / "gan" / "seed-1" / "model.pt").is_file()
    gen = json.loads((results / "metrics" / "t1_gen" / "gan" / "seed-0.json").read_text())
    assert "real_vs_real" in gen["features"]["encoder"] and 0.0 <= gen["memorization"]["likely_copy_share"] <= 1.0
    assert "id=\"metrics\"" in (results / "report.html").read_text()
    # A second run has nothing to do.
    again = _snakemake(tmp_path, config, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    # Changing one model's options retrains that model (and what depends on it) only.
    config["tasks"]["t1_gen"]["models"]["gan"]["ngf"] = 4
    changed = _job_counts(_snakemake(tmp_path, config, "-n").stdout)
    assert changed.get("train") == 2 and "translate" not in changed and "preprocess" not in changed  # one per seed
    assert changed.get("sample") == 2 and changed.get("evaluate") == 2


def test_3d_config_builds_its_dag(tmp_path):
    res = _snakemake(tmp_path, yaml.safe_load((ROOT / "configs" / "study_3d.yaml").read_text()), "-n")
    assert res.returncode == 0, res.stderr
    counts = _job_counts(res.stdout + res.stderr)
    # two models x three seeds; one translation job each (for its three test subjects)
    assert counts["train"] == 2 * 3 and counts["translate"] == 2 * 3 and counts["evaluate"] == 2 * 3
