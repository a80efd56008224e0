"""Time DICOM -> .nii.gz conversion: medgen vs dcm2niix vs dicom2nifti on one 200-slice CT.

Run: ``python benchmarks/bench_ingest.py [--slices 200] [--size 256] [--repeats 3]``.
Prints best-of-N seconds per tool, medgen's split (scan / load / save) and the ratios
medgen/dcm2niix and medgen/dicom2nifti.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from medgen.io.dicom_series import load_series, scan_dicom
from medgen.io.dicom_write import write_dicom_series
from medgen.io.nifti import save_nifti


def make_series(folder: Path, n_slices: int, size: int) -> None:
    """A CT-like phantom (air, body ellipse, bone ring) written as one file per slice."""
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.6) ** 2)
    plane = np.where(r < 1, 40.0, -1000.0) + np.where((r > 0.85) & (r < 1), 960.0, 0.0)
    rng = np.random.default_rng(0)
    vol = plane[:, :, None] + rng.normal(0, 10, (size, size, n_slices)).round()
    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    write_dicom_series(vol, affine, folder, modality="CT", series_description="bench", series_number=1)


def medgen_convert(src: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    (series,) = scan_dicom([src]).series
    t1 = time.perf_counter()
    loaded = load_series(series)
    t2 = time.perf_counter()
    save_nifti(out / "medgen.nii.gz", loaded.array, loaded.affine)
    t3 = time.perf_counter()
    return {"scan": t1 - t0, "load": t2 - t1, "save": t3 - t2}


def medgen_convert_int16(src: Path, out: Path) -> dict[str, float]:
    """Same, but written as int16 (exact for integer HU): halves the bytes nibabel must gzip."""
    t0 = time.perf_counter()
    (series,) = scan_dicom([src]).series
    loaded = load_series(series)
    t1 = time.perf_counter()
    save_nifti(out / "medgen.nii.gz", loaded.array, loaded.affine, dtype=np.int16)
    return {"scan+load": t1 - t0, "save": time.perf_counter() - t1}


def dcm2niix_convert(src: Path, out: Path) -> None:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    subprocess.run([exe, "-z", "y", "-f", "%s", "-o", str(out), str(src)], check=True, capture_output=True)


def dicom2nifti_convert(src: Path, out: Path) -> None:
    import dicom2nifti

    dicom2nifti.convert_directory(str(src), str(out), compression=True, reorient=False)


def best_of(fn: Callable[[Path, Path], object], src: Path, work: Path, repeats: int) -> tuple[float, object]:
    best, detail = float("inf"), None
    for n in range(repeats):
        out = work / f"{fn.__name__}_{n}"
        out.mkdir()
        t0 = time.perf_counter()
        result = fn(src, out)
        elapsed = time.perf_counter() - t0
        if elapsed < best:
            best, detail = elapsed, result
    return best, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "dicom"
        make_series(src, args.slices, args.size)
        t_medgen, split = best_of(medgen_convert, src, work, args.repeats)
        t_int16, split16 = best_of(medgen_convert_int16, src, work, args.repeats)
        t_d2n, _ = best_of(dcm2niix_convert, src, work, args.repeats)
        t_d2nii, _ = best_of(dicom2nifti_convert, src, work, args.repeats)
        print(f"series: {args.slices} slices of {args.size}x{args.size} CT, best of {args.repeats}")
        print(f"medgen      {t_medgen:7.3f} s  (" + ", ".join(f"{k} {v:.3f} s" for k, v in split.items()) + ")")
        print(f"medgen i16  {t_int16:7.3f} s  (" + ", ".join(f"{k} {v:.3f} s" for k, v in split16.items()) + ")")
        print(f"dcm2niix    {t_d2n:7.3f} s")
        print(f"dicom2nifti {t_d2nii:7.3f} s")
        print(f"medgen/dcm2niix    {t_medgen / t_d2n:6.2f}")
        print(f"medgen/dicom2nifti {t_medgen / t_d2nii:6.2f}")
        print(f"medgen(int16)/dcm2niix {t_int16 / t_d2n:6.2f}")


if __name__ == "__main__":
    main()
