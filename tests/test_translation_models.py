"""CycleGAN, CUT / FastCUT and pix2pix: shapes, losses, pool, schedule, learning, engine resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from medgen.models.cut import CUT, FastCUT, patch_nce_loss
from medgen.models.cyclegan import CycleGAN
from medgen.models.pix2pix import Pix2Pix
from medgen.models.registry import build_model
from medgen.models.image_pool import ImagePool
from medgen.models.running_stats import batch_norm_layers
from medgen.models.translation_base import linear_decay_factor
from medgen.train.engine import TrainConfig, Trainer
from model_helpers import fit

TINY_2D = {
    "cyclegan": dict(ngf=8, ndf=8, n_blocks=2),
    "cut": dict(ngf=8, ndf=8, n_blocks=2),
    "fastcut": dict(ngf=8, ndf=8, n_blocks=2),
    "pix2pix": dict(ngf=8, ndf=8, num_downs=3),
}
# 16^3 volumes: a 2-layer PatchGAN needs >= 12 voxels per side
TINY_3D = {
    "cyclegan": dict(spatial_dims=3, ngf=4, ndf=4, n_blocks=1, num_layers_d=2),
    "cut": dict(spatial_dims=3, ngf=4, ndf=4, n_blocks=1, num_layers_d=2, num_patches=64),
    "fastcut": dict(spatial_dims=3, ngf=4, ndf=4, n_blocks=1, num_layers_d=2, num_patches=64),
    "pix2pix": dict(spatial_dims=3, ngf=4, ndf=4, num_downs=3, num_layers_d=2),
}
NAMES = tuple(TINY_2D)


def _blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (N, 1, size, size) in [-1, 1]: a few Gaussian blobs on a dark background."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.full((n, 1, size, size), -1.0)
    for i in range(n):
        for _ in range(3):
            cy, cx = torch.rand(2, generator=g)
            width = 0.05 + 0.1 * torch.rand((), generator=g)
            amp = 0.5 + 1.5 * torch.rand((), generator=g)
            images[i, 0] += amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return images.clamp(-1, 1)


# -- construction, shapes, errors --------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [2, 3])
def test_translate_shapes_and_range_after_a_step(name, dims):
    torch.manual_seed(0)
    options = TINY_2D[name] if dims == 2 else TINY_3D[name]
    model = build_model(name, **options)
    size = (32, 32) if dims == 2 else (16, 16, 16)
    x = torch.rand(2, 1, *size) * 2 - 1
    logs = fit(model, lambda step: {"source": x, "target": x.flip(0)}, steps=1)
    assert all(math.isfinite(v) for v in logs[0].values())
    assert model.training  # translate restores the mode
    for shape in [size, (48, 40) if dims == 2 else (16, 24, 8)]:
        inp = 3 * torch.randn(2, 1, *shape)
        out = model.translate(inp)
        assert out.shape == inp.shape and out.dtype == torch.float32
        assert out.min() >= -1 and out.max() <= 1
    if name == "cyclegan":
        assert model.translate_back(x).shape == x.shape
    if dims == 2:
        panel = model.preview({"source": x, "target": x})
        assert panel.shape == (2, 1, 32, 96)


def test_fully_convolutional_inference_on_a_larger_non_square_image():
    model = build_model("cut", **TINY_2D["cut"])
    assert model.translate(torch.zeros(1, 1, 96, 112)).shape == (1, 1, 96, 112)


@pytest.mark.parametrize("name", NAMES)
def test_non_divisible_input_raises_value_error(name):
    model = build_model(name, **TINY_2D[name])
    assert model.divisor == (8 if name == "pix2pix" else 4)
    with pytest.raises(ValueError, match="not divisible by"):
        model.translate(torch.zeros(1, 1, 36, 30 if name != "pix2pix" else 36))


def test_registry_builds_each_translation_model():
    expected = {"cyclegan": CycleGAN, "cut": CUT, "fastcut": FastCUT, "pix2pix": Pix2Pix}
    for name, cls in expected.items():
        model = build_model(name, **TINY_2D[name])
        assert type(model) is cls and model.batch_keys == ("source", "target")
        with pytest.raises(NotImplementedError):
            model.sample(1)
    assert build_model("cyclegan", spatial_dims=3, **TINY_2D["cyclegan"]).g_ab.encoder["stem"][1].__class__ is torch.nn.Conv3d


@pytest.mark.parametrize("name", NAMES)
def test_registry_rejects_unknown_and_invalid_options(name):
    with pytest.raises(TypeError, match="'ngff'"):
        build_model(name, ngff=8)
    with pytest.raises(ValueError, match="gan_loss"):
        build_model(name, gan_loss="wasserstein")
    with pytest.raises(ValueError, match="spatial_dims"):
        build_model(name, spatial_dims=4)


def test_mode_defaults_and_bad_layer_ids():
    cut, fast = build_model("cut", **TINY_2D["cut"]), build_model("fastcut", **TINY_2D["cut"])
    assert (cut.config.lambda_nce, cut.config.nce_idt, cut.config.flip_equivariance) == (1.0, True, False)
    assert (fast.config.lambda_nce, fast.config.nce_idt, fast.config.flip_equivariance) == (10.0, False, True)
    assert build_model("cut", mode="fastcut", **TINY_2D["cut"]).config.lambda_nce == 10.0
    assert cut.config.nce_layers == ("input", "down1", "down2", "res1")  # middle block of 2 is res1 too
    assert build_model("cut").config.nce_layers == ("input", "down1", "down2", "res1", "res5")
    with pytest.raises(ValueError, match="res7"):
        build_model("cut", nce_layers=["input", "res7"], **TINY_2D["cut"])
    with pytest.raises(ValueError, match="mode"):
        build_model("cut", mode="slowcut")


def test_discriminator_too_small_input_is_a_clear_error():
    model = build_model("pix2pix", **TINY_2D["pix2pix"])  # num_layers_d 3 needs >= 24 px
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match=">= 24"):
        fit(model, lambda step: {"source": x, "target": x}, steps=1)


# -- PatchNCE ----------------------------------------------------------------------------------
def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_patch_nce_is_near_zero_for_identical_features():
    q = _unit(2, 256, 256, seed=0)
    # positive logit 1/τ; negatives cos ~ N(0, 1/256), so each adds ≈ exp((cos - 1)/τ) <= e^-10 at τ=0.07
    assert patch_nce_loss(q, q.clone(), temperature=0.07) < 1e-3
    assert patch_nce_loss(q, q.clone(), temperature=0.01) < 1e-12


def test_patch_nce_is_log_num_patches_for_unrelated_features():
    b, p, d = 4, 256, 256
    q, k = _unit(b, p, d, seed=1), _unit(b, p, d, seed=2)
    # all P logits are z = cos/τ with cos ≈ N(0, 1/D) independent: E[loss] = E[log Σ_j e^{z_j}] - E[z_0]
    # ≈ log P + σ²/2 with σ² = 1/(D τ²) (log-normal mean; P large). τ = 1: +0.002; τ = 0.07: +0.40.
    # Tolerance 0.05: the mean over B·P = 1024 terms has standard error ≈ σ/√1024 < 0.03.
    assert abs(float(patch_nce_loss(q, k, temperature=1.0)) - math.log(p)) < 0.05
    expected = math.log(p) + 1 / (2 * d * 0.07**2)
    assert abs(float(patch_nce_loss(q, k, temperature=0.07)) - expected) < 0.05


def test_patch_nce_gradient_reaches_heads_and_generator_encoder():
    torch.manual_seed(0)
    model: CUT = build_model("cut", **TINY_2D["cut"])
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    loss = model.nce_loss(x, model.generator(x))
    loss.backward()
    for name, head in model.heads.heads.items():
        assert head[0].weight.grad is not None and head[0].weight.grad.abs().sum() > 0, name
    stem = model.generator.encoder["stem"][1].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_cut_samples_patches_over_all_voxels_in_3d():
    torch.manual_seed(0)
    model = build_model("cut", **TINY_3D["cut"])
    feats = model.generator.encode(torch.zeros(1, 1, 16, 16, 16), model.config.nce_layers)
    locations = model.heads.draw_locations(feats, 64)
    assert [len(idx) for idx in locations] == [64] * len(feats)
    assert int(locations[0].max()) < 16**3 and len(set(locations[0].tolist())) == 64


def test_fastcut_flip_equivariance_draws_from_the_torch_generator():
    model = build_model("fastcut", **TINY_2D["fastcut"])
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = build_model("fastcut", **TINY_2D["fastcut"])
        m.load_state_dict(model.state_dict())
        runs.append(fit(m, lambda step: {"source": x, "target": -x}, steps=4))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name", ["cut", "fastcut"])
def test_cut_running_statistics_come_from_the_forward_pass_on_its_inputs_only(name):
    """With batch norm, one step folds into the generator's running statistics its forward pass on
    the sources and nothing else: not the identity term's pass on the targets, not the
    re-encoding of its outputs, not FastCUT's pass on the unflipped source (all in train mode)."""
    seed = next(s for s in range(100) if (float(torch.rand((), generator=torch.Generator().manual_seed(s))) < 0.5) == (name == "fastcut"))
    torch.manual_seed(0)
    model = build_model(name, norm="batch", **TINY_2D[name])
    reference = copy.deepcopy(model)
    x, y = _blobs(2, seed=1), -_blobs(2, seed=2)
    torch.manual_seed(seed)  # the step's first draw decides FastCUT's flip: flipped for fastcut
    fit(model, lambda step: {"source": x, "target": y}, steps=1)
    x_in = x.flip(-1) if name == "fastcut" else x
    reference.generator.train()
    with torch.no_grad():
        reference.generator(x_in)
    layers, expected = batch_norm_layers(model.generator), batch_norm_layers(reference.generator)
    assert layers and len(layers) == len(expected)
    for got, want in zip(layers, expected):
        torch.testing.assert_close(got.running_mean, want.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.running_var, want.running_var, rtol=0, atol=1e-6)


