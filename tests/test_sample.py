"""sample_to_files with toy generative models whose samples are a known pattern per label."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medgen.data.normalise import ct_mapping
from medgen.io.ingest import IngestOptions, ingest
from medgen.synth.sample import MANIFEST_HEADER, grid_shape, sample_to_files

from medgen.models.artifact import ModelCard, TrainedModel

H, W = 16, 24  # deliberately not square: (X, Y) of a 2D sample
SPACING = (3.5, 3.0, 2.5)
WINDOW = (-1024.0, 3000.0)
T1 = {"kind": "linear", "scale": 400.0, "offset": 500.0, "clip_normalised": [-1.0, 1.0], "units": "a.u.",
      "source_range": [100.0, 900.0], "method": "percentile"}
NOISE = 0.01


def train_affine() -> np.ndarray:
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag(SPACING)
    a[:3, 3] = [-30.0, -40.0, -20.0]
    return a


def pattern(label: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Label-specific level (-0.6, 0.2, ...) plus a ramp along the first spatial axis, in [-1, 1]."""
    ramp = torch.linspace(-0.3, 0.3, spatial[0]).view(-1, *([1] * (len(spatial) - 1)))
    return (-0.6 + 0.8 * label + ramp).expand(*spatial)


class ToyGenerator(nn.Module):
    """sample(n, labels) = pattern(label) + NOISE * temperature * randn (the randomness tests seeding)."""

    def __init__(self, spatial: tuple[int, ...]) -> None:
        super().__init__()
        self.spatial = spatial
        self.calls: list[Any] = []

    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        self.calls.append(None if labels is None else labels.tolist())
        labs = labels.tolist() if labels is not None else [0] * n
        base = torch.stack([pattern(int(lab), self.spatial) for lab in labs])[:, None]
        return base + NOISE * temperature * torch.randn(base.shape)


def meta(*, dims: int, condition: str | None, classes: list[str] | None, modalities: list[str]) -> ModelCard:
    size = [H, W, 20] if dims == 2 else [H, W, 12]
    return ModelCard(
        model="toygen",
        options={},
        task={"name": "gen", "kind": "generation", "modalities": modalities, "condition": condition, "classes": classes},
        data={
            "spatial_dims": dims, "slice_axis": 2, "spacing": list(SPACING), "size": size, "patch_size": None,
            "preprocess": {"mr_norm": "percentile", "mr_percentiles": [0.5, 99.5], "ct_window": list(WINDOW)},
            "mappings": {"T1w": T1, "CT": ct_mapping(WINDOW)}, "affine": train_affine().tolist(),
        },
    )


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def modality_model() -> TrainedModel:
    m = meta(dims=2, condition="modality", classes=["T1w", "CT"], modalities=["T1w", "CT"])
    return TrainedModel(ToyGenerator((H, W)), m, Path("/runs/toy/ema_best.pt"))


def test_modality_conditioned_2d_files_values_manifest_grid(tmp_path: Path) -> None:
    trained = modality_model()
    manifest = sample_to_files(trained, 6, tmp_path / "synth", labels=[0, 1], batch_size=4)
    assert manifest == tmp_path / "synth" / "manifest.tsv"
    assert trained.model.calls == [[0, 1, 0, 1], [0, 1]]

    header = manifest.read_text().splitlines()[0].split("\t")
    assert tuple(header) == MANIFEST_HEADER
    rows = read_manifest(manifest)
    assert [r["subject"] for r in rows] == [f"synth-{i:05d}" for i in range(6)]
    assert [r["label"] for r in rows] == ["0", "1"] * 3
    assert [r["modality"] for r in rows] == ["T1w", "CT"] * 3
    assert all(r["source"] == "toygen:ema_best.pt" for r in rows)

    for i, row in enumerate(rows):
        path = manifest.parent / row["path"]
        assert row["path"] == f"images/sample_{i:05d}.nii.gz" and path.exists()
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        assert data.shape == (H, W, 1)
        np.testing.assert_allclose(img.header.get_zooms(), SPACING, atol=1e-5)
        np.testing.assert_allclose(img.affine[:3, :3], train_affine()[:3, :3], atol=1e-5)
        expected = pattern(int(row["label"]), (H, W)).numpy()
        if row["modality"] == "CT":
            hu = expected * (WINDOW[1] - WINDOW[0]) / 2 + (WINDOW[1] + WINDOW[0]) / 2
            assert data.min() >= WINDOW[0] and data.max() <= WINDOW[1]
            assert np.abs(data[..., 0] - hu).max() < 5 * NOISE * 2012  # original units, not [-1, 1]
        else:
            assert np.abs(data[..., 0] - (expected * 400 + 500)).max() < 5 * NOISE * 400

    png = plt.imread(str(tmp_path / "synth" / "grid.png"))
    # two label rows of three samples; a cell shows the sample with Y up, so it is W tall and H wide
    assert png.shape[:2] == grid_shape(2, 3, (W, H))
    assert png.shape[0] < png.shape[1]


def test_seed_determines_samples(tmp_path: Path) -> None:
    state = torch.get_rng_state()
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        sample_to_files(modality_model(), 3, tmp_path / name, labels=[1], seed=seed)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone

    def load(name: str) -> np.ndarray:
        return np.stack([np.asarray(nib.load(str(p)).dataobj) for p in sorted((tmp_path / name / "images").iterdir())])

    np.testing.assert_array_equal(load("a"), load("b"))
    assert not np.array_equal(load("a"), load("c"))


