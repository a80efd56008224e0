"""The one adversarial loss: vocabulary, aliases and known answers for each kind."""

from __future__ import annotations

import pytest
import torch
from monai.losses import PatchAdversarialLoss

from medgen.models.adversarial import AdversarialLoss, adversarial_loss_kind
from medgen.models.registry import build_model

REAL = torch.tensor([[2.0], [0.5], [-1.0], [0.0]])
FAKE = torch.tensor([[-2.0], [0.5], [1.5], [0.0]])


@pytest.mark.parametrize("alias,kind", [("vanilla", "bce"), ("lsgan", "least_squares")])
def test_aliases_are_the_same_loss(alias, kind):
    a, b = AdversarialLoss(alias), AdversarialLoss(kind)
    assert a.kind == kind
    torch.testing.assert_close(a.d_loss(REAL, FAKE), b.d_loss(REAL, FAKE), rtol=0, atol=0)
    torch.testing.assert_close(a.g_loss(FAKE), b.g_loss(FAKE), rtol=0, atol=0)


def test_hinge_is_on_the_raw_logits():
    loss = AdversarialLoss("hinge")
    # D: mean relu(1 - r) = (0 + 0.5 + 2 + 1) / 4, mean relu(1 + f) = (0 + 1.5 + 2.5 + 1) / 4
    torch.testing.assert_close(loss.d_loss(REAL, FAKE), torch.tensor(3.5 / 4 + 5.0 / 4))
    torch.testing.assert_close(loss.g_loss(FAKE), -FAKE.mean())
    # not MONAI's hinge, which acts on tanh of the logits
    monai = PatchAdversarialLoss(criterion="hinge")
    assert not torch.allclose(loss.g_loss(FAKE), monai(FAKE, target_is_real=True, for_discriminator=False))


def test_least_squares_equals_monai_and_smooths_the_real_target():
    loss = AdversarialLoss("least_squares")
    monai = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
    expected_d = monai(REAL, target_is_real=True, for_discriminator=True) + monai(FAKE, target_is_real=False, for_discriminator=True)
    torch.testing.assert_close(loss.d_loss(REAL, FAKE), expected_d, rtol=0, atol=0)
    torch.testing.assert_close(loss.g_loss(FAKE), monai(FAKE, target_is_real=True, for_discriminator=False), rtol=0, atol=0)
    smoothed = AdversarialLoss("least_squares", real_label=0.9)
    torch.testing.assert_close(smoothed.d_loss(REAL, FAKE), (REAL - 0.9).pow(2).mean() + FAKE.pow(2).mean())


def test_bce_known_answer_and_generator_forms():
    loss = AdversarialLoss("bce", real_label=0.8)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(REAL, torch.full_like(REAL, 0.8)) + torch.nn.functional.binary_cross_entropy_with_logits(
        FAKE, torch.zeros_like(FAKE)
    )
    torch.testing.assert_close(loss.d_loss(REAL, FAKE), expected)
    torch.testing.assert_close(AdversarialLoss("bce").g_loss(FAKE), -torch.nn.functional.logsigmoid(FAKE).mean())
    torch.testing.assert_close(AdversarialLoss("bce", g_form="minimax").g_loss(FAKE), torch.log1p(-torch.sigmoid(FAKE)).mean())


def test_d_weight_and_scales():
    half = AdversarialLoss("hinge", d_weight=0.5)
    torch.testing.assert_close(half.d_loss(REAL, FAKE), 0.5 * AdversarialLoss("hinge").d_loss(REAL, FAKE))
    loss = AdversarialLoss("least_squares")
    scales = loss.d_loss([REAL, 2 * REAL], [FAKE, 2 * FAKE])
    torch.testing.assert_close(scales, (loss.d_loss(REAL, FAKE) + loss.d_loss(2 * REAL, 2 * FAKE)) / 2)
    torch.testing.assert_close(loss.g_loss([FAKE, 2 * FAKE]), (loss.g_loss(FAKE) + loss.g_loss(2 * FAKE)) / 2)


def test_unknown_names_are_refused_with_the_accepted_ones():
    with pytest.raises(ValueError, match="gan_loss must be one of bce, least_squares, hinge, vanilla, lsgan"):
        adversarial_loss_kind("gan_loss", "wasserstein")
    with pytest.raises(ValueError, match="hinge, least_squares, lsgan; got 'vanilla'"):
        adversarial_loss_kind("adversarial_loss", "vanilla", ("hinge", "least_squares"))
    with pytest.raises(ValueError, match="minimax"):
        AdversarialLoss("hinge", g_form="minimax")


@pytest.mark.parametrize(
    "name,options",
    [("gan", dict(adversarial_loss="lsgan")), ("pix2pix", dict(gan_loss="least_squares")), ("cyclegan", dict(gan_loss="bce")), ("spade", dict(adversarial_loss="lsgan"))],
)
def test_every_model_accepts_the_whole_vocabulary(name, options):
    model = build_model(name, **options)
    criterion = getattr(model, "criterion", None) or model.adversarial
    assert criterion.kind == adversarial_loss_kind("loss", next(iter(options.values())))
