"""Option bases shared by the model families: each shared field, its default and its check written once.

A model's options are a dataclass (``cls.config_class``) that the YAML ``model:`` section fills
(:func:`medgen.models.registry.build_model`). The families below share most of them:

* :class:`ImageOptions`: square images of a power-of-two side (``spatial_dims``, ``image_size``,
  ``in_channels``); StyleGAN.
* :class:`GANOptions`: plus the DCGAN-like widths, latent size, Adam betas and weight init
  (``latent_dim``, ``ngf``, ``ndf``, ``betas``, ``init_std``); gan, cgan, vaegan, bigan, spade.
* :class:`TranslationOptions`: the image-to-image translation models (pix2pix, cyclegan, cut,
  fastcut): channels of both domains, generator and PatchGAN widths, norm, GAN loss, Adam and
  the linear learning-rate decay.

A model changes a default by declaring the field again (its place in the option list stays that
of the base) and adds its own fields and checks after ``super().__post_init__()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from medgen.models.adversarial import adversarial_loss_kind

NORMS = ("instance", "batch")


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """ValueError naming option ``name`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class ImageOptions:
    """Square 2D or 3D images whose side is a power of two."""

    spatial_dims: int = 2
    image_size: int = 64  # power of two, >= 8
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")


@dataclass
class GANOptions(ImageOptions):
    """:class:`ImageOptions` plus what every DCGAN-like model has."""

    latent_dim: int = 64
    ngf: int = 32
    ndf: int = 32
    betas: tuple[float, float] = (0.5, 0.999)
    init_std: float = 0.02  # N(0, init_std) weights (DCGAN §4)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.betas = tuple(self.betas)  # YAML gives a list


@dataclass
class TranslationOptions:
    """What every translation model has; ``in_channels`` is the source domain, ``out_channels``
    the target domain."""

    spatial_dims: int = 2
    in_channels: int = 1  # domain A (source)
    out_channels: int = 1  # domain B (target)
    ngf: int = 64
    ndf: int = 64
    num_layers_d: int = 3  # PatchGAN depth (3: 70x70 receptive field)
    norm: str = "instance"  # instance | batch (generators and discriminators)
    gan_loss: str = "lsgan"  # lsgan | vanilla | hinge (aliases of least_squares | bce, see medgen.models.adversarial)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_start: float = 0.5  # fraction of max_steps after which the LR decays linearly to 0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        for name in ("in_channels", "out_channels", "ngf", "ndf", "num_layers_d"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_choice("norm", self.norm, NORMS)
        adversarial_loss_kind("gan_loss", self.gan_loss)
        if not 0.0 <= self.lr_decay_start <= 1.0:
            raise ValueError(f"lr_decay_start must be in [0, 1] (a fraction of max_steps), got {self.lr_decay_start}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.betas = tuple(self.betas)  # YAML gives a list