# -- CycleGAN ----------------------------------------------------------------------------------
def test_image_pool_swaps_with_probability_half_and_never_exceeds_its_size():
    torch.manual_seed(0)
    pool = ImagePool(50)
    for i in range(50):  # filling: every fake is returned as is
        fake = torch.full((1, 1, 4, 4), float(i))
        assert torch.equal(pool.query(fake), fake)
        assert len(pool) == i + 1
    swapped, total = 0, 0
    for i in range(50, 450):
        fakes = torch.stack([torch.full((1, 4, 4), float(i * 2 + j)) for j in range(2)])
        out = pool.query(fakes)
        assert len(pool) == 50 and pool.images.shape[0] == 50
        for j in range(2):
            value = float(out[j, 0, 0, 0])
            if value != float(i * 2 + j):
                swapped += 1
                assert value < i * 2 + j  # given earlier (possibly earlier in this batch)
            total += 1
    # binomial(800, ½): standard deviation 0.018; 0.42..0.58 is > 4 sigma
    assert 0.42 < swapped / total < 0.58
    restored = ImagePool(50)
    restored.load_state_dict(pool.state_dict())
    assert len(restored) == 50 and torch.equal(restored.images, pool.images)


def test_cyclegan_logs_cycle_and_identity_terms():
    torch.manual_seed(0)
    model = build_model("cyclegan", **TINY_2D["cyclegan"])
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    logs = fit(model, lambda step: {"source": x, "target": -x}, steps=2)
    assert {"g_loss", "d_loss", "g_adv", "cycle", "identity"} <= set(logs[-1])
    assert logs[-1]["cycle"] > 0 and logs[-1]["identity"] > 0
    assert len(model.pool_a) == len(model.pool_b) == 4
    no_idt = build_model("cyclegan", lambda_identity=0.0, **TINY_2D["cyclegan"])
    assert fit(no_idt, lambda step: {"source": x, "target": -x}, steps=1)[0]["identity"] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_lr_constant_for_first_half_then_linear_to_zero(name):
    model = build_model(name, **TINY_2D[name])
    optimizers = model.configure_optimizers()
    schedulers = model.configure_schedulers(optimizers, max_steps=20)
    assert set(schedulers) == set(optimizers)
    lrs = []
    for _ in range(20):
        for opt in optimizers.values():
            opt.step()
        for s in schedulers.values():
            s.step()
        lrs.append(optimizers["g"].param_groups[0]["lr"])
    assert lrs[9] == pytest.approx(2e-4)  # after step 10 = end of the first half
    assert lrs[14] == pytest.approx(1e-4)
    assert lrs[19] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert linear_decay_factor(5, 10, 1.0) == 1.0