def test_unconditional_3d_ct_and_ingest_accepts(tmp_path: Path) -> None:
    spatial = (H, W, 12)
    trained = TrainedModel(ToyGenerator(spatial), meta(dims=3, condition=None, classes=None, modalities=["CT"]), None)
    manifest = sample_to_files(trained, 5, tmp_path / "synth", batch_size=2)
    rows = read_manifest(manifest)
    assert [r["label"] for r in rows] == ["n/a"] * 5 and all(r["source"] == "toygen:unsaved" for r in rows)
    img = nib.load(str(manifest.parent / rows[0]["path"]))
    assert img.shape == spatial
    np.testing.assert_allclose(img.affine, train_affine(), atol=1e-5)
    data = np.asarray(img.dataobj)
    assert data.min() >= WINDOW[0] and data.max() <= WINDOW[1] and data.max() > 0  # HU, not [-1, 1]
    png = plt.imread(str(tmp_path / "synth" / "grid.png"))
    assert png.shape[:2] == grid_shape(2, 3, (W, H))  # 5 samples: near-square 2 x 3 grid

    summary = ingest([manifest], tmp_path / "ingested", options=IngestOptions(keep_subject_labels=True))  # synthetic labels name nobody
    assert not summary.failed and not summary.skipped
    assert sorted(c["subject"] for c in summary.converted) == [f"synth-{i:05d}" for i in range(5)]
    assert (tmp_path / "ingested" / "synth-00000" / "CT.nii.gz").exists()


def test_2d_one_slice_volumes_are_ingested(tmp_path: Path) -> None:
    manifest = sample_to_files(modality_model(), 2, tmp_path / "synth")
    summary = ingest([manifest], tmp_path / "ingested", options=IngestOptions(keep_subject_labels=True))
    assert not summary.failed and len(summary.converted) == 2
    assert {c["modality"] for c in summary.converted} == {"T1w", "CT"}  # no labels: every class cycled
    assert all(c["shape"] == [H, W, 1] for c in summary.converted)


def test_slice_bin_places_sample_at_its_bin(tmp_path: Path) -> None:
    m = meta(dims=2, condition="slice_bin", classes=["0", "1", "2", "3"], modalities=["T1w"])
    manifest = sample_to_files(TrainedModel(ToyGenerator((H, W)), m, None), 2, tmp_path / "s", labels=[0, 3])
    a = train_affine()
    depth = m.data["size"][2]
    for row, label in zip(read_manifest(manifest), (0, 3)):
        affine = nib.load(str(manifest.parent / row["path"])).affine
        expected = a[:3, 3] + (label + 0.5) / 4 * (depth - 1) * a[:3, 2]
        np.testing.assert_allclose(affine[:3, 3], expected, atol=1e-4)
        assert row["modality"] == "T1w"


def test_labels_for_an_unconditional_model_are_refused(tmp_path: Path) -> None:
    trained = TrainedModel(ToyGenerator((H, W)), meta(dims=2, condition=None, classes=None, modalities=["T1w"]), None)
    with pytest.raises(ValueError, match="unconditional"):
        sample_to_files(trained, 2, tmp_path / "s", labels=[1])


class _SometimesNaN(torch.nn.Module):
    """Every third call returns one NaN sample: sampling must redraw it, never write NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def sample(self, n, labels=None, temperature=1.0):
        self.calls += 1
        x = torch.rand(n, 1, 8, 8) * 2 - 1
        if self.calls % 3 == 1:
            x[0, 0, 0, 0] = float("nan")
        return x


def test_non_finite_samples_are_redrawn():
    from medgen.synth.sample import _draw

    model = _SometimesNaN()
    images = _draw(model, [None] * 5, temperature=1.0, seed=0, batch_size=5)
    assert torch.isfinite(images).all() and images.shape == (5, 1, 8, 8)
    assert model.calls == 2


def test_always_nan_model_fails_loudly():
    from medgen.synth.sample import _draw

    class AlwaysNaN(_SometimesNaN):
        def sample(self, n, labels=None, temperature=1.0):
            return torch.full((n, 1, 4, 4), float("nan"))

    with pytest.raises(FloatingPointError, match="lower --temperature"):
        _draw(AlwaysNaN(), [None] * 2, temperature=1.0, seed=0, batch_size=2)


class _MapGenerator(nn.Module):
    """sample(labels=maps) = 0.1 * map - 0.5: the image is a known function of its label map."""

    def sample(self, n, *, labels=None, temperature=1.0):
        assert labels is not None and labels.shape[0] == n
        return 0.1 * labels.float() - 0.5


def test_label_map_model_writes_image_and_label_pairs(tmp_path):
    m = meta(dims=2, condition="label_map", classes=["all"], modalities=["T1w"])
    trained = TrainedModel(_MapGenerator(), m, None)
    maps = np.zeros((2, 1, H, W), dtype=np.int64)
    maps[0, 0, 2:6, 3:9] = 7
    maps[1, 0, 5:12, 1:4] = 3
    manifest = sample_to_files(trained, 3, tmp_path / "s", label_maps=maps)
    rows = read_manifest(manifest)
    images = [r for r in rows if r["modality"] == "T1w"]
    labels = [r for r in rows if r["modality"] == "labels"]
    assert len(images) == len(labels) == 3
    for i, (img_row, lab_row) in enumerate(zip(images, labels)):
        img = nib.load(str(manifest.parent / img_row["path"]))
        lab = nib.load(str(manifest.parent / lab_row["path"]))
        np.testing.assert_allclose(img.affine, lab.affine)
        np.testing.assert_array_equal(np.asarray(lab.dataobj)[..., 0], maps[i % 2, 0])
        expected = (0.1 * maps[i % 2, 0] - 0.5) * T1["scale"] + T1["offset"]
        np.testing.assert_allclose(img.get_fdata()[..., 0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="pass label_maps"):
        sample_to_files(trained, 2, tmp_path / "t")
