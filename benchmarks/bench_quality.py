"""Translation quality per training budget: a model's test MAE beside a voxel-wise lookup baseline.

Usage:
  python benchmarks/bench_quality.py --cohort DIR --build             # phantom + preprocessing as the demo
  python benchmarks/bench_quality.py --cohort DIR --task ct --model pix2pix --steps 600 \\
      --batch-size 8 --options '{"ngf": 16, "num_downs": 6, "ndf": 16}' [--val-every 100] [--profile]

``--build`` writes the demo's cohort (20 phantom subjects at 2 mm, preprocessed to 64^3 voxels of
3.75 mm, split 14/3/3 by subject with seed 0) as NIfTI (the demo goes through DICOM; the
volumes are the same up to DICOM's integer storage). A run trains one model through the real
training path (:func:`medgen.train.run.train_task`), translates each test subject's whole
scanner-space T1w volume with ``medgen translate``'s function, and scores it as the evaluation
does (MAE inside the body mask; HU for CT, the subject's normalised scale for T2w).

Baseline, in the same command: a voxel-wise lookup from normalised T1w (128 bins on [-1, 1]) to
the target, the per-bin median over the training subjects' body voxels (the MAE-optimal constant
per bin), applied to the test subjects at their scanner resolution. The ratio model / lookup is
printed. ``--profile`` adds where a training step's arithmetic goes (FLOPs per network from
``torch.utils.flop_counter``), the step time, the data loading time per batch, and the time of
one validation and one checkpoint write. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medgen.data.normalise import apply_normalisation, is_ct
from medgen.data.preprocess import load_normalisation
from medgen.data.splits import read_split
from medgen.eval.body_mask import body_mask
from medgen.io.nifti import load_nifti

TASKS = {"ct": ("T1w", "CT"), "t2w": ("T1w", "T2w")}
BINS = 128


def build_cohort(root: Path, subjects: int = 20) -> None:
    """The demo's phantom and preprocessing (configs/default.yaml), without DICOM."""
    from medgen.data.phantom import generate_cohort
    from medgen.data.preprocess import PreprocessConfig, preprocess_subject
    from medgen.data.splits import make_split, write_split

    ids = generate_cohort(root / "phantom", n_subjects=subjects, seed=0, spacing_mm=2.0, write_dicom=False)
    cfg = PreprocessConfig(spacing=(3.75,) * 3, size=(64, 64, 64), mr_norm="percentile", ct_window=(-1024.0, 3000.0))
    for s in ids:
        src = root / "phantom" / "nifti" / s
        preprocess_subject({m: src / f"{m}.nii.gz" for m in ("T1w", "T2w", "CT")}, root / "prep" / s, cfg, labels=src / "labels.nii.gz")
    write_split(make_split(ids, fractions=(0.7, 0.15, 0.15), seed=0), root / "splits.json")


# ------------------------------------------------------------------------------------ scoring
def _subject_arrays(cohort: Path, subject: str, source: str, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised source, target on the evaluation scale, body mask) at scanner resolution."""
    nifti = cohort / "phantom" / "nifti" / subject
    mappings = load_normalisation(cohort / "prep" / subject)
    src = apply_normalisation(load_nifti(nifti / f"{source}.nii.gz").array, mappings[source])
    truth = load_nifti(nifti / f"{target}.nii.gz").array
    mask = body_mask(truth, "CT" if is_ct(target) else "MR")
    return src, _eval_scale(truth, target, mappings), mask


def _eval_scale(array: np.ndarray, target: str, mappings: dict) -> np.ndarray:
    """HU for CT; the subject's own normalised scale for MR (as medgen.eval.translation_run does)."""
    return np.asarray(array, dtype=np.float64) if is_ct(target) else apply_normalisation(array, mappings[target]).astype(np.float64)


def _bins(x: np.ndarray) -> np.ndarray:
    return np.clip(((np.clip(x, -1.0, 1.0) + 1.0) / 2.0 * BINS).astype(np.int64), 0, BINS - 1)


def fit_lookup(cohort: Path, subjects: list[str], source: str, target: str) -> np.ndarray:
    """Per-bin median of the target over the training subjects' body voxels (global median where a bin is empty)."""
    xs, ys = [], []
    for s in subjects:
        src, truth, mask = _subject_arrays(cohort, s, source, target)
        xs.append(_bins(src[mask]))
        ys.append(truth[mask])
    x, y = np.concatenate(xs), np.concatenate(ys)
    table = np.full(BINS, np.median(y))
    for b in np.unique(x):
        table[b] = np.median(y[x == b])
    return table


def score(cohort: Path, subjects: list[str], source: str, target: str, predict) -> list[float]:
    """MAE inside the body mask per test subject; ``predict(subject, normalised_source) -> prediction on the eval scale``."""
    maes = []
    for s in subjects:
        src, truth, mask = _subject_arrays(cohort, s, source, target)
        pred = predict(s, src)
        maes.append(float(np.abs(pred - truth)[mask].mean()))
    return maes


def model_predictor(cohort: Path, model_path: Path, target: str, work: Path):
    from medgen.models import artifact
    from medgen.synth.translate import translate_volume

    trained = artifact.load(model_path)

    def predict(subject: str, _src: np.ndarray) -> np.ndarray:
        out = work / f"{subject}_{target}.nii.gz"
        translate_volume(trained, cohort / "phantom" / "nifti" / subject / "T1w.nii.gz", out, progress=False)
        return _eval_scale(load_nifti(out).array, target, load_normalisation(cohort / "prep" / subject))

    return predict