# -- learning ----------------------------------------------------------------------------------
def test_pix2pix_learns_a_paired_intensity_inversion():
    torch.manual_seed(0)
    train, held_out = _blobs(32, seed=1), _blobs(8, seed=2)
    # lr 1e-3 (paper: 2e-4) and no dropout: a short run on a deterministic toy mapping
    model = build_model("pix2pix", ngf=8, ndf=8, num_downs=3, dropout=0.0, lr=1e-3)
    fit(model, lambda step: {"source": train[step * 4 % 32 :][:4], "target": -train[step * 4 % 32 :][:4]}, steps=80)
    err = float((model.translate(held_out) - (-held_out)).abs().mean())
    identity_err = float((held_out - (-held_out)).abs().mean())
    assert err < 0.25 * identity_err, (err, identity_err)


def test_cyclegan_reduces_cycle_loss_on_unpaired_inversion():
    torch.manual_seed(0)
    a, b = _blobs(32, seed=3), -_blobs(32, seed=4)  # unpaired: b is not -a
    model = build_model("cyclegan", ngf=8, ndf=8, n_blocks=2, lr=1e-3)
    logs = fit(model, lambda step: {"source": a[step * 2 % 32 :][:2], "target": b[(step * 2 + 12) % 32 :][:2]}, steps=40)
    first = sum(log["cycle"] for log in logs[:5]) / 5
    last = sum(log["cycle"] for log in logs[-5:]) / 5
    assert last < 0.4 * first, (first, last)


