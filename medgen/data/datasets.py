"""Training data from preprocessed subjects (``prep_root/<subject>/<modality>.nii.gz``, mask, labels).

Volumes are loaded once and cached (:class:`CachePolicy`): in RAM with MONAI's CacheDataset up to
``ram_mb`` per training process, the rest with MONAI's PersistentDataset on local disk (loaded
and converted once, then read back per item as uncompressed tensors). PersistentDataset rather
than SmartCacheDataset: SmartCacheDataset swaps its cached subset in a background thread on a
schedule of its own, so which subjects an item can come from would depend on timing and
epochs, breaking the engine's data order that is a function of (seed, epoch) only and exact
resume; PersistentDataset serves every item of every subject at any time, from any worker.
:class:`SliceDataset` serves 2D axial slices and :class:`PatchDataset` 3D patches. Every item holds all requested modalities of
the same subject at the same place (paired), plus the mask:

    {<modality>: float32 (1, ...), "mask": float32 (1, ...), "labels": int64 (1, ...) (optional),
     "subject": str, ...position keys...}
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor, PersistentDataset
from monai.transforms import Compose, FgBgToIndicesd, LoadImaged, RandCropByPosNegLabeld, SpatialPadd
from torch.utils.data import Dataset

from medgen.data.settings import MIN_MASK_FRACTION
from medgen.layout import LABELS_FILE, MASK_FILE

log = logging.getLogger(__name__)

Item = dict[str, Any]
Transform = Callable[[Item], Item]


def _labels_wanted(prep_root: Path, subjects: Sequence[str], labels: bool) -> bool:
    """Whether to load labels: all subjects have them -> yes; none -> no (warned); some -> error."""
    if not labels:
        return False
    missing = [s for s in subjects if not (prep_root / s / LABELS_FILE).is_file()]
    if len(missing) == len(subjects):
        log.warning("labels=True but no subject under %s has %s; items carry no labels", prep_root, LABELS_FILE)
        return False
    if missing:
        raise ValueError(f"labels=True but {LABELS_FILE} is missing for {', '.join(missing)} (items could not be batched together)")
    return True


def _records(prep_root: Path, subjects: Sequence[str], modalities: Sequence[str], with_labels: bool) -> list[dict[str, str]]:
    if not subjects:
        raise ValueError("no subjects given")
    if not modalities:
        raise ValueError("no modalities given")
    records = []
    for subject in subjects:
        record = {"subject": subject}
        files = {**{m: f"{m}.nii.gz" for m in modalities}, "mask": MASK_FILE, **({"labels": LABELS_FILE} if with_labels else {})}
        for key, name in files.items():
            path = prep_root / subject / name
            if not path.is_file():
                raise FileNotFoundError(f"{subject}: {path} does not exist (run preprocess first)")
            record[key] = str(path)
        records.append(record)
    return records


def _plain(value: Any) -> Any:
    """MetaTensor -> plain tensor (a slice or patch no longer has the volume's affine)."""
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def _finish(item: Item, image_keys: Sequence[str], transform: Transform | None) -> Item:
    if transform is not None:
        item = transform(item)
    out = {k: _plain(v) for k, v in item.items()}
    for key in (*image_keys, "mask"):
        out[key] = out[key].to(torch.float32)
    if "labels" in out:
        out["labels"] = torch.round(out["labels"]).to(torch.int64)
    return out


@dataclass(frozen=True)
class CachePolicy:
    """Where the training volumes are kept (``train.cache``).

    ``ram_mb``: MB of volumes held in RAM per process (None: every subject); subjects beyond it
    go to ``dir`` (None: a temporary folder, removed with the dataset). Use a local disk for
    ``dir``: every item of a disk-cached subject reads that subject's volumes back.
    """

    ram_mb: float | None = None
    dir: Path | str | None = None


_DEFAULT_POLICY = CachePolicy()


def set_default_cache_policy(policy: CachePolicy) -> None:
    """The policy of datasets built without one (``medgen train`` sets it from its flags)."""
    global _DEFAULT_POLICY
    _DEFAULT_POLICY = policy


def subject_nbytes(record: dict[str, str], keys: Sequence[str]) -> int:
    """Bytes of one subject's cached volumes (float32, shapes read from the NIfTI headers)."""
    return sum(4 * math.prod(nib.load(record[k]).shape) for k in keys)


class _Volumes:
    """Whole volumes of each subject, (1, X, Y, Z) each: the first subjects that fit in
    ``policy.ram_mb`` via MONAI CacheDataset, the rest via PersistentDataset on disk."""

    def __init__(self, prep_root: Path | str, subjects: Sequence[str], modalities: Sequence[str], *, labels: bool, cache_rate: float, extra: Sequence[Callable] = (), policy: CachePolicy | None = None) -> None:
        self.root = Path(prep_root)
        self.subjects = list(subjects)
        self.modalities = list(modalities)
        self.has_labels = _labels_wanted(self.root, self.subjects, labels)
        self.keys = [*self.modalities, "mask", *(["labels"] if self.has_labels else [])]
        records = _records(self.root, self.subjects, self.modalities, self.has_labels)
        policy = policy or _DEFAULT_POLICY
        self.in_ram = self._ram_count(records, policy, cache_rate)
        load = LoadImaged(keys=self.keys, image_only=True, ensure_channel_first=True, dtype=np.float32)
        transform = Compose([load, *extra])
        # copy_cache=False: items only read from the cached volumes (slicing/cropping makes new tensors).
        self.ram = CacheDataset(records[: self.in_ram], transform=transform, cache_rate=1.0, num_workers=0, copy_cache=False, progress=False)
        self.disk: PersistentDataset | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        if self.in_ram < len(records):
            cache_dir = policy.dir
            if cache_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="medgen_cache_")
                cache_dir = self._tmp.name
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            # keeps affines (patch_start); loaded weights-only, so numpy values (e.g. FgBgToIndicesd's
            # indices) are stored as plain tensors and turned back into arrays when read
            self.disk = PersistentDataset(records[self.in_ram :], transform=Compose([transform, _arrays_to_tensors]), cache_dir=cache_dir, track_meta=True)
            log.info("caching %d of %d subjects in RAM, %d on disk in %s", self.in_ram, len(records), len(records) - self.in_ram, cache_dir)

    def _ram_count(self, records: list[dict[str, str]], policy: CachePolicy, cache_rate: float) -> int:
        count = min(len(records), int(len(records) * cache_rate + 0.5)) if cache_rate < 1.0 else len(records)
        if policy.ram_mb is None:
            return count
        budget, used = policy.ram_mb * 2**20, 0
        for n, record in enumerate(records[:count]):
            used += subject_nbytes(record, self.keys)
            if used > budget:
                return n
        return count

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> Item:
        if index < self.in_ram:
            return self.ram[index]
        assert self.disk is not None
        return _tensors_to_arrays(self.disk[index - self.in_ram])


