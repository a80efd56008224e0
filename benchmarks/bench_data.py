"""Study-scale data: a training job's peak RSS and loader throughput for 50 and 200 subjects.

Usage: python benchmarks/bench_data.py [--subjects 50 200] [--ram-mb 64] [--workers 2] [--steps 20]

Generates once a 200-subject phantom cohort at 2 mm, preprocessed, into ``benchmarks/out/data_cohort``
(T1w and T2w only, to keep it cheap; reused by later runs). For each cohort size it then runs, in a
fresh process each, (1) the data loader of a pix2pix T1w -> T2w training job alone (batch 16,
``--workers`` worker processes, one epoch's worth of batches up to 40) and (2) ``medgen train``
itself for ``--steps`` steps, with ``--cache-ram-mb`` and a disk cache under ``benchmarks/out``.
Reports each process's peak RSS (main process and largest worker), loader batches/s and the
model's images/s from the training log. Peak RSS should not grow with the number of subjects:
beyond ``ram_mb`` volumes live on disk (MONAI PersistentDataset). Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from medgen.io.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
COHORT = OUT / "data_cohort"
TASK = {"name": "t2", "kind": "translation", "source": "T1w", "target": "T2w"}
N_MAX = 200


def _make_one(index: int) -> str:
    import numpy as np

    from medgen.data.phantom import make_subject, write_subject_nifti
    from medgen.data.preprocess import PreprocessConfig, preprocess_subject

    phantom = make_subject(np.random.SeedSequence(2024).spawn(N_MAX)[index], index, spacing_mm=2.0)
    prep = COHORT / "prep" / phantom.subject
    if (prep / "normalisation.json").is_file():
        return phantom.subject
    folder = write_subject_nifti(phantom, COHORT / "raw")
    inputs = {m: folder / f"{m}.nii.gz" for m in ("T1w", "T2w")}
    preprocess_subject(inputs, prep, PreprocessConfig(), labels=folder / "labels.nii.gz")
    return phantom.subject


def ensure_cohort(workers: int) -> list[str]:
    done = sorted(p.parent.name for p in (COHORT / "prep").glob("*/normalisation.json")) if (COHORT / "prep").is_dir() else []
    if len(done) >= N_MAX:
        return done[:N_MAX]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        subjects = list(pool.map(_make_one, range(N_MAX)))
    print(f"cohort: {N_MAX} subjects at 2 mm generated and preprocessed in {time.perf_counter() - t0:.0f} s -> {COHORT}")
    return sorted(subjects)


LOADER = r"""
import json, resource, sys, time, torch
from medgen.data.datasets import CachePolicy, set_default_cache_policy
from medgen.data.tasks import task_dataset
from medgen.train.engine import TrainConfig, Trainer
prep, subjects, ram_mb, cache_dir, workers = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
set_default_cache_policy(CachePolicy(ram_mb=ram_mb, dir=cache_dir))
t0 = time.perf_counter()
ds = task_dataset(json.loads(sys.argv[6]), prep, subjects, model_paired=True, spatial_dims=2, patch_size=None, seed=0)
build = time.perf_counter() - t0
loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0))
n, t0 = 0, time.perf_counter()
for batch in loader:
    n += 1
    if n >= 40: break
rate = n / (time.perf_counter() - t0)
print(json.dumps({"items": len(ds), "build_s": build, "batches_per_s": rate,
                  "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_loader(subjects: list[str], args: argparse.Namespace, cache_dir: Path) -> dict:
    cmd = [sys.executable, "-c", LOADER, str(COHORT / "prep"), json.dumps(subjects), str(args.ram_mb), str(cache_dir), str(args.workers), json.dumps(TASK)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


TRAIN = r"""
import resource, runpy, sys
sys.argv = ["medgen"] + sys.argv[1:]
try:
    runpy.run_module("medgen.cli", run_name="__main__")
except SystemExit:
    pass
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def run_training(subjects: list[str], args: argparse.Namespace, cache_dir: Path) -> dict:
    work = OUT / f"data_train_{len(subjects)}"
    work.mkdir(parents=True, exist_ok=True)
    split = work / "splits.json"
    atomic_write_text(split, json.dumps({"splits": {"train": subjects, "val": [], "test": []}}))
    cmd = [sys.executable, "-c", TRAIN, "train", "--prep-root", str(COHORT / "prep"), "--split", str(split),
           "--task-json", json.dumps(TASK), "--model", "pix2pix", "--options-json", json.dumps({"ngf": 32, "num_downs": 4}),
           "--out", str(work / "run"), "--steps", str(args.steps), "--batch-size", "16", "--device", "cpu",
           "--log-every", str(args.steps), "--image-every", "0", "--ckpt-every", str(args.steps), "--no-resume",
           "--num-workers", str(args.workers), "--cache-ram-mb", str(args.ram_mb), "--cache-dir", str(cache_dir)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "MEDGEN_NO_PROGRESS": "1"})
    rss = [line for line in run.stdout.splitlines() if line.startswith("RSS")]
    if run.returncode != 0 or not rss:
        raise RuntimeError(f"training failed:\n{run.stderr[-3000:]}")
    log_file = work / "run" / "log.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.is_file() else []
    if not log:  # medgen train stopped with an error (its SystemExit is caught above to read the RSS)
        raise RuntimeError(f"training logged nothing:\n{run.stderr[-3000:]}")
    _, main_mb, child_mb = rss[-1].split()
    return {"rss_main_mb": float(main_mb), "rss_worker_mb": float(child_mb), "images_per_s": log[-1]["images_per_s"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--ram-mb", type=float, default=64.0, help="train.cache.ram_mb of the runs")
    parser.add_argument("--workers", type=int, default=2, help="train.num_workers of the runs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--generate-workers", type=int, default=2)
    args = parser.parse_args(argv)
    subjects = ensure_cohort(args.generate_workers)
    print(f"pix2pix T1w -> T2w slices, batch 16, cache ram_mb {args.ram_mb:g}, {args.workers} loader workers")
    print(f"{'subjects':>9}{'slices':>8}{'loader batch/s':>16}{'model img/s':>13}{'model batch/s':>15}"
          f"{'loader RSS main/worker MB':>27}{'train RSS main/worker MB':>26}")
    for n in args.subjects:
        cache_dir = OUT / "data_cache"  # shared: a subject's cache file is the same in every run
        loader = run_loader(subjects[:n], args, cache_dir)
        train = run_training(subjects[:n], args, cache_dir)
        print(f"{n:>9}{loader['items']:>8}{loader['batches_per_s']:>16.1f}{train['images_per_s']:>13.1f}{train['images_per_s'] / 16:>15.2f}"
              f"{loader['rss_main_mb']:>16.0f} / {loader['rss_worker_mb']:<8.0f}{train['rss_main_mb']:>15.0f} / {train['rss_worker_mb']:<8.0f}", flush=True)


if __name__ == "__main__":
    main()
