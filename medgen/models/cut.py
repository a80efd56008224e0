"""CUT and FastCUT (Park, Efros, Zhang & Zhu 2020, arXiv:2007.15651): contrastive unpaired translation.

One ResNet generator G (source -> target), one PatchGAN D on the target domain, and the
multilayer PatchNCE loss (§3.1-3.2): for each chosen encoder layer l of G, the feature maps of
the input x (keys, no gradient) and of the output G(x) re-encoded by G's own encoder (queries)
are sampled at the same ``num_patches`` random locations, projected by a per-layer 2-layer MLP
(``mlp_dim`` units, ReLU between) and L2-normalised. Each query's positive is the key at its own
location, the negatives the keys at the other sampled locations of the same image:

    ℓ(v, v⁺, v⁻) = -log[exp(v·v⁺/τ) / (exp(v·v⁺/τ) + Σₙ exp(v·v⁻ₙ/τ))],   τ = 0.07

written as cross-entropy over [positive, negatives] with the positive at index 0, averaged over
patches, images and layers.

* ``mode: cut``: λ_GAN 1, λ_NCE 1, identity PatchNCE on the target domain (NCE between y and
  G(y), averaged with the x term).
* ``mode: fastcut``: λ_NCE 10, no identity term, flip-equivariance: with probability ½ per step
  G gets the horizontally flipped source and the query features are flipped back before being
  compared with the keys of the unflipped source (decision drawn from the torch CPU generator,
  which the engine checkpoints, so a resumed run makes the same choices).

Differences from the paper's description, by design:

* The MLP heads are built eagerly in ``__init__`` from the generator's known channel counts
  (the paper creates them lazily on the first batch), so ``configure_optimizers`` covers them
  from the start and checkpoints always hold them. G and the heads share the ``"g"`` optimizer
  (same Adam settings).
* The key features of x (and y) are taken from the same G forward pass that produces G(x)
  (and G(y)) instead of a second encoder pass: keys carry no gradient and the weights are the
  same, so the values are identical. Only a flipped FastCUT step needs a separate (no-grad)
  encoder pass on the unflipped source. Query encoding stops at the deepest NCE layer.
* With batch norm, the generator normalises the sources by themselves: with the identity term
  it runs on x and on y in separate passes (instead of one on [x; y]), and only the pass on x
  updates the running statistics; the re-encoding of its outputs (and FastCUT's extra pass) uses
  batch statistics without updating them (:func:`running_stats_frozen`). A T1w -> CT generator
  trained on [x; y] had learnt to work with T1w normalised by T1w-and-CT statistics, which a
  translation of T1w alone (and the re-estimated statistics of the EMA weights) does not give; its
  translations came out too dark. In the CPU study (2,500 steps) the test MAE went from 230.6 to
  144.7 HU with this change. With instance norm (the paper's) the one pass over [x; y] stays.
* The ``"input"`` layer is the raw image (not its reflection-padded version).

Update order per step: D on (y, G(x)), then G (+ heads) on λ_GAN·GAN + λ_NCE·NCE with D frozen.
Spatial sizes must be divisible by 4. 3D patches are sampled over D·H·W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from medgen.models.adversarial import gan_optimizers
from medgen.models.base import StepContext
from medgen.models.gan import dcgan_init
from medgen.models.options import TranslationOptions, check_choice
from medgen.models.running_stats import running_stats_frozen
from medgen.models.translation_base import TranslationModel, set_requires_grad
from medgen.models.translation_generators import ResnetGenerator, check_image

MODES = ("cut", "fastcut")


@dataclass
class CUTConfig(TranslationOptions):
    """Options of :class:`CUT` (the YAML ``model:`` section): :class:`TranslationOptions` plus
    these; ``None`` = the mode's default."""

    mode: str = "cut"  # cut | fastcut
    n_blocks: int = 9
    lambda_gan: float = 1.0
    lambda_nce: float | None = None  # cut: 1, fastcut: 10
    nce_idt: bool | None = None  # identity PatchNCE on the target domain; cut: True, fastcut: False
    flip_equivariance: bool | None = None  # cut: False, fastcut: True
    # generator layer ids (ResnetGenerator): input, stem, down1, down2, res1..res<n_blocks>;
    # None = input, down1, down2, res1 and the middle residual block
    nce_layers: tuple[str, ...] | None = None
    num_patches: int = 256  # per layer and image
    nce_temperature: float = 0.07
    mlp_dim: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        fast = self.mode == "fastcut"
        if self.lambda_nce is None:
            self.lambda_nce = 10.0 if fast else 1.0
        if self.nce_idt is None:
            self.nce_idt = not fast
        if self.flip_equivariance is None:
            self.flip_equivariance = fast
        if self.n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {self.n_blocks}")
        if self.nce_layers is None:
            self.nce_layers = ("input", "down1", "down2", "res1", f"res{(self.n_blocks + 1) // 2}")
        self.nce_layers = tuple(dict.fromkeys(self.nce_layers))  # YAML list -> tuple, no duplicates
        if not self.nce_layers:
            raise ValueError("nce_layers must name at least one layer")
        if self.num_patches < 2 or self.mlp_dim < 1 or self.nce_temperature <= 0:
            raise ValueError("num_patches must be >= 2, mlp_dim >= 1 and nce_temperature > 0")
        if self.in_channels != self.out_channels:
            raise ValueError(
                f"in_channels {self.in_channels} != out_channels {self.out_channels}: PatchNCE encodes the translation with the "
                "generator's own encoder, so its input and output must have the same channels (no 2.5D source; CycleGAN and pix2pix take one)"
            )


