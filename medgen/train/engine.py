"""The one training engine used by every model: :class:`Trainer` and :class:`TrainConfig`.

The model (a :class:`~medgen.models.base.GenerativeModel`) owns its losses and update order; the
engine owns device placement, mixed precision, data order, data-parallel training, checkpoints
with exact resume, EMA, logging and the non-finite-loss guard.

Exact resume: a checkpoint holds the model, every optimizer, scheduler and loss scaler, the EMA,
every rank's RNG states, the step, the epoch and the number of batches of that epoch already
consumed. The data order is a function of (seed, epoch) only (:mod:`medgen.train.sampler`) and
the DataLoader's worker seeds come from its own generator reseeded per (seed, epoch, rank), so
that a resumed run draws the same batches and the same random numbers as an uninterrupted one.
Sample grids are drawn under a forked RNG so logging never shifts the training's random stream.
(With ``num_workers > 0``, random augmentations inside the dataset are reproducible per epoch
but not across a mid-epoch resume, because the skipped batches are not loaded.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from monai.networks.utils import eval_mode
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medgen.models import artifact
from medgen.models.base import GenerativeModel
from medgen.train import checkpoint as ckpt
from medgen.train import distributed as ddp
from medgen.train.batch_norm import recalibrate_batch_norm
from medgen.train.ema import EMA
from medgen.train.logging import ProgressBar, RunLogger
from medgen.train.sampler import EpochSampler
from medgen.train import precision
from medgen.train.step import EngineStepContext, make_scalers
from medgen.train.determinism import deterministic_mode
from medgen.train.settings import TrainConfig  # noqa: F401 - the engine's settings, imported from here by callers
from medgen.train.validation import Validator

log = logging.getLogger(__name__)

SAMPLE_COUNT = 16
#: batches over which batch-norm statistics are re-estimated for the EMA weights (:meth:`Trainer._recalibrate_batch_norm`)
CALIBRATION_PASSES = 8
#: seed stream of the training items chosen for that (apart from the data order's)
CALIBRATION_STREAM = 1


class Trainer:
    """Trains ``model`` on ``dataset`` (items are dicts of tensors/numbers) as set by ``cfg``.

    Under ``torchrun`` every rank builds its own Trainer; see :mod:`medgen.train.distributed`
    for how the ranks are kept in step. Only rank 0 writes files. ``card`` describes the model
    in ``model.pt`` (:mod:`medgen.models.artifact`) and is, as a dict, the checkpoints' config
    snapshot unless ``config_snapshot`` is given.
    """

    def __init__(
        self, model: GenerativeModel, dataset: Dataset, cfg: TrainConfig, *, config_snapshot: dict | None = None, validator: Validator | None = None,
        card: artifact.ModelCard | None = None,
    ) -> None:
        self.cfg = cfg
        self.validator = validator
        self.best: dict[str, Any] | None = None  # {"step", "value", "key"} of the best validation, + "weights" when they go to model.pt
        self.out_dir = Path(cfg.out_dir)
        self.env = ddp.env_from_environment()
        self.device = ddp.resolve_device(cfg.device, self.env)
        self.model = model.to(self.device)
        if cfg.compile:
            compile_networks(self.model)
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(self.model.configure_optimizers())
        self.schedulers: dict[str, Any] = dict(self.model.configure_schedulers(self.optimizers, cfg.max_steps))
        self.amp_dtype = precision.autocast_dtype(cfg.precision if cfg.amp else "fp32", self.device)
        if self.env.is_main:
            log.info("training on %s in %s", self.device, precision.describe(self.amp_dtype))
        self.scalers = make_scalers(list(self.optimizers), self.device, self.amp_dtype)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.ctx = EngineStepContext(
            self.optimizers, self.scalers, device=self.device, amp_dtype=self.amp_dtype, grad_clip=cfg.grad_clip, env=self.env
        )
        self.sampler = EpochSampler(len(dataset), seed=cfg.seed, num_replicas=self.env.world_size, rank=self.env.rank)
        self.drop_last = self.sampler.samples_per_replica >= cfg.batch_size  # else one short batch per epoch
        self._loader_generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda",
            generator=self._loader_generator,  # keeps iter(loader) from drawing on the global RNG
        )
        self.card = None if card is None else artifact.ModelCard.from_dict(ckpt.plain(card.to_dict()))
        if config_snapshot is None and self.card is not None:
            config_snapshot = self.card.to_dict()
        self.config_snapshot = ckpt.plain(config_snapshot or {})
        self.step = 0  # completed optimisation steps
        self.epoch = 0
        self.batches_in_epoch = 0  # batches of `epoch` already consumed
        self._can_sample = True
        self._owns_process_group = False

    # ------------------------------------------------------------------------------- properties
    @property
    def steps_per_epoch(self) -> int:
        per_rank = self.sampler.samples_per_replica
        return per_rank // self.cfg.batch_size if self.drop_last else math.ceil(per_rank / self.cfg.batch_size)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / ckpt.CHECKPOINT_NAME

    # ---------------------------------------------------------------------------------- fitting
    def fit(self, resume: bool = True) -> dict:
        """Train until ``cfg.max_steps``; resume from ``out_dir/checkpoint.pt`` if present and ``resume``.

        Returns the last logged scalars (``loss/<term>``, ``lr/<optimizer>``, ``images_per_s``)
        with ``step`` and ``epoch``. Raises :class:`~medgen.errors.NonFiniteLossError` on a
        NaN/inf loss, leaving the last good checkpoint in place.
        """
        self._owns_process_group = ddp.init_process_group(self.env, self.device)
        try:
            resumed = self._start(resume)
            logger = RunLogger(self.out_dir, enabled=self.env.is_main, resume_step=self.step if resumed else None)
            bar = ProgressBar(self.cfg.max_steps, self.step, enabled=self.env.is_main)
            try:
                with deterministic_mode(self.cfg.deterministic):
                    metrics = self._loop(logger, bar, fresh=not resumed)
            finally:
                bar.close()
                logger.close()
            if self.env.is_main:
                self.save_final()
            ddp.barrier(self.env)
            return metrics
        finally:
            if self._owns_process_group:
                ddp.destroy_process_group()
                self._owns_process_group = False

    def _start(self, resume: bool) -> bool:
        """Load the checkpoint (True) or seed a fresh run (False)."""
        if self.env.is_main:
            stale_files = [*ckpt.remove_stale_temps(self.checkpoint_path), *ckpt.remove_stale_temps(self.out_dir / ckpt.FINAL_NAME)]
            for stale in stale_files:
                log.warning("removed %s left by an interrupted checkpoint write", stale)
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
            log.info("resumed from %s at step %d", self.checkpoint_path, self.step)
            return True
        if self.checkpoint_path.exists() and self.env.is_main:
            log.warning("starting afresh in %s; its checkpoint will be overwritten at step %d", self.out_dir, self.cfg.ckpt_every)
        self.step = self.epoch = self.batches_in_epoch = 0
        ckpt.seed_everything(self.cfg.seed + self.env.rank)
        return False

    def _loop(self, logger: RunLogger, bar: ProgressBar, *, fresh: bool) -> dict:
        self.model.train()
        window = _Window()
        metrics: dict[str, Any] = {}
        while self.step < self.cfg.max_steps:
            for batch in self._epoch_batches():
                if fresh:
                    self._initialize(batch)
                    fresh = False
                losses = self._train_step(batch)
                window.add(losses, images=_batch_len(batch) * self.env.world_size)
                bar.update({f"loss/{k}": v for k, v in losses.items()} | {"img/s": window.rate()})
                self._after_step(logger, window, metrics)
                if self.step >= self.cfg.max_steps:
                    break
        metrics.update(step=self.step, epoch=self.epoch)
        return metrics

    def _after_step(self, logger: RunLogger, window: "_Window", metrics: dict[str, Any]) -> None:
        """Log, draw samples and checkpoint as scheduled (checkpoint last: it ends the step)."""
        final = self.step >= self.cfg.max_steps
        if self.step % self.cfg.log_every == 0 or final:
            scalars = self._scalars(window)
            logger.log_scalars(self.step, scalars, epoch=self.epoch)
            metrics.clear()
            metrics.update(scalars)
            window.reset()
        t0 = time.perf_counter()
        if self.validator is not None and self.cfg.val_every > 0 and (self.step % self.cfg.val_every == 0 or final):
            self._validate(logger)
        if self.cfg.image_every > 0 and (self.step % self.cfg.image_every == 0 or final):
            self._log_samples(logger)
        if self.step % self.cfg.ckpt_every == 0 or final:
            self.save_checkpoint()
        window.pause(time.perf_counter() - t0)  # images/s measures training, not file writing

    def _initialize(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Data-dependent init on the first batch of a fresh run, then make every rank match rank 0."""
        with torch.no_grad():
            self.model.initialize_from_batch(batch)
        ddp.broadcast_module(self.model, self.env)
        if self.ema is not None:
            self.ema.reset(self.model)

    def _train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One model step, then schedulers, buffer sync and EMA; advances the counters."""
        self.ctx.step = self.step + 1
        self.ctx.grad_norms.clear()
        losses = self.model.training_step(batch, self.ctx)
        for scheduler in self.schedulers.values():
            scheduler.step()
        ddp.broadcast_module(self.model, self.env, buffers_only=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.batches_in_epoch += 1
        if self.batches_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.batches_in_epoch = 0
        return {k: float(v) for k, v in losses.items()}

    def _epoch_batches(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch's batches, on the device (calls ``dataset.set_epoch`` if it has one)."""
        self.sampler.set_epoch(self.epoch)
        set_dataset_epoch = getattr(self.loader.dataset, "set_epoch", None)
        if callable(set_dataset_epoch):  # e.g. PatchDataset draws new patches per epoch
            set_dataset_epoch(self.epoch)
        self.sampler.set_start(self.batches_in_epoch * self.cfg.batch_size)
        seed = np.random.SeedSequence([self.cfg.seed, self.epoch, self.env.rank]).generate_state(1)[0]
        self._loader_generator.manual_seed(int(seed))
        for batch in self.loader:
            yield _to_device(batch, self.device)

    # ---------------------------------------------------------------------------------- logging
    def _scalars(self, window: "_Window") -> dict[str, float]:
        scalars = {f"loss/{k}": v for k, v in window.means().items()}
        scalars.update({f"lr/{name}": float(opt.param_groups[0]["lr"]) for name, opt in self.optimizers.items()})
        scalars.update({f"grad_norm/{name}": v for name, v in self.ctx.grad_norms.items()})
        scalars["images_per_s"] = window.rate()
        return scalars

    def _log_samples(self, logger: RunLogger) -> None:
        """Grid of ``model.sample(16)`` with EMA weights, fixed noise, outside the training RNG stream."""
        if not (self.env.is_main and self._can_sample):
            return
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed)  # the same noise at every step: grids are comparable
            try:
                images = self._sample(SAMPLE_COUNT)
            except NotImplementedError:
                self._can_sample = False
                log.info("%s cannot sample unconditionally; no sample grids", type(self.model).__name__)
                return
        logger.log_images(self.step, images)

    def _validate(self, logger: RunLogger) -> None:
        """Score the inference weights (EMA if enabled) with the validator; remember the best step,
        and its weights when the validator selects them for model.pt."""
        if not self.env.is_main:
            return
        with self._inference_model() as model:
            scores = {k: float(v) for k, v in self.validator(model).items()}
            key = self.validator.key
            value = scores[key]
            if math.isfinite(value) and (self.best is None or value < self.best["value"]):
                self.best = {"step": self.step, "value": value, "key": key}
                if self.validator.selects_weights:
                    self.best["weights"] = _cpu_copy(model.state_dict())
        best = self.best["value"] if self.best is not None else float("nan")
        logger.log_scalars(self.step, {**scores, f"{key}_best": best}, epoch=self.epoch)
        log.info("step %d: %s %.4g (best %.4g at step %s)", self.step, key, value, best, self.best["step"] if self.best else "-")

    @contextlib.contextmanager
    def _inference_model(self) -> Iterator[GenerativeModel]:
        """The model holding the weights model.pt would hold now, in eval mode: the EMA's if enabled,
        with batch-norm statistics re-estimated for them (:meth:`_recalibrate_batch_norm`). The
        training weights and buffers come back afterwards."""
        if self.ema is None:
            with eval_mode(self.model):
                yield self.model
            return
        with eval_mode(self.model), self.ema.swapped_into(self.model):
            self._recalibrate_batch_norm()
            yield self.model

    def _recalibrate_batch_norm(self) -> None:
        """Batch-norm statistics for the weights in the model now (the EMA's, beside which the
        copied statistics describe the live weights), re-estimated over :meth:`_calibration_passes`
        under a forked RNG seeded by the run's seed: they depend on the weights (and, for data, the
        epoch) alone, and the training's random stream is untouched."""
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed)
            try:
                recalibrate_batch_norm(self.model, self._calibration_passes())
            except NotImplementedError:  # a model that samples only with a condition it cannot make up
                pass

    def _calibration_passes(self) -> list[Callable[[], Any]]:
        """The model's inference on ``CALIBRATION_PASSES`` batches: a generation model samples a
        training batch's worth of images per pass; a translation model translates the sources of
        a fixed, seeded choice of training items (items are functions of (seed, epoch, index), so
        resumed and uninterrupted runs calibrate alike). Label-map models: none (no batch norm)."""
        n = self.cfg.batch_size
        if self.model.kind == "generation" and self._can_sample:
            return [lambda: self.model.sample(n)] * CALIBRATION_PASSES
        if self.model.kind != "translation":
            return []
        dataset = self.loader.dataset
        chosen = np.random.default_rng([self.cfg.seed, CALIBRATION_STREAM]).permutation(len(dataset))[: n * CALIBRATION_PASSES]

        def translate(items: np.ndarray) -> torch.Tensor:  # loads its batch only when run (not for a model without batch norm)
            batch = _to_device(self.loader.collate_fn([dataset[int(i)] for i in items]), self.device)
            return self.model.translate(batch["source"])

        return [lambda items=chosen[s : s + n]: translate(items) for s in range(0, len(chosen), n)]

    def _inference_weights(self) -> dict[str, torch.Tensor]:
        """The weights model.pt would hold now (see :meth:`_inference_model`), detached on the CPU."""
        with self._inference_model() as model:
            return _cpu_copy(model.state_dict())

    def _sample(self, n: int) -> torch.Tensor:
        with self._inference_model() as model:
            return model.sample(n)

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Path | str | None = None) -> Path | None:
        """Write the full training state (rank 0; every rank must call it: RNG states are gathered)."""
        rng = ddp.gather_objects(ckpt.capture_rng_state(), self.env)
        if not self.env.is_main:
            return None
        _refuse_nonfinite(self.model.state_dict(), f"checkpoint at step {self.step}")
        state = {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "world_size": self.env.world_size,
            "model": self.model.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "scalers": {k: v.state_dict() for k, v in self.scalers.items()},
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": rng,
            "config": self.config_snapshot,
            "train_config": ckpt.plain(self.cfg),
            "best": self.best,
        }
        return ckpt.atomic_save(state, path or self.checkpoint_path)

    def load_checkpoint(self, path: Path | str) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (weights-only load)."""
        state = ckpt.load_checkpoint(path, map_location="cpu")
        self.model.load_state_dict(state["model"])
        _load_named("optimizer", self.optimizers, state["optimizers"], path)
        _load_named("scheduler", self.schedulers, state["schedulers"], path)
        _load_named("loss scaler", self.scalers, state["scalers"], path)
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.reset(self.model)
        self.step, self.epoch, self.batches_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batches_in_epoch"])
        if self.batches_in_epoch >= self.steps_per_epoch:  # e.g. batch size changed
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        self._restore_rng(state["rng"])
        self.best = state.get("best")
        if not _same(state.get("config"), self.config_snapshot):
            log.warning("%s was written with a different config snapshot; continuing with the current one", path)

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        if len(states) == self.env.world_size:
            ckpt.restore_rng_state(states[self.env.rank])
            return
        log.warning("checkpoint has RNG states of %d rank(s), this run has %d: reseeding", len(states), self.env.world_size)
        ckpt.seed_everything(self.cfg.seed + self.env.rank + 7919 * self.step)

    def save_final(self, path: Path | str | None = None) -> Path:
        """Write ``out_dir/model.pt``: inference weights (EMA if enabled) + the model card, atomically.

        With a validator that selects weights, those of the best validated step (the card's
        ``validation`` says which); else the last."""
        selected = self.best is not None and "weights" in self.best
        weights = self.best["weights"] if selected else self._inference_weights()
        validation = {k: self.best[k] for k in ("key", "step", "value")} if selected else None
        _refuse_nonfinite(weights, f"model.pt at step {self.step}")
        card = self.card or artifact.ModelCard(model=f"{type(self.model).__module__}.{type(self.model).__qualname__}")
        card = card.with_training(step=self.step, ema=self.ema is not None, train_config=ckpt.plain(self.cfg), validation=validation)
        return artifact.save(path or self.out_dir / ckpt.FINAL_NAME, card, weights)


# -------------------------------------------------------------------------------------- helpers
def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _refuse_nonfinite(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise FloatingPointError instead of writing weights that hold NaN/inf (the last good file stays)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"{what} not written: non-finite values in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


def compile_networks(model: nn.Module) -> None:
    """``torch.compile`` each direct sub-network in place (``Module.compile`` keeps state_dict keys)."""
    for child in model.children():
        if any(True for _ in child.parameters()):
            child.compile()


def _load_named(kind: str, targets: Mapping[str, Any], states: Mapping[str, Any], path: Path | str) -> None:
    if set(targets) != set(states):
        raise ckpt.CheckpointError(f"{path}: {kind}s {sorted(states)} do not match this model's {sorted(targets)}")
    for name, target in targets.items():
        target.load_state_dict(states[name])


def _same(a: Any, b: Any) -> bool:
    """Equality of config snapshots that tolerates tensors inside (never raises)."""
    try:
        return bool(a == b)
    except (RuntimeError, ValueError):
        return False


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_len(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class _Window:
    """Loss sums and image counts since the last log point (for interval means and images/s)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.images = 0
        self.t0 = time.perf_counter()

    def add(self, losses: Mapping[str, float], *, images: int) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.images += images

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` spent outside training out of the rate."""
        self.t0 += seconds

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def rate(self) -> float:
        """Images per second (all ranks) since the window began."""
        elapsed = time.perf_counter() - self.t0
        return self.images / elapsed if elapsed > 0 else 0.0
