"""Time the phantom cohort: per-subject seconds and the cost of DICOM writing relative to NIfTI.

Usage: python benchmarks/bench_phantom.py [--subjects 20] [--spacing 2] [--out DIR]

Two measurements: (1) stage timings in one process (make / NIfTI / DICOM per subject, hence the
DICOM:NIfTI ratio), over a few subjects; (2) wall time of ``generate_cohort`` for the whole cohort
with its default workers, as the ``medgen phantom`` verb runs it. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medgen.data.phantom import _template_maps, generate_cohort, make_subject, write_subject_dicom, write_subject_nifti


def stage_timings(out: Path, n: int, spacing: float, seed: int) -> dict[str, list[float]]:
    """Seconds per stage for ``n`` subjects, serially in this process."""
    times: dict[str, list[float]] = {"make": [], "nifti": [], "dicom": []}
    children = np.random.SeedSequence(seed).spawn(n)
    for i in range(n):
        t0 = time.perf_counter()
        phantom = make_subject(children[i], i, spacing)
        t1 = time.perf_counter()
        write_subject_nifti(phantom, out)
        t2 = time.perf_counter()
        write_subject_dicom(phantom, out, uid_entropy=["bench"])
        t3 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[key].append(value)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--stage-subjects", type=int, default=3, help="subjects timed stage by stage")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        t = time.perf_counter()
        _template_maps(args.spacing)
        print(f"template load (once per process): {time.perf_counter() - t:.2f} s")

        times = stage_timings(root / "stages", args.stage_subjects, args.spacing, args.seed)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"per subject, serial, median of {args.stage_subjects} (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
        print(f"DICOM / NIfTI writing time ratio: {med['dicom'] / med['nifti']:.2f}")

        t = time.perf_counter()
        generate_cohort(root / "cohort", args.subjects, args.seed, spacing_mm=args.spacing)
        wall = time.perf_counter() - t
        print(f"generate_cohort: {args.subjects} subjects at {args.spacing:g} mm with DICOM in {wall:.1f} s "
              f"({wall / args.subjects:.2f} s per subject wall, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