def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """PatchNCE for one layer: query, key (B, P, D), L2-normalised, same locations; -> scalar.

    Logits per query: [q·k⁺, q·k⁻₁ ... q·k⁻_{P-1}] / τ, the negatives being the keys of the other
    P-1 locations of the same image; cross-entropy with target 0, in float32. For unrelated
    random directions the loss is ≈ log P; for query = key and small τ it is ≈ 0.
    """
    query, key = query.float(), key.detach().float()
    b, p, _ = query.shape
    l_pos = (query * key).sum(-1, keepdim=True)  # (B, P, 1)
    l_neg = torch.bmm(query, key.transpose(1, 2))  # (B, P, P); diagonal = the positives
    eye = torch.eye(p, dtype=torch.bool, device=query.device)
    l_neg = l_neg.masked_fill(eye, -1e4)  # exp(-1e4/τ) = 0: a location is not its own negative
    logits = torch.cat([l_pos, l_neg], dim=-1).flatten(0, 1) / temperature  # (B·P, 1 + P)
    target = torch.zeros(b * p, dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


class PatchSampleHeads(nn.Module):
    """Per-layer MLP heads (Linear C->mlp_dim, ReLU, Linear mlp_dim->mlp_dim) + L2 norm, and the
    shared random patch locations for keys and queries."""

    def __init__(self, channels: Mapping[str, int], mlp_dim: int = 256) -> None:
        super().__init__()
        self.layers = tuple(channels)
        self.heads = nn.ModuleDict({name: nn.Sequential(nn.Linear(c, mlp_dim), nn.ReLU(True), nn.Linear(mlp_dim, mlp_dim)) for name, c in channels.items()})

    @staticmethod
    def draw_locations(feats: Sequence[torch.Tensor], num_patches: int) -> list[torch.Tensor]:
        """Per feature map (B, C, *S): min(num_patches, prod S) distinct flat indices into S."""
        out = []
        for f in feats:
            n = math.prod(f.shape[2:])
            out.append(torch.randperm(n, device=f.device)[: min(num_patches, n)])
        return out

    def forward(self, feats: Sequence[torch.Tensor], locations: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Feature maps (B, C, *S) at ``self.layers`` -> projected patches (B, P, mlp_dim), unit norm."""
        out = []
        for name, f, idx in zip(self.layers, feats, locations):
            patches = f.flatten(2)[:, :, idx].transpose(1, 2).float()  # (B, P, C)
            out.append(F.normalize(self.heads[name](patches), dim=-1))
        return out


def _flip(feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [f.flip(-1) for f in feats]


class CUT(TranslationModel):
    """Networks ``generator``, ``heads`` (PatchNCE MLPs) and ``discriminator``; optimizers ``"g"``
    (generator and heads) and ``"d"``."""

    config_class = CUTConfig
    kind = "translation"

    def __init__(self, config: CUTConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self.generator = ResnetGenerator(cfg.spatial_dims, cfg.in_channels, cfg.out_channels, cfg.ngf, cfg.n_blocks, cfg.norm)
        self.generator.check_layers(cfg.nce_layers)
        self.heads = PatchSampleHeads({name: self.generator.feature_channels[name] for name in cfg.nce_layers}, cfg.mlp_dim)
        self.discriminator = self.patch_discriminator(cfg.out_channels)
        dcgan_init(self.generator, cfg.init_std)
        dcgan_init(self.heads, cfg.init_std)
        # instance norm: images of a batch do not affect each other, so x and y can share a pass
        self._per_image_norm = not any(isinstance(m, _BatchNorm) for m in self.generator.modules())

    def _translator(self) -> ResnetGenerator:
        return self.generator

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        g_params = [*self.generator.parameters(), *self.heads.parameters()]
        return gan_optimizers(g_params, self.discriminator.parameters(), lr_g=cfg.lr, lr_d=cfg.lr, betas=cfg.betas)

    # -- PatchNCE ----------------------------------------------------------------------------
    def nce_from_features(self, query_feats: Sequence[torch.Tensor], key_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean over layers of PatchNCE between query and key feature maps (same shapes per layer)."""
        locations = self.heads.draw_locations(key_feats, self.config.num_patches)
        keys = self.heads([k.detach() for k in key_feats], locations)
        queries = self.heads(query_feats, locations)
        losses = [patch_nce_loss(q, k, self.config.nce_temperature) for q, k in zip(queries, keys)]
        return torch.stack(losses).mean()

    def nce_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PatchNCE between an input x and an output y = G(x) (separate passes; for inspection)."""
        layers = self.config.nce_layers
        return self.nce_from_features(self.generator.encode(y, layers), self.generator.encode(x, layers))

    # -- training ----------------------------------------------------------------------------
    def _generate(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """G on the sources x and, for the identity term, on the targets y: outputs [G(x); G(y)]
        and the features at the NCE layers, [x; y] per layer. With a per-image norm (instance) one
        pass over both, which gives the same values; with batch norm one pass each, so that sources
        are normalised by statistics of sources, as in inference, and the pass on targets (a domain
        inference never sees) leaves the running statistics alone."""
        layers = self.config.nce_layers
        if y is None or self._per_image_norm:
            return self.generator.forward_with_features(x if y is None else torch.cat([x, y]), layers)
        out_x, feats_x = self.generator.forward_with_features(x, layers)
        with running_stats_frozen(self.generator):
            out_y, feats_y = self.generator.forward_with_features(y, layers)
        return torch.cat([out_x, out_y]), [torch.cat(pair) for pair in zip(feats_x, feats_y)]

    def _encode_outputs(self, out: torch.Tensor, n: int) -> list[torch.Tensor]:
        """Query features of the outputs [G(x); G(y)] (the first ``n`` are G(x)), batched as
        :meth:`_generate` batches their inputs; never folded into the running statistics."""
        layers = self.config.nce_layers
        with running_stats_frozen(self.generator):
            if self._per_image_norm or out.shape[0] == n:
                return self.generator.encode(out, layers)
            queries_x, queries_y = self.generator.encode(out[:n], layers), self.generator.encode(out[n:], layers)
        return [torch.cat(pair) for pair in zip(queries_x, queries_y)]

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """D update, then G + heads update on λ_GAN·GAN + λ_NCE·PatchNCE."""
        cfg = self.config
        x, y = batch["source"], batch["target"]
        check_image(y, cfg.spatial_dims, cfg.out_channels, 4, "target")
        n, layers = x.shape[0], cfg.nce_layers
        flipped = bool(cfg.flip_equivariance) and float(torch.rand(())) < 0.5
        x_in = x.flip(-1) if flipped else x
        with ctx.autocast():
            out, feats = self._generate(x_in, y if cfg.nce_idt else None)
            fake = out[:n]
            if flipped:  # keys must come from the unflipped source
                with torch.no_grad(), running_stats_frozen(self.generator):
                    keys_x = self.generator.encode(x, layers)
            else:
                keys_x = [f[:n].detach() for f in feats]
            keys_y = [f[n:].detach() for f in feats] if cfg.nce_idt else None
            real_logits = self.discriminator(y)
            fake_logits = self.discriminator(fake.detach())
        d_loss = ctx.backward_and_step("d_loss", self.criterion.d_loss(real_logits, fake_logits), "d")

        set_requires_grad(self.discriminator, False)
        try:
            with ctx.autocast():
                adv = self.criterion.g_loss(self.discriminator(fake))
                queries = self._encode_outputs(out, n)
            queries_x = [q[:n] for q in queries]
            if flipped:
                queries_x = _flip(queries_x)
            nce = self.nce_from_features(queries_x, keys_x)
            nce_y = self.nce_from_features([q[n:] for q in queries], keys_y) if cfg.nce_idt else None
            nce_total = 0.5 * (nce + nce_y) if nce_y is not None else nce
            g_total = cfg.lambda_gan * adv + cfg.lambda_nce * nce_total
        finally:
            set_requires_grad(self.discriminator, True)
        g_loss = ctx.backward_and_step("g_loss", g_total, "g")
        logs = {"g_loss": g_loss, "d_loss": d_loss, "g_adv": float(adv.detach()), "nce": float(nce.detach())}
        if nce_y is not None:
            logs["nce_idt"] = float(nce_y.detach())
        return logs


@dataclass
class FastCUTConfig(CUTConfig):
    """:class:`CUTConfig` with ``mode`` defaulting to ``fastcut``."""

    mode: str = "fastcut"


class FastCUT(CUT):
    """CUT in FastCUT mode (λ_NCE 10, no identity NCE, flip-equivariance)."""

    config_class = FastCUTConfig
