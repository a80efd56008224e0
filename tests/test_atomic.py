"""The one atomic writer: whole files or none, with the mode the user's umask gives."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen.io.atomic import atomic_folder, atomic_write_bytes, atomic_write_json, atomic_write_with, current_umask, temp_target
from medgen.io.nifti import save_nifti
from medgen.train.checkpoint import atomic_save
from medgen.train.logging import image_grid, save_png


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_all(folder: Path) -> list[Path]:
    """One output of each kind of writer: raw bytes, JSON, NIfTI, checkpoint, PNG."""
    return [
        atomic_write_bytes(folder / "a.bin", b"x"),
        atomic_write_json(folder / "b.json", {"a": 1}),
        save_nifti(folder / "c.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4)),
        atomic_save({"w": torch.zeros(2)}, folder / "d.pt"),
        save_png(image_grid(torch.zeros(1, 1, 4, 4)), folder / "e.png"),
    ]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    for path in _write_all(tmp_path):
        assert _mode(path) == expected, f"{path.name}: {oct(_mode(path))}"
    assert not list(tmp_path.glob(".*.tmp"))


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    target = atomic_write_bytes(tmp_path / "x.json", b"old")

    def boom(fh):
        fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_with(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# --------------------------------------------------------------------------------------------
# The policy: mode, fsync, no-clobber, folders


def test_umask_is_read_without_changing_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    if Path("/proc/self/status").exists():  # Linux: read, never set (another thread may be creating a file)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "umask", lambda mask: pytest.fail("the umask was changed to read it"))
            assert current_umask() == 0o027


def test_temp_file_is_private_while_written_and_names_its_target(tmp_path, umask):
    umask(0o002)
    seen = {}

    def write(fh):
        (tmp,) = tmp_path.iterdir()
        seen["mode"] = _mode(tmp)
        seen["target"] = temp_target(tmp.name)
        fh.write(b"x")

    atomic_write_with(tmp_path / "x.nii.gz", write)
    assert seen == {"mode": 0o600, "target": "x.nii.gz"}
    assert _mode(tmp_path / "x.nii.gz") == 0o664
    assert temp_target("x.nii.gz") is None


@pytest.mark.parametrize("durable, synced", [(False, 0), (True, 2)])
def test_fsync_only_for_durable_writes(tmp_path, monkeypatch, durable, synced):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    atomic_write_bytes(tmp_path / "a.bin", b"x", durable=durable)
    assert len(calls) == synced  # the file, then its folder


def test_checkpoints_are_durable(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    atomic_save({"w": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    assert len(calls) == 2


@pytest.mark.parametrize("hard_links", [True, False])
def test_exclusive_write_never_replaces_a_file(tmp_path, monkeypatch, umask, hard_links):
    umask(0o022)
    if not hard_links:  # a file system without hard links takes the fallback
        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    new = atomic_write_bytes(tmp_path / "IM1", b"new", exclusive=True)
    assert new.read_bytes() == b"new" and _mode(new) == 0o644
    with pytest.raises(FileExistsError):
        atomic_write_bytes(new, b"other", exclusive=True)
    assert new.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IM1"]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o755), (0o077, 0o700)])
def test_folder_replaces_the_previous_one_whole_with_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    target = tmp_path / "sub-01"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with atomic_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".sub-01.")
        (tmp / "new").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert _mode(target) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01"]


def test_failed_folder_leaves_the_previous_one_and_no_temp(tmp_path):
    target = tmp_path / "sub-01"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "new").write_bytes(b"partial")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01"]


def test_dicom_slices_honour_the_umask_and_are_never_overwritten(tmp_path, umask):
    from medgen.io.dicom_write import write_dicom_series

    umask(0o077)
    paths = write_dicom_series(np.zeros((4, 4, 2)), np.eye(4), tmp_path, modality="CT", series_description="x",
                               series_number=1)
    assert [_mode(p) for p in paths] == [0o600, 0o600]
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------
# One writer: no other module renames temp files into place or writes an output directly

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("medgen", "pipeline", "benchmarks")

#: What only medgen/io/atomic.py may do, and the direct writes of a final file it replaces.
RULES = {
    "rename into place": r"\bos\.(replace|rename|renames)\(|\.rename\(",
    "fsync": r"\bos\.fsync\(",
    "own temp file": r"\b(mkstemp|mkdtemp|NamedTemporaryFile)\(",
    "open for writing": r"\bopen\([^)]*,\s*[\"'][wxa]b?\+?[\"']",
    "pathlib write": r"\.(write_text|write_bytes)\(",
    "library writes a path": r"\bnib\.save\(|\.to_filename\(|WriteImage\(|\bnp\.(save|savez|savez_compressed|savetxt)\(|"
                             r"\bimsave\((?!fh\b)|savefig\((?!fh\b|buffer\b)|torch\.save\([^,]+,\s*(?!\s|fh\b|buffer\b)|"
                             r"\.save_as\(|\bdcmwrite\(",
    "copy into place": r"\bshutil\.(move|copy|copy2|copyfile|copytree)\(",
}

#: (file, text of the line) -> why it is not a write of an output that must appear whole.
ALLOWED = {
    ("medgen/train/fingerprint.py", ".rename(out_dir / _stale_name("): "moves the files of an earlier run aside; writes nothing",
    ("medgen/train/logging.py", 'open(log_path, "a"'): "log.jsonl is appended line by line while training runs",
    ("medgen/eval/radiomics_features.py", "sitk.WriteImage("): "scratch inputs of pyradiomics in a temporary folder",
}


def _violations() -> list[str]:
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "medgen/io/atomic.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if any(rel == file and text in line for file, text in ALLOWED):
                    continue
                for rule, pattern in RULES.items():
                    if re.search(pattern, line):
                        found.append(f"{rel}:{number}: {rule}: {line.strip()}")
    return found


def test_every_output_goes_through_the_one_atomic_writer():
    assert _violations() == []


def test_the_scan_finds_a_hand_written_atomic_write(tmp_path, monkeypatch):
    fake_root = tmp_path
    (fake_root / "medgen").mkdir()
    (fake_root / "medgen" / "x.py").write_text('tmp.write_bytes(b"")\nos.replace(tmp, path)\nfig.savefig(path)\n')
    monkeypatch.setitem(globals(), "ROOT", fake_root)
    assert [v.split(": ")[1] for v in _violations()] == ["pathlib write", "rename into place", "library writes a path"]