# -- engine ------------------------------------------------------------------------------------
class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, dims: int) -> None:
        g = torch.Generator().manual_seed(0)
        size = (32, 32) if dims == 2 else (16, 16, 16)
        self.x = torch.rand(n, 1, *size, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"source": self.x[i], "target": -self.x[i]}


def _trainer(name: str, out_dir, max_steps: int, **options) -> Trainer:
    torch.manual_seed(123)
    model = build_model(name, **TINY_2D[name], lr_decay_start=1.0, **options)
    cfg = TrainConfig(out_dir=out_dir, max_steps=max_steps, batch_size=2, device="cpu", ema_decay=0.9, ckpt_every=100, log_every=2)
    return Trainer(model, _Pairs(6, 2), cfg)


@pytest.mark.parametrize("name", NAMES)
def test_engine_checkpoint_resume_matches_an_uninterrupted_run(name, tmp_path):
    whole = _trainer(name, tmp_path / "whole", 6)
    metrics = whole.fit()
    assert metrics["step"] == 6 and all(math.isfinite(v) for k, v in metrics.items() if k.startswith("loss/"))
    first = _trainer(name, tmp_path / "split", 3)
    first.fit()
    resumed = _trainer(name, tmp_path / "split", 6)
    assert resumed.fit()["step"] == 6
    assert resumed.step == 6
    if name == "cyclegan":
        assert len(resumed.model.pool_a) == len(whole.model.pool_a) == 12
    for (key, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{key} differs after resume")
    assert (tmp_path / "split" / "model.pt").exists()
