"""Feature extractors: registry, radiomics/FRD vs the frd-score package, encoder, weight loaders."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from medgen.eval.features import EXTRACTORS, get_extractor


@pytest.fixture(autouse=True)
def _one_thread():
    # The models here are tiny: one thread avoids oversubscription on small shared CPUs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registry_unknown_name_lists_known():
    with pytest.raises(KeyError) as err:
        get_extractor("nope")
    for name in ("radiomics", "encoder", "radimagenet", "medicalnet", "inception"):
        assert name in str(err.value) and name in EXTRACTORS


# ---------------------------------------------------------------------------------------------
# radiomics / FRD


def _textures(n: int, scale: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 32)[None, :]
    return [(100.0 + scale * rng.standard_normal((32, 32)) + rng.uniform(0, 80) * ramp).astype(np.float32) for _ in range(n)]


def test_radiomics_features_and_frd_match_package():
    pytest.importorskip("radiomics")
    pytest.importorskip("frd_score")
    from medgen.eval.radiomics_features import frd, frd_from_features, radiomics_features

    opts = {"feature_classes": ["firstorder"], "image_types": ["Original"]}
    real, fake = _textures(30, 20.0, 0), _textures(30, 35.0, 1)
    extractor = get_extractor("radiomics", **opts)
    f_real, f_fake = extractor(real), extractor(fake)
    assert f_real.shape[0] == 30 and f_real.shape == f_fake.shape and f_real.dtype == np.float64
    assert extractor.info()["weights_sha256"] is None
    ours = frd_from_features(f_real, f_fake)
    package = frd(real, fake, **opts)
    assert ours == pytest.approx(package, rel=1e-6)
    # same distribution -> much smaller than different distributions
    assert frd_from_features(f_real, radiomics_features(_textures(30, 20.0, 2), **opts)) < ours - 1.0


def test_radiomics_masks_and_errors():
    pytest.importorskip("radiomics")
    from medgen.eval.radiomics_features import radiomics_features

    images = _textures(2, 20.0, 0)
    masks = [np.zeros((32, 32), np.uint8) for _ in images]
    for m in masks:
        m[8:24, 8:24] = 1
    f, names = radiomics_features(images, masks, feature_classes=["firstorder"], image_types=["Original"], return_names=True)
    assert f.shape == (2, len(names))
    assert f[0, names.index("diagnostics_Mask-original_VoxelNum")] < 32 * 32
    with pytest.raises(ValueError, match="masks"):
        radiomics_features(images, masks[:1])


# ---------------------------------------------------------------------------------------------
# encoder


def _slices(n: int = 24, seed: int = 0) -> list[dict]:
    """Toy SliceDataset items: CT = bright disc, MR = dark disc on bright; radius encodes position."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16] - 7.5
    items = []
    for i in range(n):
        pos = i / (n - 1)
        disc = (np.hypot(yy, xx) < 2 + 5 * pos).astype(np.float32)
        noise = 0.05 * rng.standard_normal((2, 16, 16)).astype(np.float32)
        items.append({"CT": torch.from_numpy(disc * 2 - 1 + noise[0])[None], "MR": torch.from_numpy(1 - disc * 1.5 + noise[1])[None], "slice_position": pos, "subject": "s"})
    return items


def test_encoder_trains_and_is_deterministic(tmp_path):
    from medgen.eval.encoder import EncoderFeatures, train_encoder

    data = _slices()
    path = train_encoder(data, tmp_path / "enc.pt", steps=40, seed=0, batch_size=8, lr=3e-3)
    ckpt = torch.load(path, weights_only=True)
    history = ckpt["history"]
    assert len(history) == 40 and ckpt["modalities"] == ["CT", "MR"]
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])

    enc = get_extractor("encoder", path=path)
    x = torch.stack([d["CT"] for d in data[:5]]).numpy()
    f1, f2 = enc(x), EncoderFeatures(path)(x)
    assert f1.shape == (5, enc.feature_dim) and np.array_equal(f1, f2)
    assert len(enc.checksum) == 64 and enc.info()["weights_sha256"] == enc.checksum

    # same seed -> same file; other weights -> other checksum
    again = train_encoder(data, tmp_path / "enc2.pt", steps=40, seed=0, batch_size=8, lr=3e-3)
    assert EncoderFeatures(again).checksum == enc.checksum
    other = train_encoder(data, tmp_path / "enc3.pt", steps=3, seed=1, batch_size=8)
    assert EncoderFeatures(other).checksum != enc.checksum


