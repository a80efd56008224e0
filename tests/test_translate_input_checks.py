"""translate refuses an input of the wrong modality (unless forced, which its sidecar records), and
warns when an input lies far outside the training field of view or intensity range."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgen.cli import main
from medgen.errors import ExitCode, ModalityMismatchError
from medgen.io.dicom_write import write_dicom_series
from medgen.synth.input_checks import agrees

TASK = {"name": "t1_ct", "kind": "translation", "source": "T1w", "target": "CT"}
OPTIONS = {"ngf": 4, "num_downs": 3, "num_layers_d": 2, "ndf": 4}


@pytest.fixture(scope="module")
def t1_to_ct(tiny_cohort, tmp_path_factory) -> Path:
    """A run folder of a real (barely trained) 2D pix2pix T1w -> CT model: model.pt and checkpoint.pt."""
    out = tmp_path_factory.mktemp("t1_ct") / "run"
    code = main(["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(TASK),
                 "--model", "pix2pix", "--options-json", json.dumps(OPTIONS), "--out", str(out), "--steps", "1", "--batch-size", "2",
                 "--image-every", "0", "--device", "cpu"])
    assert code == 0
    return out


def with_sidecar(src: Path, dest: Path, modality: str | None) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    if modality is not None:
        dest.with_name(dest.name.removesuffix(".nii.gz") + ".json").write_text(json.dumps({"Modality": modality}))
    return dest


def translate(run: Path, source: Path, output: Path, *extra: str) -> int:
    return main(["translate", "--checkpoint", str(run / "model.pt"), "--input", str(source), "--output", str(output), *extra])


def test_modality_labels_agree_by_family_and_sequence():
    assert agrees("T1w", "T1w") and agrees("t1", "T1w") and agrees("MR", "T1w") and agrees("T2w", "MR")
    assert not agrees("CT", "T1w") and not agrees("T2w", "T1w") and not agrees("MR", "CT") and not agrees("PT", "T1w")


def test_a_ct_input_for_a_t1w_model_is_refused_and_force_is_recorded(tiny_cohort, t1_to_ct, tmp_path, capsys):
    ct = with_sidecar(tiny_cohort["phantom"] / "nifti" / "sub-001" / "CT.nii.gz", tmp_path / "in" / "ct.nii.gz", "CT")
    before = ct.read_bytes()
    out = tmp_path / "out" / "sct.nii.gz"
    assert translate(t1_to_ct, ct, out) == ExitCode.MISMATCH
    err = capsys.readouterr().err
    assert err.startswith("medgen translate: error: ") and err.count("\n") == 1
    assert "the input is CT (from sidecar ct.json (Modality)) but this model translates T1w -> CT" in err
    assert "--source-modality T1w" in err and "--force" in err
    assert not out.exists() and not out.parent.exists()

    assert translate(t1_to_ct, ct, out, "--force") == 0
    sidecar = json.loads(out.with_name("sct.json").read_text())
    assert sidecar["modality_check"] == {"model_source": "T1w", "input_modality": "CT", "found_in": "sidecar ct.json (Modality)",
                                         "agrees": False, "forced": True}
    assert ct.read_bytes() == before


def test_the_callers_modality_and_a_dicom_modality_are_checked(tiny_cohort, t1_to_ct, tmp_path, capsys):
    t1 = with_sidecar(tiny_cohort["phantom"] / "nifti" / "sub-001" / "T1w.nii.gz", tmp_path / "in" / "t1.nii.gz", "MR")
    assert translate(t1_to_ct, t1, tmp_path / "ok.nii.gz") == 0
    assert json.loads((tmp_path / "ok.json").read_text())["modality_check"]["agrees"] is True
    assert translate(t1_to_ct, t1, tmp_path / "x.nii.gz", "--source-modality", "T2w") == ExitCode.MISMATCH
    assert "the input is T2w (from --source-modality)" in capsys.readouterr().err

    img = nib.load(str(tiny_cohort["phantom"] / "nifti" / "sub-001" / "CT.nii.gz"))
    write_dicom_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, tmp_path / "dicom", modality="CT",
                       series_description="head", series_number=2)
    assert translate(t1_to_ct, tmp_path / "dicom", tmp_path / "y.nii.gz") == ExitCode.MISMATCH
    assert "the input is CT (from DICOM Modality)" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "y.nii.gz").exists()


def test_passing_the_training_checkpoint_names_model_pt_and_never_advises_deleting(tiny_cohort, t1_to_ct, tmp_path, capsys):
    t1 = tiny_cohort["phantom"] / "nifti" / "sub-001" / "T1w.nii.gz"
    code = main(["translate", "--checkpoint", str(t1_to_ct / "checkpoint.pt"), "--input", str(t1), "--output", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert code == ExitCode.MODEL_FILE
    assert "is a training checkpoint" in err and "pass model.pt from the same run folder" in err
    assert "delete" not in err and "move" not in err
    assert (t1_to_ct / "checkpoint.pt").exists()


def test_far_field_of_view_and_intensities_are_warned_with_figures(tiny_cohort, t1_to_ct, tmp_path, caplog):
    img = nib.load(str(tiny_cohort["phantom"] / "nifti" / "sub-001" / "T1w.nii.gz"))
    data = np.asarray(img.dataobj, dtype=np.float32)
    k = data.shape[2] // 2
    thin = nib.Nifti1Image(data[:, :, k - 2 : k + 2] * 1000.0, img.affine)  # 4 slices, intensities x1000
    nib.save(thin, str(tmp_path / "thin.nii.gz"))
    assert translate(t1_to_ct, tmp_path / "thin.nii.gz", tmp_path / "o.nii.gz") == 0
    warnings = json.loads((tmp_path / "o.json").read_text())["input_warnings"]
    assert len(warnings) == 2
    assert "field of view is far from the training data's" in warnings[0] and " mm" in warnings[0]
    assert "intensities are far from the training data's" in warnings[1]
    assert any(w in caplog.text for w in warnings)

    assert translate(t1_to_ct, tiny_cohort["phantom"] / "nifti" / "sub-001" / "T1w.nii.gz", tmp_path / "n.nii.gz") == 0
    assert json.loads((tmp_path / "n.json").read_text())["input_warnings"] == []  # a subject like the training ones


def test_a_translation_model_given_to_sample_is_refused(t1_to_ct, tmp_path, capsys):
    code = main(["sample", "--checkpoint", str(t1_to_ct / "model.pt"), "--n", "2", "--out", str(tmp_path / "samples")])
    err = capsys.readouterr().err
    assert code == ExitCode.MISMATCH
    assert "is a 'translation' model, not a generation model" in err and "medgen translate" in err
    assert not (tmp_path / "samples").exists()


def test_library_refusal_is_a_value_error_too():
    assert issubclass(ModalityMismatchError, ValueError)


def test_several_volumes_translate_in_one_call_each_like_a_call_of_its_own(tiny_cohort, t1_to_ct, tmp_path, capsys):
    subjects = sorted(p.name for p in (tiny_cohort["phantom"] / "nifti").iterdir())[:2]
    sources = [tiny_cohort["phantom"] / "nifti" / s / "T1w.nii.gz" for s in subjects]
    together = [tmp_path / "together" / f"{s}.nii.gz" for s in subjects]
    code = main(["translate", "--checkpoint", str(t1_to_ct / "model.pt"), "--input", *map(str, sources), "--output", *map(str, together)])
    assert code == 0
    for source, out in zip(sources, together):
        alone = tmp_path / "alone" / out.name
        assert translate(t1_to_ct, source, alone) == 0
        assert np.array_equal(nib.load(str(out)).get_fdata(), nib.load(str(alone)).get_fdata())
    # one output per input, or nothing runs
    capsys.readouterr()
    code = main(["translate", "--checkpoint", str(t1_to_ct / "model.pt"), "--input", *map(str, sources), "--output", str(tmp_path / "one.nii.gz")])
    assert code != 0 and "one output per input" in capsys.readouterr().err
    assert not (tmp_path / "one.nii.gz").exists()
    # every output is checked before the first volume is written: a folder where the second
    # output should be stops the call with nothing written
    blocked = [tmp_path / "blocked" / "first.nii.gz", tmp_path / "blocked" / "second.nii.gz"]
    blocked[1].mkdir(parents=True)
    code = main(["translate", "--checkpoint", str(t1_to_ct / "model.pt"), "--input", *map(str, sources), "--output", *map(str, blocked)])
    assert code != 0 and "second.nii.gz: a folder already stands where --output should write a file" in capsys.readouterr().err
    assert not blocked[0].exists()
