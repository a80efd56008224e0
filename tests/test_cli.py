"""The `medgen` command line: exit codes and messages a workflow engine can rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medgen.cli import main

MEDGEN = [sys.executable, "-m", "medgen.cli"]


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in ("phantom", "ingest", "preprocess", "split"):
        assert verb in out


def test_unknown_verb_fails_loudly():
    res = subprocess.run([*MEDGEN, "frobnicate"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "invalid choice: 'frobnicate'" in res.stderr


def test_missing_input_names_the_path(tmp_path, capsys):
    code = main(["ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert code == 4  # ExitCode.MISSING
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_phantom_ingest_preprocess_split_by_hand(tmp_path):
    """The verbs chained by hand, as a user without the workflow would."""
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--subjects", "3", "--seed", "1", "--spacing", "4", "--only", "sub-002"]) == 0
    assert main(["ingest", str(tmp_path / "ph" / "dicom" / "sub-002"), "--out", str(tmp_path / "nifti"), "--subject", "sub-002", "--modalities", "T1w", "CT"]) == 0
    assert main(
        ["preprocess", "--input-dir", str(tmp_path / "nifti" / "sub-002"), "--modalities", "T1w", "CT", "--out", str(tmp_path / "prep"),
         "--spacing", "4", "4", "4", "--size", "48", "56", "48"]
    ) == 0
    assert sorted(p.name for p in (tmp_path / "prep").iterdir()) == ["CT.nii.gz", "T1w.nii.gz", "mask.nii.gz", "normalisation.json"]
    assert main(["split", "--subjects", "a", "b", "c", "--out", str(tmp_path / "s.json"), "--fractions", "0.34", "0.33", "0.33"]) == 0


def test_missing_requested_modality_is_a_failure(tmp_path):
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--subjects", "3", "--spacing", "4", "--only", "sub-001"]) == 0
    code = main(["ingest", str(tmp_path / "ph" / "dicom" / "sub-001"), "--out", str(tmp_path / "n"), "--subject", "sub-001", "--modalities", "FLAIR"])
    assert code == 1