def test_encoder_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="rule encoder"):
        get_extractor("encoder", path=tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------
# RadImageNet ResNet-50


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


@pytest.fixture(scope="module")
def resnet50():
    from medgen.eval.pretrained import ResNet50Features

    torch.manual_seed(0)
    model = ResNet50Features()
    _randomise_bn(model, 0)
    return model.eval()


def test_resnet50_is_torchvision_layout(resnet50):
    from monai.networks.nets import resnet50 as monai_resnet50

    state = resnet50.state_dict()
    # torchvision resnet50: 320 state-dict entries, 25,557,032 parameters; minus fc (2 entries, 2,049,000).
    assert len(state) == 318
    assert sum(p.numel() for p in resnet50.parameters()) == 25_557_032 - 2_049_000
    assert "layer3.5.bn3.running_var" in state and "layer1.0.downsample.0.weight" in state
    # An independent implementation of the same architecture gives the same output.
    ref = monai_resnet50(spatial_dims=2, n_input_channels=3, conv1_t_stride=2, shortcut_type="B", bias_downsample=False, feed_forward=False).eval()
    ref.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(resnet50(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("layout", ["torchvision", "module", "backbone"])
def test_radimagenet_loader_layouts(tmp_path, resnet50, layout):
    from medgen.eval.pretrained import _SEQUENTIAL_NAMES

    state = dict(resnet50.state_dict())
    if layout == "backbone":  # RadImageNet repository: nn.Sequential(*children[:-1]) as `backbone`
        inverse = {v: k for k, v in _SEQUENTIAL_NAMES.items()}
        state = {f"backbone.{inverse[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in state.items()}
    else:
        state.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
        if layout == "module":
            state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "radimagenet.pt"
    torch.save(state, path)
    ext = get_extractor("radimagenet", weights_path=path)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 48, 48)).astype(np.float32)
    with torch.no_grad():
        expected = resnet50(ext.preprocess(torch.from_numpy(images)[:, None])).double().numpy()
    feats = ext(images)
    assert feats.shape == (3, 2048) and np.array_equal(feats, expected)
    assert len(ext.checksum) == 64


def test_radimagenet_preprocessing():
    from medgen.eval.pretrained import RadImageNetFeatures

    ext = RadImageNetFeatures.__new__(RadImageNetFeatures)
    ext.input_range, ext.input_norm = (-1.0, 1.0), "imagenet"
    x = torch.full((1, 1, 2, 2), 1.0)  # white
    out = ext.preprocess(x)
    assert out.shape == (1, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    ext.input_norm = "bgr_mean"
    assert torch.allclose(ext.preprocess(x)[0, :, 0, 0], 1 - torch.tensor([0.406, 0.456, 0.485]))


def test_missing_and_wrong_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.extractors.radimagenet.weights"):
        get_extractor("radimagenet", weights_path=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="eval.extractors.radimagenet.weights"):
        get_extractor("radimagenet")
    with pytest.raises(FileNotFoundError, match="eval.extractors.medicalnet.weights"):
        get_extractor("medicalnet", weights_path=tmp_path / "nope.pth")
    path = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(KeyError, match=r"missing.*bn1\..*unexpected.*head\.weight"):
        get_extractor("radimagenet", weights_path=path)


# ---------------------------------------------------------------------------------------------
# MedicalNet


def test_medicalnet_loader(tmp_path):
    from medgen.eval.pretrained import medicalnet_model

    torch.manual_seed(1)
    model = medicalnet_model(10).eval()
    _randomise_bn(model, 1)
    published = {f"module.{k}": v for k, v in model.state_dict().items()}
    published["module.conv_seg.0.weight"] = torch.zeros(32, 512, 2, 2, 2)  # segmentation head, ignored
    path = tmp_path / "resnet_10.pth"
    torch.save({"state_dict": published}, path)

    ext = get_extractor("medicalnet", weights_path=path, depth=10)
    vols = np.random.default_rng(0).normal(size=(2, 16, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = model(ext.preprocess(torch.from_numpy(vols)[:, None])).double().numpy()
    feats = ext(vols)
    assert feats.shape == (2, 512) and np.array_equal(feats, expected)
    assert ext.info()["weights_sha256"] == ext.checksum
    slices = vols[:, 0]  # 2D slices (N, H, W), as generation evaluates them: one-slice volumes
    with torch.no_grad():
        expected_2d = model(ext.preprocess(torch.from_numpy(slices)[:, None, None])).double().numpy()
    assert np.array_equal(ext(slices), expected_2d) and expected_2d.shape == (2, 512)

    torch.save({"state_dict": {k: v for k, v in published.items() if "layer4" not in k}}, path)
    with pytest.raises(KeyError, match="missing.*layer4"):
        get_extractor("medicalnet", weights_path=path, depth=10)


def _torchvision_ok() -> bool:
    try:
        importlib.import_module("torchvision.models")
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _torchvision_ok(), reason="torchvision is not importable beside this torch build: Inception-v3 FID features unavailable")
def test_inception_features(tmp_path):
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=False, init_weights=True)
    path = tmp_path / "inception.pt"
    torch.save(model.state_dict(), path)
    ext = get_extractor("inception", weights_path=path)
    assert ext(np.zeros((2, 32, 32), np.float32)).shape == (2, 2048)
