"""Networks and helpers shared by the image-to-image translation models (CycleGAN, CUT, pix2pix).

* :class:`ResnetGenerator` (Johnson et al. 2016, as used by CycleGAN, Zhu et al. 2017, and CUT,
  Park et al. 2020): reflection-padded 7^d stem, two stride-2 downsamplings, ``n_blocks``
  residual blocks, two transposed-conv upsamplings, 7^d conv and tanh. Hand-written: MONAI has
  no CycleGAN-style ResNet generator, and CUT needs the encoder's intermediate features by name.
* :class:`UNetGenerator` (pix2pix, Isola et al. 2017): k4 s2 convolutions down to a bottleneck,
  transposed convolutions up with skip concatenation, dropout in the deepest decoder layers.
* :class:`PatchDiscriminatorLogits`: MONAI's ``PatchDiscriminator`` (70x70 PatchGAN for
  ``num_layers_d=3``) returning only its logits, with a readable error for too small inputs.
* :class:`AdversarialCriterion` (lsgan | vanilla | hinge), :class:`ImagePool` (Shrivastava et al.
  2017), :func:`linear_decay_schedulers` and the :class:`TranslationModel` base class
  (``translate``, ``preview``, input checks).

3D uses Conv3d, InstanceNorm3d / BatchNorm3d and ReflectionPad3d (torch has reflection padding
in 3D, so both dimensionalities pad alike). All generators are fully convolutional: any spatial size divisible by their ``divisor``
(4 for the ResNet generator, ``2**num_downs`` for the U-Net) works at inference.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn

from medgen.models.base import GenerativeModel
from medgen.models.gan import bce_with_logits, generator_bce_loss

GAN_LOSSES = ("lsgan", "vanilla", "hinge")
NORMS = ("instance", "batch")


# -- option checks -----------------------------------------------------------------------------
def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_common(cfg: Any) -> None:
    """Checks shared by every translation config (spatial_dims, channels, optimiser options)."""
    if cfg.spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {cfg.spatial_dims}")
    for name in ("in_channels", "out_channels", "ngf", "ndf", "num_layers_d"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    check_choice("norm", cfg.norm, NORMS)
    check_choice("gan_loss", cfg.gan_loss, GAN_LOSSES)
    if not 0.0 <= cfg.lr_decay_start <= 1.0:
        raise ValueError(f"lr_decay_start must be in [0, 1] (a fraction of max_steps), got {cfg.lr_decay_start}")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    cfg.betas = tuple(cfg.betas)  # YAML gives a list


def check_image(x: torch.Tensor, spatial_dims: int, channels: int, divisor: int, what: str = "input") -> None:
    """Raise ValueError unless ``x`` is (N, channels, *spatial) with every spatial size divisible by ``divisor``."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != channels:
        raise ValueError(f"{what} must have shape (N, {channels}, {', '.join('S' * spatial_dims)}), got {tuple(x.shape)}")
    bad = [s for s in x.shape[2:] if s % divisor]
    if bad:
        raise ValueError(
            f"{what} spatial size {tuple(x.shape[2:])} is not divisible by {divisor} (the generator's total "
            f"downsampling factor); pad or crop every spatial dimension to a multiple of {divisor}"
        )


# -- layers ------------------------------------------------------------------------------------
def conv_cls(d: int) -> type[nn.Module]:
    return nn.Conv2d if d == 2 else nn.Conv3d


