"""Plots for the HTML report: training loss and validation curves, translation panels, timing bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from medgen.io.atomic import atomic_write_with  # noqa: E402

if TYPE_CHECKING:
    from medgen.report.validation import Curve

#: resolution of every figure the report draws
DPI = 100
#: display window of CT in Hounsfield units
CT_WINDOW: tuple[float, float] = (-200.0, 1200.0)


# --------------------------------------------------------------------------- training logs


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``log.jsonl`` file; blank and malformed lines are ignored."""
    records: list[dict[str, Any]] = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def loss_terms(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every ``loss/<term>`` key that appears in ``records``, in first-seen order."""
    terms: list[str] = []
    for record in records:
        for key in record:
            if key.startswith("loss/") and key not in terms:
                terms.append(key)
    return terms


def loss_curves(records: Sequence[Mapping[str, Any]], out_png: Path, *, title: str | None = None) -> Path | None:
    """One plot of every ``loss/*`` term against the step; ``None`` when there is nothing to draw."""
    terms = loss_terms(records)
    if not terms:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for term in terms:
        points = [(r.get("step", i), r[term]) for i, r in enumerate(records) if _finite(r.get(term))]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=term.removeprefix("loss/"), linewidth=1.4, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncol=min(len(terms), 4))
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, out_png)


def draw_validation(ax: plt.Axes, curves: Sequence["Curve"], baselines: Mapping[str, float] | None = None, *, ylabel: str = "validation score") -> None:
    """Each run's curve in its model's colour (the seeds of a model as thin lines of one colour), a
    star at the step ``model.pt`` holds, and a horizontal line per baseline level. Artists carry a
    ``gid``: ``curve:<run>``, ``chosen:<run>``, ``baseline:<label>``."""
    models = list(dict.fromkeys(c.model for c in curves))
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    runs_of = {m: sum(c.model == m for c in curves) for m in models}
    labelled: set[str] = set()
    for curve in curves:
        several = runs_of[curve.model] > 1
        label = "_nolegend_" if curve.model in labelled else curve.model + (f" ({runs_of[curve.model]} seeds)" if several else "")
        labelled.add(curve.model)
        ax.plot(curve.steps, curve.values, color=colours[curve.model], linewidth=1.0 if several else 1.5, alpha=0.7 if several else 1.0,
                marker="." if len(curve.steps) < 30 else None, label=label, gid=f"curve:{curve.run}")
    chosen = [c for c in curves if c.chosen is not None]
    for i, curve in enumerate(chosen):
        step, value = curve.chosen  # type: ignore[misc]
        ax.plot([step], [value], linestyle="none", marker="*", markersize=12, color=colours[curve.model], markeredgecolor="black",
                label="step model.pt holds" if i == 0 else "_nolegend_", gid=f"chosen:{curve.run}")
    for (label, level), style in zip((baselines or {}).items(), ("--", ":", "-.")):
        ax.axhline(level, color="0.35", linestyle=style, linewidth=1.2, label=f"{label}: {level:.4g}", gid=f"baseline:{label}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, never over them


def validation_curves(
    curves: Sequence["Curve"], out_png: Path, *, baselines: Mapping[str, float] | None = None, ylabel: str = "validation score", title: str | None = None
) -> Path | None:
    """:func:`draw_validation` in a figure of its own; ``None`` when no curve has a point."""
    curves = [c for c in curves if c.steps]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    draw_validation(ax, curves, baselines, ylabel=ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, out_png)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


# --------------------------------------------------------------------------- translation


def _canonical(path: Path) -> np.ndarray:
    """The volume of a NIfTI file in RAS+ orientation as float32."""
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj, dtype=np.float32)


def _zooms(path: Path) -> np.ndarray:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))


def _display_window(modality: str, data: np.ndarray) -> tuple[float, float]:
    """CT in HU at :data:`CT_WINDOW`, everything else at its 1st/99.5th percentile."""
    if modality.upper() == "CT" and data.size and float(data.min()) < -100:
        return CT_WINDOW
    lo, hi = (float(v) for v in np.percentile(data, [1, 99.5])) if data.size else (0.0, 1.0)
    return lo, hi if hi > lo else lo + 1.0


def panel_windows(source_name: str, target_name: str, source: np.ndarray, output: np.ndarray, truth: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Display windows of input, output and truth: each image windowed on its own (CT in HU at
    the shared :data:`CT_WINDOW`, other images at their own 1st/99.5th percentiles)."""
    return _display_window(source_name, source), _display_window(target_name, output), _display_window(target_name, truth)


def _error_limit(error: np.ndarray) -> float:
    """Symmetric colour limit of an error map: the 99th percentile of ``|error|``."""
    limit = float(np.percentile(np.abs(error), 99)) if error.size else 1.0
    return limit if limit > 0 else 1.0


def _slices(volume: np.ndarray, views: Sequence[str]) -> list[np.ndarray]:
    """Mid slices of ``volume`` (RAS+) for each named view, transposed for ``origin="lower"``."""
    i, j, k = (n // 2 for n in volume.shape[:3])
    pick = {"axial": lambda v: v[:, :, k].T, "coronal": lambda v: v[:, j, :].T, "sagittal": lambda v: v[i, :, :].T}
    return [pick[view](volume) for view in views]


def _aspects(zooms: np.ndarray, views: Sequence[str]) -> list[float]:
    ratio = {"axial": zooms[1] / zooms[0], "coronal": zooms[2] / zooms[0], "sagittal": zooms[2] / zooms[1]}
    return [float(ratio[view]) for view in views]


def translation_panel(
    source: Path,
    output: Path,
    truth: Path,
    out_png: Path,
    *,
    source_name: str,
    target_name: str,
    title: str | None = None,
    views: Sequence[str] = ("axial", "coronal"),
) -> Path:
    """Input | output | ground truth | error (output − truth) for mid slices of each view.

    The three volumes must share a grid. CT is shown at :data:`CT_WINDOW`; every other image at its
    own percentiles (:func:`panel_windows`), so that an output on another scale than its truth is
    still visible (the error map shows the difference in scale); the error map uses a
    diverging colormap, symmetric about zero, with a colourbar (HU for CT)."""
    src, out, ref = (_canonical(p) for p in (source, output, truth))
    if out.shape != ref.shape:
        raise ValueError(f"output {out.shape} and ground truth {ref.shape} are not on the same grid")
    error = out - ref
    src_win, out_win, ref_win = panel_windows(source_name, target_name, src, out, ref)
    limit = _error_limit(error)
    units = "HU" if target_name.upper() == "CT" else "a.u."
    aspects = _aspects(_zooms(truth), views)
    columns = (
        (f"input ({source_name})", src, "gray", src_win),
        (f"output ({target_name})", out, "gray", out_win),
        (f"ground truth ({target_name})", ref, "gray", ref_win),
        (f"error ({units})", error, "RdBu_r", (-limit, limit)),
    )
    fig, axes = plt.subplots(len(views), 4, figsize=(10.5, 2.7 * len(views) + 0.4), squeeze=False)
    for col, (name, volume, cmap, (lo, hi)) in enumerate(columns):
        for row, (slc, aspect) in enumerate(zip(_slices(volume, views), aspects)):
            ax = axes[row, col]
            shown = ax.imshow(slc, cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(views[row], fontsize=9)
            if col == 3:
                bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
                bar.ax.tick_params(labelsize=7)
                bar.set_label(f"output − truth ({units})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)


# --------------------------------------------------------------------------- timing


def timing_bars(seconds: Mapping[str, float], out_png: Path, *, title: str | None = None) -> Path | None:
    """Horizontal bars of total wall time per rule, longest on top; ``None`` when empty."""
    if not seconds:
        return None
    items = sorted(seconds.items(), key=lambda kv: kv[1])
    names, values = [k for k, _ in items], [v for _, v in items]
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * len(items)))
    ax.barh(names, values, color="#4c72b0")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
    ax.set_xlabel("wall time (s)")
    ax.set_xlim(0, max(values) * 1.18 if max(values) > 0 else 1)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, out_png)


# --------------------------------------------------------------------------- output


def _save(fig: plt.Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_write_with(out_png, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    plt.close(fig)
    return out_png
