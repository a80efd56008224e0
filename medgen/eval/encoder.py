"""In-domain feature encoder: a small 2D MONAI ResNet trained by medgen on real training slices.

The encoder sees one single-channel slice and has two heads: the modality (cross-entropy over
the modalities present in the training data) and the axial slice position in [0, 1] (MSE). Its
global-average-pooled backbone output (``EncoderFeatures``) is the feature vector for the
distribution metrics. Train it on the *training split only*, so that test and synthetic images
are both unseen. The weights file is identified by its SHA-256 (``EncoderFeatures.checksum``),
to be recorded with every metrics file.

Checkpoint (``torch.save``, loadable with ``weights_only=True``)::

    {"format": "medgen-encoder-v1", "config": {...}, "modalities": [...],
     "state_dict": {...}, "history": [loss per step], "seed": int, "steps": int}
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import ResNet
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medgen.eval.batching import batched_features, image_batch
from medgen.io.atomic import atomic_write_bytes
from medgen.io.torch_load import ModelFileError, safe_load

FORMAT = "medgen-encoder-v1"
#: Backbone of the default encoder: ResNet basic blocks, one per stage, 16-128 channels.
DEFAULT_CONFIG: dict[str, Any] = {"layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128]}


class SliceEncoder(nn.Module):
    """2D ResNet backbone (MONAI) + modality head + slice-position head.

    ``forward(x (B, 1, H, W)) -> (features (B, F), modality logits (B, M), position (B,))``.
    """

    def __init__(self, n_modalities: int, layers: Sequence[int] = (1, 1, 1, 1), block_inplanes: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.backbone = ResNet(
            block="basic", layers=list(layers), block_inplanes=list(block_inplanes), spatial_dims=2, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, feed_forward=False
        )
        width = int(block_inplanes[-1])  # basic block expansion 1
        self.feature_dim = width
        self.modality_head = nn.Linear(width, n_modalities)
        self.position_head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return f, self.modality_head(f), self.position_head(f)[:, 0]


class _ModalitySlices(Dataset):
    """Flattens SliceDataset-style items into (image (1, H, W), modality index, slice position)."""

    def __init__(self, dataset: Any, modalities: Sequence[str]) -> None:
        self.dataset = dataset
        self.modalities = list(modalities)

    def __len__(self) -> int:
        return len(self.dataset) * len(self.modalities)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, float]:
        item = self.dataset[index // len(self.modalities)]
        m = index % len(self.modalities)
        image = torch.as_tensor(item[self.modalities[m]], dtype=torch.float32)
        return image, m, float(item["slice_position"])


def _modalities(dataset: Any) -> list[str]:
    mods = getattr(dataset, "modalities", None)
    if mods is None:
        skip = {"mask", "labels", "subject", "slice", "slice_position"}
        mods = [k for k, v in dataset[0].items() if k not in skip and hasattr(v, "shape")]
    if not mods:
        raise ValueError("the dataset items hold no modality images")
    return list(mods)


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_encoder(
    dataset: Any,
    out_path: Path | str,
    *,
    steps: int = 2000,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    position_weight: float = 1.0,
    config: dict[str, Any] | None = None,
) -> Path:
    """Train the two-head encoder for ``steps`` optimiser steps (Adam) and save it to ``out_path``.

    ``dataset``: items like :class:`medgen.data.datasets.SliceDataset`'s (``{<modality>: (1, H, W),
    "slice_position": float, ...}``) from the **training split only**; every modality of an item is
    one training sample. Loss = CE(modality) + ``position_weight`` * MSE(position). Seeded
    (torch + data order); the per-step losses are stored as ``history``. Returns ``out_path``.
    """
    mods = list(modalities) if modalities is not None else _modalities(dataset)
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    torch.manual_seed(seed)
    model = SliceEncoder(len(mods), **cfg)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(_ModalitySlices(dataset, mods), batch_size=batch_size, shuffle=True, generator=generator, drop_last=False, num_workers=0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ce, mse = nn.CrossEntropyLoss(), nn.MSELoss()
    history: list[float] = []
    model.train()
    while len(history) < steps:
        for image, modality, position in loader:
            _, logits, pos = model(image)
            loss = ce(logits, modality) + position_weight * mse(pos, position.to(torch.float32))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if len(history) >= steps:
                break
    checkpoint = {
        "format": FORMAT,
        "config": {k: list(v) for k, v in cfg.items()},
        "modalities": mods,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "history": history,
        "seed": seed,
        "steps": steps,
    }
    out_path = Path(out_path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(out_path, buffer.getvalue())
    return out_path


class EncoderFeatures:
    """Frozen trained encoder: slices (N, 1, H, W) or (N, H, W) -> pooled features (N, F) float64.

    ``checksum``: SHA-256 of the weights file. Inputs on the same normalised scale as training.
    """

    name = "encoder"

    def __init__(self, path: Path | str, *, batch_size: int = 64) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights {path} do not exist: the workflow trains them (rule encoder); by hand run `medgen encoder` first")
        self.path = path
        self.checksum = sha256_file(path)
        ckpt = safe_load(path, what="study encoder", remedy="Train it again with medgen encoder (eval.features.encoder.weights names it).")
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ModelFileError(f"{path} is not a medgen study encoder (format {FORMAT}); train it with medgen encoder")
        self.modalities = list(ckpt["modalities"])
        self.model = SliceEncoder(len(self.modalities), **ckpt["config"])
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.eval().requires_grad_(False)
        self.batch_size = batch_size
        self.feature_dim = self.model.feature_dim

    def __call__(self, images: Any) -> np.ndarray:
        x = image_batch(images, 2, "slices")
        return batched_features(lambda b: self.model(b)[0], x, self.batch_size)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "weights": str(self.path), "weights_sha256": self.checksum, "modalities": self.modalities, "feature_dim": self.feature_dim}
