"""Pretrained medical feature extractors loaded from local weight files (never downloaded).

* ``radimagenet``: RadImageNet ResNet-50 (Mei et al., "RadImageNet: An Open Radiologic Deep
  Learning Research Dataset for Effective Transfer Learning", Radiology: AI 2022), 2D. The
  architecture is torchvision's ``resnet50`` (bottleneck blocks [3, 4, 6, 3], stride on the 3x3
  convolution, "v1.5"), written here because torchvision does not import beside this torch. The
  loader accepts the state-dict layouts in which these weights circulate:
  torchvision keys (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.*`` ignored), the same with a
  ``module.`` (DataParallel) prefix, and the RadImageNet repository's PyTorch layout, where the
  backbone is ``nn.Sequential(*list(resnet50().children())[:-1])`` stored as ``backbone.N.``
  (0 conv1, 1 bn1, 4-7 layer1-4). Features: global average pool, 2048-d.
* ``medicalnet``: MedicalNet 3D ResNet (Chen et al., "Med3D: Transfer Learning for 3D Medical
  Image Analysis", arXiv:1904.00625) via MONAI's ``monai.networks.nets.resnet10/18/34/50``
  (``spatial_dims=3, n_input_channels=1``, conv1 stride 2, ``shortcut_type`` / ``bias_downsample``
  from MONAI's ``get_medicalnet_pretrained_resnet_args``: "A" for depths 18/34, else "B",
  ``feed_forward=False``). The released checkpoints are ``{"state_dict": {"module.conv1.weight",
  ...}}``: the ``module.`` prefix is stripped and the segmentation head (``conv_seg.*``) dropped.
  Features: global average pool (512-d for 10/18/34, 2048-d for 50).

Every extractor exposes ``checksum`` (SHA-256 of the weights file) and ``info()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medgen.eval.batching import batched_features, image_batch
from medgen.eval.encoder import sha256_file

#: ImageNet channel statistics (RGB, images in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SEQUENTIAL_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


# ---------------------------------------------------------------------------------------------
# Weights files


def _weights_file(path: Path | str | None, config_key: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"no weights file given: set {config_key} to a local file (nothing is downloaded)")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} does not exist: set {config_key} to a local file (nothing is downloaded)")
    return p


def _load_weights_file(path: Path, config_key: str) -> Any:
    """The weights file through medgen's one weights-only loader."""
    from medgen.io.torch_load import safe_load

    return safe_load(path, what="pretrained weights file", remedy=f"Point {config_key} at the original weights file.")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # Checkpoints are either a bare state dict or one nested under a common key.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return dict(obj)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error listing a few missing/unexpected keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise KeyError(
            f"{source}: state dict does not match the architecture: "
            f"{len(missing)} missing (e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. {unexpected[:5]})"
        )
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        raise KeyError(f"{source}: shape mismatch for {len(bad)} tensors, e.g. {bad[0]}: {tuple(state[bad[0]].shape)} vs {tuple(expected[bad[0]].shape)}")
    model.load_state_dict(dict(state), strict=True)


# ---------------------------------------------------------------------------------------------
# ResNet-50 (torchvision layout)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (expansion 4, stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)) if stride != 1 or inplanes != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50Features(nn.Module):
    """torchvision-compatible ResNet-50 without the classifier: (B, 3, H, W) -> (B, 2048) pooled."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def radimagenet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published RadImageNet/torchvision layouts -> this module's (torchvision) keys; ``fc.*`` dropped."""
    out = {}
    for key, value in state.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        if k.startswith("backbone."):
            head, _, rest = k[len("backbone.") :].partition(".")
            if head not in _SEQUENTIAL_NAMES:
                out[k] = value  # reported as unexpected by load_weights
                continue
            k = f"{_SEQUENTIAL_NAMES[head]}.{rest}"
        if k.startswith("fc."):
            continue
        out[k] = value
    return out


def _to_unit(x: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = input_range
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


class RadImageNetFeatures:
    """RadImageNet ResNet-50 features of 2D slices: (N, H, W) or (N, 1, H, W) -> (N, 2048) float64.

    Preprocessing: values mapped from ``input_range`` (default the network scale [-1, 1]) to
    [0, 1] and clipped, grey repeated to 3 channels, then ``input_norm``: "imagenet" (subtract
    ImageNet mean, divide by std, RGB; torchvision convention, default) or "bgr_mean" (channels
    reversed, BGR ImageNet mean subtracted, no std: the convention of the Keras-converted
    weights used e.g. in MONAI Generative's FID tutorials). Use the one the weights were trained
    with; it is recorded in :meth:`info`.
    """

    name = "radimagenet"
    config_key = "eval.extractors.radimagenet.weights"

    def __init__(
        self,
        weights_path: Path | str | None = None,
        *,
        input_range: tuple[float, float] = (-1.0, 1.0),
        input_norm: Literal["imagenet", "bgr_mean"] = "imagenet",
        batch_size: int = 32,
    ) -> None:
        path = _weights_file(weights_path, self.config_key)
        if input_norm not in ("imagenet", "bgr_mean"):
            raise ValueError(f"input_norm must be 'imagenet' or 'bgr_mean', got {input_norm!r}")
        self.path, self.checksum = path, sha256_file(path)
        self.model = ResNet50Features()
        load_weights(self.model, radimagenet_state_dict(_unwrap(_load_weights_file(path, self.config_key), path)), source=str(path))
        self.model.eval().requires_grad_(False)
        self.input_range, self.input_norm, self.batch_size = input_range, input_norm, batch_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) network-scale slices -> (B, 3, H, W) network input."""
        x = _to_unit(x, self.input_range).repeat(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        if self.input_norm == "imagenet":
            return (x - mean) / torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return x.flip(1) - mean.flip(1)  # BGR order, BGR means

    def __call__(self, images: Any) -> np.ndarray:
        x = image_batch(images, 2, "2D slices")
        return batched_features(lambda b: self.model(self.preprocess(b)), x, self.batch_size)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "weights": str(self.path), "weights_sha256": self.checksum, "input_range": list(self.input_range), "input_norm": self.input_norm, "feature_dim": 2048}


# ---------------------------------------------------------------------------------------------
# MedicalNet (MONAI ResNet, 3D)


def medicalnet_model(depth: int = 10) -> nn.Module:
    """MONAI 3D ResNet in MedicalNet's configuration, without classifier (pooled features)."""
    from monai.networks.nets import resnet

    factories: dict[int, Callable[..., nn.Module]] = {10: resnet.resnet10, 18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50}
    if depth not in factories:
        raise ValueError(f"MedicalNet depth must be one of {sorted(factories)}, got {depth}")
    bias_downsample, shortcut_type = resnet.get_medicalnet_pretrained_resnet_args(depth)
    return factories[depth](
        pretrained=False, spatial_dims=3, n_input_channels=1, conv1_t_stride=2, shortcut_type=shortcut_type, bias_downsample=bias_downsample, feed_forward=False
    )


