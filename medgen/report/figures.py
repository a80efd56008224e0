"""Pictures of volumes: orthogonal mid-slices of several co-registered images side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from medgen.io.atomic import atomic_write_with  # noqa: E402

#: display windows per kind of image (lower, upper); None = 1st/99th percentile
WINDOWS: dict[str, tuple[float, float] | None] = {"CT": (-200.0, 1200.0), "labels": None}


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))


def _window(name: str, data: np.ndarray) -> tuple[float, float]:
    win = WINDOWS.get(name)
    if win is not None and data.min() < -100:  # HU data; normalised CT has its own range
        return win
    lo, hi = np.percentile(data, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def orthogonal_views(images: Mapping[str, Path], out_png: Path, *, title: str | None = None, point: Sequence[float] | None = None) -> Path:
    """Axial, coronal and sagittal slices through the volume centre (or a voxel ``point``,
    as fractions of the extent) for each named NIfTI image, in RAS display orientation with
    the true voxel aspect ratio. Rows are images, columns the three views. Returns ``out_png``."""
    names = list(images)
    fig, axes = plt.subplots(len(names), 3, figsize=(7.5, 2.6 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        data, zooms = _canonical(Path(images[name]))
        frac = point or (0.5, 0.5, 0.5)
        i, j, k = (int(round(f * (n - 1))) for f, n in zip(frac, data.shape))
        views = (
            ("axial", data[:, :, k].T, zooms[1] / zooms[0]),
            ("coronal", data[:, j, :].T, zooms[2] / zooms[0]),
            ("sagittal", data[i, :, :].T, zooms[2] / zooms[1]),
        )
        lo, hi = _window(name, data)
        for col, (view, slc, aspect) in enumerate(views):
            ax = axes[row, col]
            cmap = "tab10" if name == "labels" else "gray"
            ax.imshow(slc, cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view, fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(out_png, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return out_png
