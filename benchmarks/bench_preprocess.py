"""Time one preprocessing job as the workflow runs it (a fresh ``medgen preprocess`` process per
subject) beside the cost of importing MONAI in a fresh process, which such a job paid while its
resampling and mask came from MONAI transforms (``medgen/data/grid.py`` computes the same grid).

Run: ``python benchmarks/bench_preprocess.py [--repeats 3]``. Writes a phantom subject (T1w, T2w,
CT at 2 mm, the demo's) to a temporary folder, preprocesses it onto the demo's 64^3 grid of
3.75 mm, and prints best-of-N wall seconds of: the whole job, ``import monai`` alone and ``import
torch`` alone (each a fresh interpreter), and the ratio (job + MONAI import) / job: how much longer
every job of this kind took when it imported MONAI. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medgen.data.phantom import make_subject, write_subject_nifti

#: the demo's preprocessing settings (configs/default.yaml)
SETTINGS = {"size": [64, 64, 64], "spacing": [3.75, 3.75, 3.75], "mr_norm": "percentile", "ct_window": [-1024.0, 3000.0]}


def best_wall(command: list[str], repeats: int) -> float:
    """Fastest wall time of ``repeats`` runs of ``command`` (each a fresh process)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subject = write_subject_nifti(make_subject(np.random.SeedSequence(0), 0, spacing_mm=2.0), Path(tmp))
        job = [sys.executable, "-m", "medgen.cli", "preprocess", "--input-dir", str(subject), "--modalities", "T1w", "T2w", "CT",
               "--out", str(Path(tmp) / "prep"), "--settings", json.dumps(SETTINGS)]
        job_s = best_wall(job, args.repeats)
        monai_s = best_wall([sys.executable, "-c", "import monai"], args.repeats)
        torch_s = best_wall([sys.executable, "-c", "import torch"], args.repeats)
    print(f"preprocessing job (fresh process, one subject, 3 modalities): {job_s:.2f} s")
    print(f"import monai (fresh process): {monai_s:.2f} s   import torch alone: {torch_s:.2f} s")
    print(f"(job + MONAI import) / job: {(job_s + monai_s) / job_s:.1f}x")


if __name__ == "__main__":
    main()