# ---------------------------------------------------------------------------------- profiling
def profile(cohort: Path, task: dict, model_name: str, options: dict, batch_size: int, out: Path) -> dict:
    """FLOPs per network of one training step, step and loading times, validation and checkpoint time."""
    from torch.utils.flop_counter import FlopCounterMode

    from medgen.data.preprocess import median_normalisation
    from medgen.data.tasks import task_dataset
    from medgen.models.registry import build_model, is_paired
    from medgen.train.engine import TrainConfig, Trainer
    from medgen.train.run import _fill_shape_options, _translation_validator

    split = read_split(cohort / "splits.json")
    prep = cohort / "prep"
    ds = task_dataset(task, prep, split["train"], model_paired=is_paired(model_name), spatial_dims=2, patch_size=None, seed=0)
    options = _fill_shape_options(model_name, dict(options, spatial_dims=2), ds[0], None)
    model = build_model(model_name, **options)
    cfg = TrainConfig(out_dir=out, max_steps=10**6, batch_size=batch_size, image_every=0, val_every=1)
    mappings, _ = median_normalisation(prep, split["train"], [task["source"], task["target"]])
    validator = _translation_validator(task, prep, split["val"], mappings, 2, None, cfg)
    trainer = Trainer(model, ds, cfg, validator=validator)
    batches = iter(trainer.loader)
    t = time.perf_counter()
    loaded = [next(batches) for _ in range(10)]
    load_s = (time.perf_counter() - t) / 10
    trainer._initialize(loaded[0])
    trainer._train_step(loaded[0])  # warm-up
    counter = FlopCounterMode(display=False, depth=2)
    with counter:
        trainer._train_step(loaded[1])
    per_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    # networks are called from training_step, so each appears under its class name (two of one class add up)
    nets = {name: sum(v.values()) for name, v in per_module.items() if "." not in name and name != "Global"}
    t = time.perf_counter()
    for b in loaded[2:]:
        trainer._train_step(b)
    step_s = (time.perf_counter() - t) / len(loaded[2:])
    t = time.perf_counter()
    trainer.model.eval()
    with torch.no_grad():
        validator(trainer.model)
    trainer.model.train()
    val_s = time.perf_counter() - t
    t = time.perf_counter()
    trainer.save_checkpoint()
    ckpt_s = time.perf_counter() - t
    return {
        "gflop_per_step": total / 1e9,
        "gflop_share": {k: round(v / total, 3) for k, v in nets.items()},
        "params_M": {n: round(sum(p.numel() for p in m.parameters()) / 1e6, 3) for n, m in model.named_children() if any(True for _ in m.parameters())},
        "step_s": step_s,
        "images_per_s": batch_size / step_s,
        "gflop_per_s": total / 1e9 / step_s,
        "load_s_per_batch": load_s,
        "validation_s": val_s,
        "checkpoint_s": ckpt_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--build", action="store_true", help="write the demo cohort into --cohort and stop")
    p.add_argument("--task", choices=sorted(TASKS), default="ct")
    p.add_argument("--model", default="pix2pix")
    p.add_argument("--options", default="{}", help="model options (JSON)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--val-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="profile one training step instead of training")
    p.add_argument("--baseline-only", action="store_true")
    p.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.build:
        build_cohort(args.cohort)
        return
    source, target = TASKS[args.task]
    task = {"name": f"t1w_to_{args.task}", "kind": "translation", "source": source, "target": target}
    split = read_split(args.cohort / "splits.json")
    options = json.loads(args.options)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        if args.profile:
            print(json.dumps({"model": args.model, "task": args.task, "batch": args.batch_size, "options": options,
                              **profile(args.cohort, task, args.model, options, args.batch_size, out)}, indent=1))
            return
        table = fit_lookup(args.cohort, split["train"], source, target)
        lookup = score(args.cohort, split["test"], source, target, lambda s, src: table[_bins(src)])
        row = {"task": args.task, "lookup_mae": round(float(np.mean(lookup)), 3), "lookup_per_subject": [round(m, 3) for m in lookup]}
        if not args.baseline_only:
            from medgen.train.engine import TrainConfig
            from medgen.train.run import train_task

            cfg = TrainConfig(out_dir=out, max_steps=args.steps, batch_size=args.batch_size, seed=args.seed, image_every=0,
                              ckpt_every=max(args.steps, 1), log_every=max(args.steps // 10, 1), val_every=args.val_every)
            t, cpu = time.perf_counter(), time.process_time()
            path = train_task(prep_root=args.cohort / "prep", split_path=args.cohort / "splits.json", task=task,
                              model_name=args.model, options=options, train_cfg=cfg, resume=False)
            train_s, train_cpu_s = time.perf_counter() - t, time.process_time() - cpu
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            rates = [r["images_per_s"] for r in log if "images_per_s" in r]
            maes = score(args.cohort, split["test"], source, target, model_predictor(args.cohort, path, target, Path(tmp)))
            row.update(model=args.model, options=options, steps=args.steps, batch=args.batch_size, train_s=round(train_s, 1),
                       train_core_s=round(train_cpu_s, 1),
                       images_per_s=round(float(np.median(rates)), 1), threads=torch.get_num_threads(),
                       model_mae=round(float(np.mean(maes)), 3), model_per_subject=[round(m, 3) for m in maes],
                       ratio_to_lookup=round(float(np.mean(maes) / np.mean(lookup)), 3),
                       val_curve=[(r["step"], round(r["val/mae"], 3)) for r in log if "val/mae" in r])
        print(json.dumps(row))


if __name__ == "__main__":
    main()