def _arrays_to_tensors(item: Item) -> Item:
    """numpy values as plain tensors: weights-only loading (PersistentDataset) refuses numpy objects."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in item.items()}


def _tensors_to_arrays(item: Item) -> Item:
    """Undo :func:`_arrays_to_tensors` (plain tensors back to arrays; image MetaTensors stay)."""
    return {k: v.numpy() if type(v) is torch.Tensor else v for k, v in item.items()}


class SliceDataset(Dataset):
    """2D axial slices (axis 2 of the RAS volumes, i.e. along the superior axis).

    Item: ``{<modality>: (1, X, Y) float32, "mask": (1, X, Y) float32, "subject": str,
    "slice": int, "slice_position": float in [0, 1] (0 = most inferior)}`` and ``"labels"``
    (1, X, Y) int64 with ``labels=True``. Only slices whose mask covers at least
    ``min_mask_fraction`` of the slice are served. ``transform`` (e.g. MONAI ``RandFlipd`` on the
    modality keys) is applied to each item.
    """

    def __init__(
        self,
        prep_root: Path | str,
        subjects: Sequence[str],
        modalities: Sequence[str],
        *,
        min_mask_fraction: float = MIN_MASK_FRACTION,
        cache_rate: float = 1.0,
        transform: Transform | None = None,
        labels: bool = False,
        cache: CachePolicy | None = None,
    ) -> None:
        if not 0.0 <= min_mask_fraction <= 1.0:
            raise ValueError(f"min_mask_fraction must lie in [0, 1], got {min_mask_fraction}")
        self.volumes = _Volumes(prep_root, subjects, modalities, labels=labels, cache_rate=cache_rate, policy=cache)
        self.modalities = list(modalities)
        self.transform = transform
        self.min_mask_fraction = float(min_mask_fraction)
        self.index, self.depth = self._slice_index()

    def _slice_index(self) -> tuple[list[tuple[int, int]], list[int]]:
        # Read masks directly (small uint8 files) so that the index does not depend on what is cached.
        index: list[tuple[int, int]] = []
        depth: list[int] = []
        for v, subject in enumerate(self.volumes.subjects):
            mask = np.asarray(nib.load(str(self.volumes.root / subject / MASK_FILE)).dataobj) > 0
            fraction = mask.mean(axis=(0, 1))
            index += [(v, int(k)) for k in np.flatnonzero(fraction >= self.min_mask_fraction)]
            depth.append(mask.shape[2])
        return index, depth

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Item:
        v, k = self.index[i]
        volume = self.volumes[v]
        item: Item = {key: _plain(volume[key])[..., k].clone() for key in self.volumes.keys}
        item["subject"] = self.volumes.subjects[v]
        item["slice"] = k
        item["slice_position"] = k / (self.depth[v] - 1) if self.depth[v] > 1 else 0.0
        return _finish(item, self.modalities, self.transform)


class PatchDataset(Dataset):
    """3D patches, ``samples_per_volume`` per subject, centred inside the mask.

    Item: ``{<modality>: (1, D, H, W) float32, "mask": (1, D, H, W) float32, "subject": str,
    "sample": int, "patch_start": [i, j, k] (voxel index of the patch corner in the preprocessed file; negative
    where a volume smaller than the patch was padded)}``
    and ``"labels"`` with ``labels=True``. Item ``i`` is drawn by MONAI's
    ``RandCropByPosNegLabeld`` whose random state is set from ``(seed, epoch, i)``, so it is the
    same whatever the access order or worker; :meth:`set_epoch` draws new patches.
    """

    def __init__(
        self,
        prep_root: Path | str,
        subjects: Sequence[str],
        modalities: Sequence[str],
        patch_size: Sequence[int] = (32, 32, 32),
        samples_per_volume: int = 4,
        *,
        seed: int = 0,
        pos: float = 1.0,
        neg: float = 0.0,
        cache_rate: float = 1.0,
        transform: Transform | None = None,
        labels: bool = False,
        cache: CachePolicy | None = None,
    ) -> None:
        if samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {samples_per_volume}")
        self.patch_size = tuple(int(s) for s in patch_size)
        keys_probe = [*modalities, "mask", "labels"]
        # Volumes smaller than a patch are padded (images with their edge value, mask/labels with 0);
        # foreground/background indices of the mask are computed once and cached.
        pad = SpatialPadd(keys=keys_probe, spatial_size=self.patch_size, mode=["edge"] * len(modalities) + ["constant", "constant"], allow_missing_keys=True)
        indices = FgBgToIndicesd(keys="mask", fg_postfix="_fg", bg_postfix="_bg")
        self.volumes = _Volumes(prep_root, subjects, modalities, labels=labels, cache_rate=cache_rate, extra=[pad, indices], policy=cache)
        self.modalities = list(modalities)
        self.samples_per_volume = int(samples_per_volume)
        self.seed = int(seed)
        self.epoch = 0
        self.transform = transform
        self.pos, self.neg = float(pos), float(neg)
        self._file_affines = [nib.load(str(self.volumes.root / s / MASK_FILE)).affine for s in self.volumes.subjects]

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still deterministic) set of patches for ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_volume

    def _rng_seed(self, i: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])

    def __getitem__(self, i: int) -> Item:
        if not 0 <= i < len(self):
            raise IndexError(i)
        v, sample = divmod(i, self.samples_per_volume)
        volume = self.volumes[v]
        # A private copy of the cropper: its random state is per item, never shared between workers.
        crop = RandCropByPosNegLabeld(
            keys=self.volumes.keys, label_key="mask", spatial_size=self.patch_size, pos=self.pos, neg=self.neg,
            num_samples=1, fg_indices_key="mask_fg", bg_indices_key="mask_bg",
        )
        crop.set_random_state(seed=self._rng_seed(i))
        patch = crop({key: volume[key] for key in (*self.volumes.keys, "mask_fg", "mask_bg")})[0]
        start = self._patch_start(self._file_affines[v], patch["mask"])
        item: Item = {key: _plain(patch[key]).clone() for key in self.volumes.keys}
        item.update(subject=self.volumes.subjects[v], sample=sample, patch_start=start)
        return _finish(item, self.modalities, self.transform)

    @staticmethod
    def _patch_start(file_affine: np.ndarray, patch: MetaTensor) -> list[int]:
        # The crop (and any padding) shifts the affine's origin; mapping it back through the
        # file's affine gives the corner's voxel index in the preprocessed file.
        corner = np.linalg.solve(np.asarray(file_affine, dtype=np.float64), np.asarray(patch.affine, dtype=np.float64)[:, 3])[:3]
        return [int(round(c)) for c in corner]