def medicalnet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MedicalNet release layout -> MONAI keys: strip ``module.``, drop ``conv_seg.*`` (segmentation head)."""
    out = {}
    for key, value in state.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        if not k.startswith("conv_seg."):
            out[k] = value
    return out


class MedicalNetFeatures:
    """MedicalNet 3D ResNet features: volumes (N, D, H, W) or (N, 1, D, H, W) -> (N, F) float64.

    Input normalisation as MedicalNet's training: per volume, z-score over the nonzero voxels
    (``input_norm="zscore_nonzero"``, default; use it on volumes whose background is 0) or
    "none" (volumes already normalised).
    """

    name = "medicalnet"
    config_key = "eval.extractors.medicalnet.weights"

    def __init__(self, weights_path: Path | str | None = None, *, depth: int = 10, input_norm: Literal["zscore_nonzero", "none"] = "zscore_nonzero", batch_size: int = 2) -> None:
        path = _weights_file(weights_path, self.config_key)
        if input_norm not in ("zscore_nonzero", "none"):
            raise ValueError(f"input_norm must be 'zscore_nonzero' or 'none', got {input_norm!r}")
        self.path, self.checksum, self.depth = path, sha256_file(path), depth
        self.model = medicalnet_model(depth)
        load_weights(self.model, medicalnet_state_dict(_unwrap(_load_weights_file(path, self.config_key), path)), source=str(path))
        self.model.eval().requires_grad_(False)
        self.input_norm, self.batch_size = input_norm, batch_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "none":
            return x
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            v = x[i]
            fg = v[v != 0]
            if fg.numel() < 2:
                out[i] = v
                continue
            out[i] = (v - fg.mean()) / fg.std().clamp_min(1e-8)
        return out

    def __call__(self, volumes: Any) -> np.ndarray:
        """Volumes (N, D, H, W) / (N, 1, D, H, W), or 2D slices (N, H, W) as one-slice volumes
        (the network's strided 3D convolutions keep a depth of 1)."""
        arr = np.asarray(volumes)
        if arr.ndim == 3:
            arr = arr[:, None]
        x = self.preprocess(image_batch(arr, 3, "volumes"))
        return batched_features(self.model, x, self.batch_size)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "depth": self.depth, "weights": str(self.path), "weights_sha256": self.checksum, "input_norm": self.input_norm}


# ---------------------------------------------------------------------------------------------
# Inception-v3 (only with torchvision)


class InceptionFeatures:
    """Inception-v3 pool features (2048-d) for classic FID; needs torchvision and a local weights file.

    Weights: torchvision's ``inception_v3`` state dict (``fc.*`` ignored). Slices in
    ``input_range`` are mapped to [0, 1], repeated to 3 channels, resized to 299x299 (bilinear)
    and ImageNet-normalised. Not the TF-FID network: values are not comparable with published FIDs.
    """

    name = "inception"
    config_key = "eval.extractors.inception.weights"

    def __init__(self, weights_path: Path | str | None = None, *, input_range: tuple[float, float] = (-1.0, 1.0), batch_size: int = 16) -> None:
        try:
            from torchvision.models import inception_v3
        except Exception as exc:  # torchvision missing or incompatible with this torch
            raise ImportError(f"the 'inception' extractor needs an importable torchvision ({exc})") from exc
        path = _weights_file(weights_path, self.config_key)
        self.path, self.checksum = path, sha256_file(path)
        self.model = inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.model.fc = nn.Identity()
        state = {k: v for k, v in _unwrap(_load_weights_file(path, self.config_key), path).items() if not k.startswith(("fc.", "AuxLogits."))}
        load_weights(self.model, state, source=str(path))
        self.model.eval().requires_grad_(False)
        self.input_range, self.batch_size = input_range, batch_size

    def __call__(self, images: Any) -> np.ndarray:
        x = _to_unit(image_batch(images, 2, "2D slices"), self.input_range).repeat(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return batched_features(self.model, x, self.batch_size)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "weights": str(self.path), "weights_sha256": self.checksum, "feature_dim": 2048}
