"""Reading a results folder for the report: every file is found through :mod:`medgen.layout`.

Nothing here fails on a partial or damaged folder: a missing or unreadable file reads as absent
(and is logged), so that each section shows what there is.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from medgen import layout

log = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; ``None`` when missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return None


def get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or ``None`` when any level is missing."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    return path.name.removesuffix(".gz").removesuffix(".nii")


def modality_info(nifti: Path) -> dict[str, Any]:
    """Shape, spacing, source and warnings of a NIfTI file, from its sidecar or its header."""
    sidecar_path = nifti.with_name(nifti_stem(nifti) + ".json")
    sidecar = read_json(sidecar_path) if sidecar_path.is_file() else None
    info = dict(sidecar) if isinstance(sidecar, dict) else {}
    if "shape" not in info or "spacing" not in info:
        try:
            import nibabel as nib

            img = nib.load(str(nifti))
            info.setdefault("shape", list(img.shape))
            info.setdefault("spacing", [float(z) for z in img.header.get_zooms()[:3]])
        except Exception as exc:
            info.setdefault("warnings", []).append(f"cannot read header: {exc}")
    return info


def read_training_log(path: Path) -> list[dict[str, Any]]:
    """The records of a training ``log.jsonl``; none when absent or unreadable."""
    from medgen.report.plots import read_log

    try:
        return read_log(path) if path.is_file() else []
    except OSError:
        return []


def last_sample_grid(model_dir: Path) -> Path | None:
    """The training sample grid of the highest step (``samples/step_<n>.png``)."""

    def step(path: Path) -> int:
        digits = "".join(c for c in path.stem if c.isdigit())
        return int(digits) if digits else -1

    grids = sorted((model_dir / "samples").glob("step_*.png"), key=step)
    return grids[-1] if grids else None


def count_rows(tsv: Path) -> int | None:
    """Data rows of a TSV with a header; ``None`` when unreadable."""
    try:
        lines = [line for line in tsv.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    return max(len(lines) - 1, 0)


def _first_row(tsv: Path) -> dict[str, str] | None:
    try:
        with tsv.open(newline="") as handle:
            return next(csv.DictReader(handle, delimiter="\t"), None)
    except (OSError, csv.Error):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def benchmark_times(results: Path) -> dict[str, dict[str, float]]:
    """Per rule: ``jobs``, ``total_s``, ``max_s`` and ``max_rss_mb`` from ``benchmarks/<rule>/**/*.tsv``."""
    times: dict[str, dict[str, float]] = {}
    for rule in layout.subfolders(layout.benchmarks_dir(results)):
        seconds, rss = [], []
        for tsv in sorted(rule.rglob("*.tsv")):
            row = _first_row(tsv) or {}
            s = _float(row.get("s"))
            if s is not None:
                seconds.append(s)
            r = _float(row.get("max_rss"))
            if r is not None:
                rss.append(r)
        if seconds:
            times[rule.name] = {"jobs": len(seconds), "total_s": sum(seconds), "max_s": max(seconds), "max_rss_mb": max(rss) if rss else math.nan}
    return times


def load_config(results: Path) -> dict[str, Any]:
    """The study's configuration copy (``results/config.yaml``) as a dict; empty when absent or unreadable."""
    path = Path(layout.config_copy(results))
    if not path.is_file():
        return {}
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except Exception as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Results:
    """A results folder and its configuration as the report's sections read them, with a scratch
    folder for the pictures drawn for the report."""

    results: Path
    config: dict[str, Any]
    work: Path
    _count: int = 0
    _metrics: list[tuple[Path, dict[str, Any]]] | None = field(default=None, repr=False)

    def png(self, stem: str) -> Path:
        """A fresh path for a picture drawn for the report."""
        self._count += 1
        return self.work / f"{self._count:03d}_{stem}.png"

    def task_spec(self, task: str) -> dict[str, Any]:
        """The configuration of ``task`` (empty when the configuration does not name it)."""
        spec = get(self.config, "tasks", task)
        return spec if isinstance(spec, dict) else {}

    def modality_order(self, found: Sequence[str] | set[str]) -> list[str]:
        """``found`` modalities in the configured order, others after them alphabetically."""
        configured = [m for m in (self.config.get("modalities") or []) if isinstance(m, str)]
        found = set(found)
        return [m for m in configured if m in found] + sorted(found - set(configured))

    # ----------------------------------------------------------------------- data

    def nifti_images(self) -> dict[str, dict[str, Path]]:
        """Subject -> modality -> ingested image, for every subject with at least one image."""
        images = {s.name: {nifti_stem(p): p for p in sorted(s.glob("*.nii*"))} for s in layout.subfolders(layout.nifti_dir(self.results))}
        return {s: v for s, v in images.items() if v}

    def nifti_image(self, subject: str, modality: str) -> Path:
        return Path(layout.nifti_image(self.results, subject, modality))

    def ingest_issues(self) -> list[str]:
        """``<subject>: skipped|failed <what>: <reason>`` from every subject's ingest summary."""
        from medgen.io.ingest import IngestSummary

        issues = []
        for subject in layout.subfolders(layout.nifti_dir(self.results)):
            path = Path(layout.ingest_summary(self.results, subject.name))
            data = read_json(path) if path.is_file() else None
            if not isinstance(data, dict):
                continue
            summary = IngestSummary.from_dict(data)
            issues += [f"{subject.name}: skipped {what}: {reason}" for what, reason in summary.skipped]
            issues += [f"{subject.name}: failed {what}: {reason}" for what, reason in summary.failed]
        return issues

    def prep_images(self) -> dict[str, dict[str, Path]]:
        """Subject -> name (modality, ``mask``, ``labels``) -> preprocessed image."""
        return {s.name: {nifti_stem(p): p for p in sorted(s.glob("*.nii.gz"))} for s in layout.subfolders(layout.prep_dir(self.results))}

    def split(self) -> dict[str, list[str]]:
        """Split name -> its subjects (empty before the split exists)."""
        path = Path(layout.splits_file(self.results))
        splits = get(read_json(path) if path.is_file() else None, "splits")
        return {k: list(v) for k, v in splits.items() if isinstance(v, list)} if isinstance(splits, dict) else {}

    # ----------------------------------------------------------------------- runs

    @staticmethod
    def _runs(root: str) -> list[tuple[str, str]]:
        return [(task.name, run) for task in layout.subfolders(root) for run in layout.runs(task)]

    def model_runs(self) -> list[tuple[str, str]]:
        """(task, run) of every trained model folder, in task/run order."""
        return self._runs(layout.models_dir(self.results))

    def model_dir(self, task: str, run: str) -> Path:
        return Path(layout.model_dir(self.results, task, run))

    def sample_runs(self) -> list[tuple[str, str]]:
        """(task, run) of every augmentation set folder."""
        return self._runs(layout.samples_root(self.results))

    def samples_grid(self, task: str, run: str) -> Path:
        return Path(layout.samples_grid(self.results, task, run))

    def samples_manifest(self, task: str, run: str) -> Path:
        return Path(layout.samples_manifest(self.results, task, run))

    def translation_tasks(self) -> dict[str, list[str]]:
        """Task -> its runs with translated volumes."""
        tasks: dict[str, list[str]] = {}
        for task in layout.subfolders(layout.translations_root(self.results)):
            tasks[task.name] = [run for run in layout.runs(task) if self.translations(task.name, run)]
        return tasks

    def translations(self, task: str, run: str) -> list[Path]:
        """The translated volumes of one run, sorted."""
        return sorted(Path(layout.translations_dir(self.results, task, run)).glob("*.nii.gz"))

    # ----------------------------------------------------------------------- metrics

    def metrics(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every ``metrics/<task>/<model>.json`` and ``metrics/<task>/<model>/seed-<s>.json``
        (path, parsed; seeded files carry ``seed``), in task/model order."""
        if self._metrics is None:
            self._metrics = []
            for task_dir in layout.subfolders(layout.metrics_dir(self.results)):
                for path in sorted([*task_dir.glob("*.json"), *task_dir.glob(f"*/{layout.SEED_FOLDER}*.json")]):
                    data = read_json(path)
                    if isinstance(data, dict):
                        data.setdefault("task", task_dir.name)
                        seeded = path.parent != task_dir
                        data.setdefault("model", path.parent.name if seeded else path.stem)
                        if seeded and path.stem.removeprefix(layout.SEED_FOLDER).isdigit():
                            data["seed"] = int(path.stem.removeprefix(layout.SEED_FOLDER))
                        self._metrics.append((path, data))
        return self._metrics

    def downstream(self) -> list[tuple[str, dict[str, Any]]]:
        """(task, parsed ``downstream.json``) of every task that has one."""
        out = []
        for task_dir in layout.subfolders(layout.metrics_dir(self.results)):
            path = Path(layout.downstream_metrics(self.results, task_dir.name))
            data = read_json(path) if path.is_file() else None
            if isinstance(data, dict):
                out.append((task_dir.name, data))
        return out

    def benchmark_times(self) -> dict[str, dict[str, float]]:
        return benchmark_times(self.results)
