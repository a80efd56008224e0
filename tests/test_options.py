"""The option bases shared by the model families: one definition, each model's own defaults."""

from __future__ import annotations

import pytest

from medgen.models.options import GANOptions, ImageOptions, TranslationOptions
from medgen.models.registry import MODELS, build_model, model_options

FAMILIES = {
    GANOptions: ("gan", "cgan", "vaegan", "bigan", "spade"),
    ImageOptions: ("stylegan",),
    TranslationOptions: ("pix2pix", "cyclegan", "cut", "fastcut"),
}

# the defaults users see for the shared fields, per model
DEFAULTS = {
    "gan": dict(image_size=64, latent_dim=100, ngf=64, ndf=64, betas=(0.5, 0.999), init_std=0.02),
    "vaegan": dict(image_size=64, latent_dim=64, ngf=32, ndf=32, betas=(0.5, 0.999)),
    "bigan": dict(image_size=32, latent_dim=32, ngf=32, ndf=32, betas=(0.5, 0.999)),
    "spade": dict(image_size=64, latent_dim=64, ngf=32, ndf=32, betas=(0.0, 0.999)),
    "stylegan": dict(spatial_dims=2, image_size=64, in_channels=1, latent_dim=128, betas=(0.0, 0.99)),
    "pix2pix": dict(norm="batch", gan_loss="vanilla", ngf=64, ndf=64, num_layers_d=3, lr=2e-4, lr_decay_start=0.5),
    "cyclegan": dict(norm="instance", gan_loss="lsgan", ngf=64, ndf=64, num_layers_d=3, lr=2e-4, lr_decay_start=0.5),
    "cut": dict(norm="instance", gan_loss="lsgan", mode="cut"),
    "fastcut": dict(norm="instance", gan_loss="lsgan", mode="fastcut"),
}


@pytest.mark.parametrize("base,names", FAMILIES.items())
def test_each_family_shares_its_base(base, names):
    for name in names:
        assert issubclass(MODELS[name].config_class, base), name


@pytest.mark.parametrize("name", DEFAULTS)
def test_each_model_keeps_its_defaults(name):
    options = model_options(name)
    assert {k: options[k] for k in DEFAULTS[name]} == DEFAULTS[name]


@pytest.mark.parametrize("name", ["gan", "vaegan", "bigan", "spade", "pix2pix", "cyclegan", "cut"])
def test_shared_checks_apply_to_every_member(name):
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        build_model(name, spatial_dims=4)
    if issubclass(MODELS[name].config_class, TranslationOptions):
        with pytest.raises(ValueError, match="ndf must be >= 1"):
            build_model(name, ndf=0)
    else:
        with pytest.raises(ValueError, match="image_size must be a power of two"):
            build_model(name, image_size=48)


def test_yaml_lists_become_tuples():
    assert build_model("vaegan", betas=[0.5, 0.9]).config.betas == (0.5, 0.9)
    assert build_model("pix2pix", betas=[0.5, 0.9], num_downs=3).config.betas == (0.5, 0.9)
