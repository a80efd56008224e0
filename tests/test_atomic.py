"""The one atomic writer: whole files or none, with the mode the user's umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_with
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
