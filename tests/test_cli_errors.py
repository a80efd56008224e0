"""The command line's one error boundary: every expected failure is one line on stderr with the
exit status of its class (medgen.errors.ExitCode, the README's table), never a traceback; a bug
shows its traceback and asks for a report. Fixtures are tiny files built here."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
MEDGEN = [sys.executable, "-m", "medgen.cli"]


class Arbitrary:
    """Unpickling this would call print(): a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def nifti(path: Path, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8) if array is None else array
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def truncated(path: Path) -> Path:
    """A gzipped NIfTI cut in half, as an interrupted copy leaves it."""
    full = nifti(path.with_name("full_" + path.name))
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    full.unlink()
    return path


@pytest.fixture()
def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"root": tmp_path}
    files["a_file"] = tmp_path / "a_file"
    files["a_file"].write_text("not a folder\n")
    files["t1_dir"] = tmp_path / "subject"
    truncated(files["t1_dir"] / "T1w.nii.gz")
    files["split"] = tmp_path / "splits.json"
    files["split"].write_text('{"train": ["sub-001", ')  # torn JSON
    files["truncated_model"] = tmp_path / "model.pt"
    torch.save({"format": "medgen-model", "model": {"w": torch.zeros(64)}}, files["truncated_model"])
    data = files["truncated_model"].read_bytes()
    files["truncated_model"].write_bytes(data[: len(data) // 2])
    files["evil_model"] = tmp_path / "evil" / "model.pt"
    files["evil_model"].parent.mkdir()
    torch.save({"format": "medgen-model", "payload": Arbitrary()}, files["evil_model"])
    files["input"] = nifti(tmp_path / "input.nii.gz")
    files["bad_yaml"] = tmp_path / "config.yaml"
    files["bad_yaml"].write_text("modalities: [T1w\n")
    files["manifest"] = tmp_path / "list.tsv"
    files["manifest"].write_bytes(b"\xff\xfe\x00garbage\x00\n")
    return files


TASK = json.dumps({"name": "t", "kind": "generation", "modalities": ["T1w"]})
TRANSLATION_TASK = json.dumps({"name": "t", "kind": "translation", "source": "T1w", "target": "CT"})

#: verb -> (arguments built from the bad files, exit status): one corrupt or unusable input each
CORRUPT_CASES = {
    "phantom": (lambda f: ["--out", str(f["a_file"] / "cohort")], ExitCode.OUTPUT),
    "ingest": (lambda f: [str(f["manifest"]), "--out", str(f["root"] / "nifti")], ExitCode.CORRUPT),
    "preprocess": (lambda f: ["--input-dir", str(f["t1_dir"]), "--modalities", "T1w", "--out", str(f["root"] / "prep")], ExitCode.CORRUPT),
    "split": (lambda f: ["--subjects", "a", "b", "c", "--out", str(f["root"])], ExitCode.OUTPUT),
    "train": (lambda f: ["--prep-root", str(f["root"]), "--split", str(f["split"]), "--task-json", TASK, "--model", "gan",
                         "--out", str(f["root"] / "run"), "--steps", "1"], ExitCode.CORRUPT),
    "sample": (lambda f: ["--checkpoint", str(f["truncated_model"]), "--n", "2", "--out", str(f["root"] / "samples")], ExitCode.MODEL_FILE),
    "translate": (lambda f: ["--checkpoint", str(f["evil_model"]), "--input", str(f["input"]), "--output", str(f["root"] / "out.nii.gz")],
                  ExitCode.MODEL_FILE),
    "encoder": (lambda f: ["--prep-root", str(f["root"]), "--split", str(f["split"]), "--modalities", "T1w", "--out", str(f["root"] / "enc.pt")],
                ExitCode.CORRUPT),
    "evaluate": (lambda f: ["generation", "--model", "gan", "--prep-root", str(f["root"]), "--split", str(f["split"]),
                            "--out", str(f["root"] / "m.json"), "--checkpoint", str(f["truncated_model"]), "--samples", str(f["root"] / "x.tsv")],
                 ExitCode.MODEL_FILE),
    "baselines": (lambda f: ["--task-json", TRANSLATION_TASK, "--prep-root", str(f["root"]), "--nifti-root", str(f["root"]),
                             "--split", str(f["split"]), "--out-dir", str(f["root"] / "base"), "--out", str(f["root"] / "b.json")],
                  ExitCode.CORRUPT),
    "downstream": (lambda f: ["--task-json", TRANSLATION_TASK, "--prep-root", str(f["root"]), "--split", str(f["split"]),
                              "--out", str(f["root"] / "d.json"), "--model", f"pix2pix={f['truncated_model']}"], ExitCode.CORRUPT),
    "report": (lambda f: ["--results", str(f["root"]), "--out", str(f["root"] / "r.html"), "--config", str(f["bad_yaml"])], ExitCode.CORRUPT),
}


def test_every_verb_has_a_corrupt_input_case():
    from medgen.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices  # argparse keeps the sub-parsers here
    assert set(verbs) == set(CORRUPT_CASES)


@pytest.mark.parametrize("verb", sorted(CORRUPT_CASES))
def test_corrupt_input_is_one_line_with_its_exit_status(verb, bad_files, capsys):
    args, expected = CORRUPT_CASES[verb]
    before = {p: p.read_bytes() for p in bad_files["root"].rglob("*") if p.is_file()}
    code = main([verb, *args(bad_files)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected, err
    assert len(lines) == 1 and lines[0].startswith(f"medgen {verb}: error: "), err
    assert "Traceback" not in err and "weights_only" not in err
    assert str(bad_files["root"]) in err  # the message names the file or folder at fault
    assert {p: p.read_bytes() for p in before} == before  # inputs never written to
    assert {p for p in bad_files["root"].rglob("*") if p.is_file()} == set(before)  # nothing left behind


def test_a_real_process_prints_exactly_one_line(bad_files):
    """The same through a separate process: stderr holds the line and nothing else (no log noise)."""
    res = subprocess.run([*MEDGEN, "translate", *CORRUPT_CASES["translate"][0](bad_files)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == ExitCode.MODEL_FILE
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("medgen translate: error: "), res.stderr
    assert "this would run on load" not in res.stdout + res.stderr  # the pickle did not run


@pytest.mark.parametrize("verb", ["phantom", "ingest", "preprocess", "split"])
def test_data_preparation_errors_are_reported_without_torch(verb, bad_files):
    """Classifying a failure needs no deep-learning import: the data-preparation verbs report a bad
    input (its exit status) in a process that never loads torch (about 2-4 s per process)."""
    make_args, status = CORRUPT_CASES[verb]
    code = (
        "import sys\n"
        "from medgen.cli import main\n"
        f"status = main({[verb, *make_args(bad_files)]!r})\n"
        f"assert status == {int(status)}, status\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ------------------------------------------------------------------------------- class by class
def test_bad_json_and_unknown_option_are_usage_errors(tiny_cohort, tmp_path, capsys):
    base = ["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", TASK,
            "--model", "gan", "--out", str(tmp_path / "run"), "--steps", "1"]
    assert main([*base, "--options-json", '{"ngf": 8,}']) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith("medgen train: error: --options-json: not valid JSON")
    assert main([*base, "--options-json", '{"ngf": 8, "colour": 3}']) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "unknown option(s) 'colour' for model 'gan'" in err and "valid options: " in err and "ngf" in err
    no_source = ["train", *base[1:6], json.dumps({"name": "t", "kind": "translation", "target": "CT"}), *base[7:]]
    assert main(no_source) == ExitCode.USAGE
    assert "--task-json: a translation task needs 'source'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was built or written


def test_out_of_range_numbers_name_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--prep-root", ".", "--split", "s.json", "--task-json", TASK, "--model", "gan", "--out", str(tmp_path), "--steps", "0"])
    assert exc.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "argument --steps: must be at least 1, got 0" in err and "TrainConfig" not in err


def test_missing_input_names_the_path(tmp_path, capsys):
    code = main(["preprocess", "--input-dir", str(tmp_path / "nowhere"), "--modalities", "T1w", "--out", str(tmp_path / "prep")])
    assert code == ExitCode.MISSING
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder: permissions cannot be denied to it")
def test_unwritable_output_folder_is_refused_before_the_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["split", "--subjects", "a", "b", "c", "--out", str(locked / "s.json")])
    finally:
        locked.chmod(0o700)
    assert code == ExitCode.PERMISSION
    assert "permission denied" in capsys.readouterr().err.lower()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_permission_denied_by_the_system_is_its_own_class(capsys):
    # sysfs refuses new files even to root, so this holds where the tests run as root too
    code = main(["split", "--subjects", "a", "b", "c", "--out", "/sys/kernel/medgen-split.json"])
    err = capsys.readouterr().err
    assert code == ExitCode.PERMISSION, err
    # the path the user named, not the atomic writer's hidden temporary file beside it
    assert err.startswith("medgen split: error: /sys/kernel/medgen-split.json: Permission denied"), err
    assert "give this user access to it, or choose another path" in err


def test_output_paths_are_checked_before_the_work(bad_files, tmp_path, capsys):
    occupied = tmp_path / "occupied.nii.gz"
    occupied.mkdir()
    code = main(["translate", "--checkpoint", str(tmp_path / "not_read.pt"), "--input", str(bad_files["input"]), "--output", str(occupied)])
    assert code == ExitCode.OUTPUT  # before the (missing) checkpoint is even looked at
    assert "a folder already stands where --output should write a file" in capsys.readouterr().err
    code = main(["encoder", "--prep-root", str(tmp_path), "--split", str(tmp_path / "none.json"), "--modalities", "T1w",
                 "--out", str(bad_files["a_file"] / "enc.pt")])
    assert code == ExitCode.OUTPUT
    assert "which is a file, not a folder" in capsys.readouterr().err


def test_singular_affine_is_a_refused_file(tmp_path, capsys):
    path = nifti(tmp_path / "subject" / "T1w.nii")
    header = nib.load(str(path)).header
    header["srow_z"] = [0.0, 0.0, 0.0, 0.0]  # the third voxel axis collapses
    header["qform_code"], header["sform_code"] = 0, 1
    with open(path, "r+b") as fh:
        fh.write(header.binaryblock)
    (tmp_path / "subject" / "T1w.nii.gz").write_bytes(gzip.compress(path.read_bytes()))
    code = main(["preprocess", "--input-dir", str(tmp_path / "subject"), "--modalities", "T1w", "--out", str(tmp_path / "prep")])
    err = capsys.readouterr().err
    assert code == ExitCode.CORRUPT, err
    assert "T1w.nii.gz: the voxel-to-world matrix (sform/qform) is singular" in err
    assert not (tmp_path / "prep").exists()


def test_advice_names_flags_and_config_keys(tmp_path, capsys):
    data = np.ones((8, 8, 8), dtype=np.float32)
    data[0, 0, 0] = np.nan
    nifti(tmp_path / "subject" / "T1w.nii.gz", data)
    code = main(["preprocess", "--input-dir", str(tmp_path / "subject"), "--modalities", "T1w", "--out", str(tmp_path / "prep")])
    err = capsys.readouterr().err
    assert code == ExitCode.CORRUPT
    assert "--nonfinite zero" in err and "ingest.nonfinite: zero" in err
    assert not re.search(r"\b\w+='\w+'", err) and "set nonfinite" not in err  # no Python keyword arguments


def test_a_text_file_given_as_model_is_not_called_untrusted(tmp_path, capsys):
    (tmp_path / "model.pt").write_text("weights\n")
    assert main(["sample", "--checkpoint", str(tmp_path / "model.pt"), "--n", "1", "--out", str(tmp_path / "s")]) == ExitCode.MODEL_FILE
    err = capsys.readouterr().err
    assert "model.pt: not a readable trained model (model.pt): it is not a file written by torch.save" in err
    assert "untrust" not in err and "weights_only" not in err


def test_no_medgen_module_calls_torch_load_directly():
    """Every torch.load goes through medgen.io.torch_load.safe_load (weights-only, clear errors)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "medgen").rglob("*.py")
        if path.name != "torch_load.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(?<!`)torch\.load\(", line)  # ``torch.load(...)`` in a docstring is prose
    ]
    assert offenders == []


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch, tmp_path, capsys):
    import medgen.data.splits as splits

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(splits, "make_split", broken)
    code = main(["split", "--subjects", "a", "b", "c", "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == ExitCode.BUG
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert "this is a bug in medgen" in err and "bug report" in err


def test_exit_codes_are_distinct_and_in_the_readme():
    codes = [int(c) for c in ExitCode]
    assert len(codes) == len(set(codes))
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Exit codes"):]
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \|", table, flags=re.MULTILINE), f"exit code {int(code)} ({code.name}) not in the README"
