"""The study configs are valid and build their workflow (snakemake -n): every translation model
of every task is trained once, validated during training and translates every test subject."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(config: Path, workdir: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(config), "-n", "-p"]
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.parametrize("name", ["study_cpu.yaml", "study_gpu.yaml"])
def test_study_config_builds_its_dag(name, tmp_path):
    cfg = load_config(ROOT / "configs" / name)  # schema-validated, defaults filled
    out = _dry_run(ROOT / "configs" / name, tmp_path)
    translation = [(t, m) for t, spec in cfg["tasks"].items() if spec["kind"] == "translation" for m in spec["models"]]
    seeds = {t: len(spec.get("seeds") or [0]) for t, spec in cfg["tasks"].items()}
    assert translation, "a study config without translation models"
    n_test = round(cfg["data"]["phantom"]["subjects"] * cfg["split"]["fractions"][2])
    # one train job per (task, model, seed); one translation job per run, for every test subject
    assert out.count("medgen.cli train ") >= sum(seeds[t] for t, _ in translation)
    commands = [line for line in out.splitlines() if "medgen.cli translate " in line]
    assert len(commands) == sum(seeds[t] for t, _ in translation)
    assert all(line.split(" --output ")[1].count(".nii.gz") == n_test for line in commands)
    for task, model in translation:
        line = next(l for l in out.splitlines() if "medgen.cli train " in l and f"--model {model} " in l and f"/{task}/{model}" in l)
        train = json.loads(re.search(r"--settings '(\{[^']*\})'", line).group(1))
        assert train["val_every"] > 0  # validated: model.pt is the best checkpoint


def test_gpu_study_uses_the_1mm_grid_and_full_size_networks():
    cfg = yaml.safe_load((ROOT / "configs" / "study_gpu.yaml").read_text())
    assert cfg["preprocess"]["spacing"] == [1.0, 1.0, 1.0] and cfg["data"]["phantom"]["spacing_mm"] == 1.0
    for spec in cfg["tasks"].values():
        for model, entry in spec["models"].items():
            options = entry["options"]
            assert options["ngf"] == 64 and options["ndf"] == 64, model
            # every slice side must be divisible by the generator's downsampling
            divisor = 2 ** options["num_downs"] if model == "pix2pix" else 4
            assert all(s % divisor == 0 for s in cfg["preprocess"]["size"][:2]), model