def conv_transpose_cls(d: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if d == 2 else nn.ConvTranspose3d


def reflection_pad(d: int, p: int) -> nn.Module:
    return nn.ReflectionPad2d(p) if d == 2 else nn.ReflectionPad3d(p)


def norm_layer(kind: str, d: int, channels: int) -> nn.Module:
    """Instance norm without affine parameters or running statistics (as in CycleGAN), or batch norm."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels) if d == 2 else nn.InstanceNorm3d(channels)
    return nn.BatchNorm2d(channels) if d == 2 else nn.BatchNorm3d(channels)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, ReLU, pad, conv3, norm](x), channel count kept (He et al. 2016)."""

    def __init__(self, channels: int, d: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        conv = conv_cls(d)
        bias = norm != "instance"  # a bias before non-affine instance norm is removed by it
        layers: list[nn.Module] = [reflection_pad(d, 1), conv(channels, channels, 3, bias=bias), norm_layer(norm, d, channels), nn.ReLU(True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [reflection_pad(d, 1), conv(channels, channels, 3, bias=bias), norm_layer(norm, d, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(N, in_channels, *S) -> (N, out_channels, *S) in (-1, 1); every S divisible by 4.

    Encoder stages, each addressable by its layer id for feature extraction (CUT):
    ``"input"`` (the image itself), ``"stem"`` (7^d conv, ngf), ``"down1"`` (2·ngf, S/2),
    ``"down2"`` (4·ngf, S/4), ``"res1"`` ... ``"res<n_blocks>"`` (4·ngf, S/4); features are the
    stage outputs (after norm and ReLU / after the residual sum).
    """

    divisor = 4  # two stride-2 downsamplings

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 9, norm: str = "instance", dropout: float = 0.0) -> None:
        super().__init__()
        d = spatial_dims
        conv, up = conv_cls(d), conv_transpose_cls(d)
        bias = norm != "instance"
        self.spatial_dims, self.in_channels, self.out_channels = d, in_channels, out_channels
        stages: dict[str, nn.Module] = {
            "stem": nn.Sequential(reflection_pad(d, 3), conv(in_channels, ngf, 7, bias=bias), norm_layer(norm, d, ngf), nn.ReLU(True)),
        }
        channels = {"input": in_channels, "stem": ngf}
        c = ngf
        for i in (1, 2):
            stages[f"down{i}"] = nn.Sequential(conv(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_layer(norm, d, 2 * c), nn.ReLU(True))
            c *= 2
            channels[f"down{i}"] = c
        for i in range(1, n_blocks + 1):
            stages[f"res{i}"] = ResnetBlock(c, d, norm, dropout)
            channels[f"res{i}"] = c
        self.encoder = nn.ModuleDict(stages)  # ordered: iteration follows the data flow
        decoder: list[nn.Module] = []
        for _ in (1, 2):
            decoder += [up(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias), norm_layer(norm, d, c // 2), nn.ReLU(True)]
            c //= 2
        decoder += [reflection_pad(d, 3), conv(c, out_channels, 7), nn.Tanh()]
        self.decoder = nn.Sequential(*decoder)
        self.feature_channels: dict[str, int] = channels
        self.layer_ids: tuple[str, ...] = tuple(channels)

    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [name for name in layers if name not in self.feature_channels]
        if unknown:
            raise ValueError(f"unknown generator layer id(s) {unknown}; valid: {', '.join(self.layer_ids)}")

    def _run_encoder(self, x: torch.Tensor, layers: Sequence[str], stop_early: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        wanted = set(layers)
        found: dict[str, torch.Tensor] = {"input": x} if "input" in wanted else {}
        h = x
        for name, stage in self.encoder.items():
            if stop_early and len(found) == len(wanted):
                break  # deeper stages are not needed for the requested features
            h = stage(h)
            if name in wanted:
                found[name] = h
        return h, [found[name] for name in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        h, _ = self._run_encoder(x, (), stop_early=False)
        return self.decoder(h)

    def forward_with_features(self, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and the encoder features at ``layers`` (in that order) from one pass."""
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        h, feats = self._run_encoder(x, layers, stop_early=False)
        return self.decoder(h), feats

    def encode(self, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        """Encoder features at ``layers``; stops after the deepest requested stage."""
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        return self._run_encoder(x, layers, stop_early=True)[1]


class UNetGenerator(nn.Module):
    """pix2pix U-Net: (N, in_channels, *S) -> (N, out_channels, *S) in (-1, 1); S divisible by 2**num_downs.

    Level i (0 = outermost) has ``ngf·min(2**i, 8)`` channels. Encoder: k4 s2 conv, LeakyReLU 0.2
    before every conv but the first, norm after every conv but the first and the innermost.
    Decoder: ReLU, k4 s2 transposed conv, norm (tanh at the outermost), dropout on the up-convs
    of the three levels next to the bottleneck; each decoder output is concatenated with the
    encoder feature of the same resolution. Hand-written rather than MONAI's ``BasicUNet`` /
    ``UNet``: those apply dropout in every block (encoder included), end without tanh, and use
    different down/up blocks than the paper's.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, ngf: int = 64, num_downs: int = 7, norm: str = "batch", dropout: float = 0.5) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"num_downs must be >= 2, got {num_downs}")
        d = spatial_dims
        conv, up = conv_cls(d), conv_transpose_cls(d)
        bias = norm != "batch"  # batch norm has its own shift
        self.spatial_dims, self.in_channels, self.divisor = d, in_channels, 2**num_downs
        ch = [ngf * min(2**i, 8) for i in range(num_downs)]
        inner = num_downs - 1
        downs: list[nn.Module] = [conv(in_channels, ch[0], 4, stride=2, padding=1, bias=True)]
        for i in range(1, num_downs):
            layers: list[nn.Module] = [nn.LeakyReLU(0.2, True), conv(ch[i - 1], ch[i], 4, stride=2, padding=1, bias=bias or i == inner)]
            if i != inner:
                layers.append(norm_layer(norm, d, ch[i]))
            downs.append(nn.Sequential(*layers))
        ups: list[nn.Module] = []
        for i in range(num_downs):
            c_in = ch[i] if i == inner else 2 * ch[i]
            if i == 0:
                ups.append(nn.Sequential(nn.ReLU(True), up(c_in, out_channels, 4, stride=2, padding=1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), up(c_in, ch[i - 1], 4, stride=2, padding=1, bias=bias), norm_layer(norm, d, ch[i - 1])]
            if dropout > 0 and inner - 3 <= i < inner:
                layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        skips = []
        h = x
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = self.ups[-1](skips[-1])
        for i in range(len(self.ups) - 2, -1, -1):
            h = self.ups[i](torch.cat([skips[i], h], dim=1))
        return h


class PatchDiscriminatorLogits(nn.Module):
    """MONAI ``PatchDiscriminator`` -> logits (N, 1, *patches) only.

    ``num_layers_d=3`` is the 70x70 PatchGAN of pix2pix/CycleGAN (channels ndf, 2, 4, 8·ndf;
    three stride-2 convs). Needs every spatial size >= 3·2**num_layers_d.
    """

    def __init__(self, spatial_dims: int, in_channels: int, ndf: int = 64, num_layers_d: int = 3, norm: str = "instance") -> None:
        super().__init__()
        self.spatial_dims, self.min_size = spatial_dims, 3 * 2**num_layers_d
        self.net = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=ndf,
            in_channels=in_channels,
            num_layers_d=num_layers_d,
            activation=("LEAKYRELU", {"negative_slope": 0.2}),
            norm="INSTANCE" if norm == "instance" else "BATCH",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(f"discriminator input {tuple(x.shape[2:])} is too small for num_layers_d: every spatial size must be >= {self.min_size}")
        return self.net(x)[-1]


# -- losses ------------------------------------------------------------------------------------
class AdversarialCriterion(nn.Module):
    """GAN losses on PatchGAN logits, in float32 (the D loss is halved, as in pix2pix/CycleGAN).

    ``lsgan`` (Mao et al. 2017): D: ½[(D(y)-1)² + D(ŷ)²], G: (D(ŷ)-1)² (MONAI least squares,
    no output activation). ``vanilla``: softplus form of BCE on logits, non-saturating for G.
    ``hinge``: MONAI's ``PatchAdversarialLoss(criterion="hinge")``.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        check_choice("gan_loss", kind, GAN_LOSSES)
        self.kind = kind
        if kind != "vanilla":
            criterion = "least_squares" if kind == "lsgan" else "hinge"
            self.monai = PatchAdversarialLoss(criterion=criterion, no_activation_leastsq=True)

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        if self.kind == "vanilla":
            return 0.5 * (bce_with_logits(real_logits, 1.0) + bce_with_logits(fake_logits, 0.0))
        real = self.monai(real_logits, target_is_real=True, for_discriminator=True)
        fake = self.monai(fake_logits, target_is_real=False, for_discriminator=True)
        return 0.5 * (real + fake)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        fake_logits = fake_logits.float()
        if self.kind == "vanilla":
            return generator_bce_loss(fake_logits, "non_saturating")
        return self.monai(fake_logits, target_is_real=True, for_discriminator=False)


# -- image pool --------------------------------------------------------------------------------
class ImagePool(nn.Module):
    """History of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN §4).

    :meth:`query` takes a batch of fakes and returns a batch of the same shape: while the pool
    holds fewer than ``size`` images each new fake is stored and returned; once full, each fake
    is, with probability ½, swapped with a uniformly chosen stored one (the stored one is
    returned), else returned as is. Decisions use the global torch CPU generator (checkpointed by
    the engine). Images are stored detached on the device of the fakes.

    The stored images are the module's *extra state* (a single tensor (count, C, *S)), so they
    are part of ``state_dict()`` and survive checkpoint/resume, while not being buffers (the EMA
    and data-parallel buffer broadcast leave them alone; each rank keeps its own pool).
    """

    def __init__(self, size: int = 50) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: torch.Tensor | None = None  # (size, C, *S) once the first batch came
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        fakes = fakes.detach().float()  # stored and returned in float32 (autocast may give bf16/fp16)
        if self.size == 0:
            return fakes
        if self.images is None or self.images.shape[1:] != fakes.shape[1:] or self.images.device != fakes.device:
            self._reallocate(fakes)
        out = fakes.clone()
        for i in range(fakes.shape[0]):
            if self.count < self.size:
                self.images[self.count] = fakes[i]
                self.count += 1
            elif float(torch.rand(())) < 0.5:
                j = int(torch.randint(self.size, ()))
                out[i] = self.images[j]
                self.images[j] = fakes[i]
        return out

    def _reallocate(self, like: torch.Tensor) -> None:
        """Storage for ``size`` images shaped like ``like[0]``, keeping what fits (device move after resume)."""
        old = self.images[: self.count] if self.images is not None else None
        self.images = like.new_zeros((self.size, *like.shape[1:]))
        if old is not None and old.shape[1:] == like.shape[1:]:
            self.images[: self.count] = old.to(like.device, like.dtype)
        else:
            self.count = 0  # the image size changed: start afresh

    def get_extra_state(self) -> torch.Tensor:
        if self.images is None or self.count == 0:
            return torch.zeros(0)
        return self.images[: self.count].clone()

    def set_extra_state(self, state: torch.Tensor) -> None:
        if state.ndim < 2 or state.shape[0] == 0:
            self.images, self.count = None, 0
            return
        self.count = min(int(state.shape[0]), self.size)
        self.images = state.new_zeros((self.size, *state.shape[1:]))
        self.images[: self.count] = state[: self.count]


# -- schedules ---------------------------------------------------------------------------------
def linear_decay_factor(step: int, max_steps: int, decay_start: float) -> float:
    """1 up to ``decay_start·max_steps`` steps, then linear to 0 at ``max_steps`` (CycleGAN §4)."""
    start = int(math.floor(decay_start * max_steps))
    if step <= start or max_steps <= start:
        return 1.0
    return max(0.0, (max_steps - step) / (max_steps - start))


def linear_decay_schedulers(optimizers: Mapping[str, torch.optim.Optimizer], max_steps: int, decay_start: float) -> dict[str, Any]:
    """One ``LambdaLR`` per optimizer; the engine steps them once per training step, so after
    ``k`` steps the LR is ``lr·linear_decay_factor(k)`` (state_dict holds only numbers)."""
    return {
        name: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: linear_decay_factor(k, max_steps, decay_start))
        for name, opt in optimizers.items()
    }


# -- model base --------------------------------------------------------------------------------
class TranslationModel(GenerativeModel):
    """Base of the translation models: batch ``{"source", "target"}`` (N, C, *S) in [-1, 1].

    Subclasses set ``self.config`` and implement :meth:`_translator` (the source -> target
    network). ``sample()`` stays unimplemented (the engine then skips sample grids).
    """

    batch_keys = ("source", "target")

    def _translator(self) -> nn.Module:
        raise NotImplementedError

    @property
    def divisor(self) -> int:
        """Every spatial size of a translated image must be a multiple of this."""
        return self._translator().divisor

    def configure_schedulers(self, optimizers: Mapping[str, torch.optim.Optimizer], max_steps: int) -> dict[str, Any]:
        return linear_decay_schedulers(optimizers, max_steps, self.config.lr_decay_start)

    def _run_eval(self, net: nn.Module, x: torch.Tensor, channels: int) -> torch.Tensor:
        check_image(x, self.config.spatial_dims, channels, net.divisor)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return net(x)
        finally:
            self.train(was_training)

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """Source (N, in_channels, *S) -> target domain (N, out_channels, *S) in [-1, 1]; eval mode,
        no grad. Raises ValueError unless every S is divisible by :attr:`divisor`."""
        return self._run_eval(self._translator(), x, self.config.in_channels)

    @torch.no_grad()
    def preview(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logging panel (N, C, H, 3W): source | translate(source) | target side by side, in
        [-1, 1] (first channel of each; 3D volumes show their middle slice along the first axis)."""
        parts = [batch["source"], self.translate(batch["source"]), batch["target"]]
        if self.config.spatial_dims == 3:
            parts = [p[:, :, p.shape[2] // 2] for p in parts]
        return torch.cat([p[:, :1].float() for p in parts], dim=-1)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze a discriminator while the generator's loss is backpropagated (saves its weight grads)."""
    for p in module.parameters():
        p.requires_grad_(flag)
