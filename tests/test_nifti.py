"""NIfTI reading/writing: the faults of FAULTS.md rows 7-9 and the geometry contract."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medgen.io import atomic, nifti
from medgen.io.nifti import NiftiError, load_nifti, save_nifti

OBLIQUE = np.array(
    [
        [0.9, -0.2, 0.1, -80.0],
        [0.2, 0.95, 0.0, -100.0],
        [-0.1, 0.0, 2.5, -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _write(path, data, affine, *, qform=None, dtype=None, header_text=None):
    img = nib.Nifti1Image(data if dtype is None else data.astype(dtype), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine if qform is None else qform, code=1)
    if header_text:
        img.header["descrip"] = header_text.encode()
    nib.save(img, str(path))
    return path


def test_roundtrip_keeps_values_and_geometry(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    # a pure rotation+zoom affine so that the qform can represent it exactly
    affine = np.diag([1.2, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    save_nifti(tmp_path / "a.nii.gz", data, affine)
    vol = load_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, [1.2, 0.8, 2.5])
    img = nib.load(str(tmp_path / "a.nii.gz"))
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
    assert img.get_data_dtype() == np.float32


def test_qform_sform_disagreement_is_refused_or_warned(tmp_path):
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 5.0
    path = _write(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4), qform=shifted)
    with pytest.raises(NiftiError, match=r"x\.nii\.gz.*qform and sform disagree by up to 5\.000 mm"):
        load_nifti(path)
    vol = load_nifti(path, form_mismatch="warn")
    np.testing.assert_allclose(vol.affine, np.eye(4))
    assert any("used the sform" in w for w in vol.warnings)


def test_nonfinite_voxels(tmp_path):
    data = np.ones((3, 3, 3), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    path = _write(tmp_path / "n.nii.gz", data, np.eye(4))
    with pytest.raises(NiftiError, match="2 NaN/inf voxels"):
        load_nifti(path)
    vol = load_nifti(path, nonfinite="zero")
    assert np.isfinite(vol.array).all() and vol.array[0, 0, 0] == 0
    assert "replaced 2 NaN/inf" in vol.warnings[0]


def test_zero_pixdim_is_refused(tmp_path):
    path = _write(tmp_path / "z.nii", np.zeros((3, 3, 3), np.float32), np.eye(4))
    # nibabel repairs a zero pixdim when saving, so patch the header bytes as a broken writer would:
    # pixdim is float32[8] at byte 76 of a NIfTI-1 header; pixdim[2] is the y voxel size.
    raw = bytearray(path.read_bytes())
    raw[76 + 2 * 4 : 76 + 3 * 4] = np.float32(0.0).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match="zero or negative"):
        load_nifti(path)


def test_trailing_singleton_is_squeezed(tmp_path):
    path = _write(tmp_path / "s.nii.gz", np.ones((3, 4, 5, 1), np.float32), np.eye(4))
    assert load_nifti(path).array.shape == (3, 4, 5)


def test_truncated_file_names_the_file(tmp_path):
    path = _write(tmp_path / "t.nii.gz", np.ones((20, 20, 20), np.float32), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NiftiError, match=r"t\.nii\.gz.*truncated"):
        load_nifti(path)


def test_float_data_under_int16_header_comes_back_as_float(tmp_path):
    # A file written as int16 with a scale factor: medgen reads the scaled values as float32 ...
    img = nib.Nifti1Image(np.array([[[0.5, 1.5], [2.5, -3.25]]], np.float32), np.eye(4))
    img.set_data_dtype(np.int16)
    nib.save(img, str(tmp_path / "i.nii.gz"))
    vol = load_nifti(tmp_path / "i.nii.gz")
    assert vol.array.dtype == np.float32
    # ... and writes float32, never re-quantising them or turning NaN into 0.
    data = np.array([[[0.123456, np.nan]]], np.float32)
    save_nifti(tmp_path / "o.nii.gz", data, np.eye(4))
    back = nib.load(str(tmp_path / "o.nii.gz")).get_fdata(dtype=np.float32)
    assert back[0, 0, 0] == np.float32(0.123456) and np.isnan(back[0, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        save_nifti(tmp_path / "bad.nii.gz", data, np.eye(4), dtype=np.int16)
    with pytest.raises(ValueError, match="quantise"):
        save_nifti(tmp_path / "bad.nii.gz", np.array([[[0.5]]]), np.eye(4), dtype=np.uint8)


def test_saved_header_carries_nothing_from_the_source(tmp_path):
    src = _write(tmp_path / "src.nii.gz", np.ones((3, 3, 3), np.float32), np.eye(4), header_text="DOE^JANE 19700101")
    vol = load_nifti(src)
    out = save_nifti(tmp_path / "out.nii.gz", vol.array, vol.affine)
    assert b"DOE^JANE" not in gzip.decompress(out.read_bytes())


def test_oblique_affine_survives_in_sform_and_qform(tmp_path):
    # Orthonormalise the direction part so that the qform can hold it exactly.
    u, _, vt = np.linalg.svd(OBLIQUE[:3, :3])
    affine = OBLIQUE.copy()
    affine[:3, :3] = (u @ vt) @ np.diag([0.9, 1.1, 2.5])
    save_nifti(tmp_path / "o.nii.gz", np.zeros((4, 5, 6)), affine)
    img = nib.load(str(tmp_path / "o.nii.gz"))
    np.testing.assert_allclose(img.get_sform(), affine, atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-4)


def test_no_partial_file_left_on_failure(tmp_path, monkeypatch):
    real_write = atomic.atomic_write_bytes

    def failing_write(path, data):
        # the real atomic writer, failing after half the bytes are on disk
        def boom(*_):
            raise OSError("disk full")

        monkeypatch.setattr(atomic.os, "replace", boom)
        return real_write(path, data[: len(data) // 2])

    monkeypatch.setattr(nifti, "atomic_write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), np.eye(4))
    assert list(tmp_path.iterdir()) == []
