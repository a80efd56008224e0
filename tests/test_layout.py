"""The results layout: patterns with placeholders, files with values, runs found on disk."""

from __future__ import annotations

from pathlib import Path

from medgen import layout
from pipeline.targets import downstream_models, task_models


def test_patterns_keep_placeholders_and_fill_them():
    assert layout.model_file("res") == "res/models/{task}/{model}/model.pt"
    assert layout.model_file("res", "t1_to_ct", "pix2pix/seed-1") == "res/models/t1_to_ct/pix2pix/seed-1/model.pt"
    assert layout.translation("res") == "res/synth/{task}/{model}/{subject}.nii.gz"
    assert layout.translation("res").format(task="t", model="m", subject="sub-01") == layout.translation("res", "t", "m", "sub-01")
    assert layout.nifti_image("res", "{{subject}}") == "res/nifti/{{subject}}/{modality}.nii.gz"
    assert layout.metrics_file(Path("/r"), "t", "gan") == "/r/metrics/t/gan.json"
    assert layout.ingest_summary("res", "sub-01") == "res/nifti/sub-01/ingest_summary.json"
    assert layout.run_name("gan") == "gan" and layout.run_name("gan", 2) == "gan/seed-2"


def test_targets_name_runs_and_model_files_by_the_layout():
    cfg = {"train": {"seed": 0}, "tasks": {"t": {"kind": "generation", "models": {"gan": {}}, "seeds": [0, 3]}}}
    assert list(task_models(cfg)) == [("t", "gan/seed-0"), ("t", "gan/seed-3")]
    assert downstream_models(cfg, "res", "t") == {"gan": [layout.model_file("res", "t", "gan/seed-0"), layout.model_file("res", "t", "gan/seed-3")]}


def test_runs_on_disk_are_model_folders_or_their_seed_folders(tmp_path):
    for folder in ("gan/seed-0", "gan/seed-1", "pix2pix/samples", "cut"):
        (tmp_path / "task" / folder).mkdir(parents=True)
    (tmp_path / "task" / "baselines.json").write_text("{}")
    assert layout.runs(tmp_path / "task") == ["cut", "gan/seed-0", "gan/seed-1", "pix2pix"]
    assert layout.runs(tmp_path / "absent") == []
