"""The HTML report: sections from a fabricated results tree, self-containment, and rendering in
headless Chromium (when installed)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from medgen.io.ingest import IngestSummary  # noqa: E402
from medgen.layout import ingest_summary  # noqa: E402
from medgen.report.format import fmt, png_data_uri  # noqa: E402
from medgen.report.html import build_report, report_main  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = {
    "overview": "Overview",
    "data": "Data",
    "models": "Models",
    "samples": "Samples",
    "translation": "Translation",
    "metrics": "Metrics",
    "memorization": "Memorization",
    "timing": "Timing",
}
SUBJECTS = ("sub-01", "sub-02", "sub-03")
CONFIG: dict[str, Any] = {
    "results": "results",
    "modalities": ["T1w", "CT"],
    "tasks": {
        "t1w_synthesis": {"kind": "generation", "modalities": ["T1w"], "models": {"gan": {"steps": 20}}},
        "t1_to_ct": {"kind": "translation", "source": "T1w", "target": "CT", "models": {"pix2pix": {"steps": 20}}},
    },
}


# --------------------------------------------------------------------------- fixture builder


def _volume(kind: str, rng: np.random.Generator, shape: tuple[int, int, int] = (16, 16, 8)) -> np.ndarray:
    """A blob phantom: a bright ellipsoid (bone-like for CT) in a dark background."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = (x**2 + y**2 + z**2) < 0.6
    if kind == "CT":
        return np.where(inside, 40.0, -1000.0) + np.where((x**2 + y**2 + z**2) < 0.15, 800.0, 0.0) + rng.normal(0, 10, shape)
    if kind == "mask":
        return inside.astype(np.float32)
    return np.where(inside, 1.0, 0.05) + rng.normal(0, 0.02, shape)


def _save_nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-16.0, -16.0, -12.0)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return path


def _save_grid_png(path: Path, seed: int, n: int = 4) -> Path:
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, n, figsize=(n, 1.2))
    for ax in axes:
        ax.imshow(rng.random((16, 16)), cmap="gray")
        ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _write_log(path: Path, terms: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, step in enumerate(range(10, 60, 10)):
        record: dict[str, Any] = {"step": step, "epoch": i // 2}
        record.update({f"loss/{t}": 1.0 / (1 + i) + 0.1 * j for j, t in enumerate(terms)})
        record.update({"lr/g": 2e-4, "images_per_s": 100.0 + i * 10.5})
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\nnot json\n")


def _translation_metrics() -> dict[str, Any]:
    def agg(mean: float, std: float, lo: float, hi: float) -> dict[str, Any]:
        return {"mean": mean, "std": std, "median": mean, "ci95": [lo, hi], "n": 1}

    return {
        "kind": "translation", "task": "t1_to_ct", "model": "pix2pix", "units": "HU",
        "aggregate": {"mae": agg(87.654, 12.345, 75.1, 99.9), "psnr": agg(27.4321, 1.234, 26.0, 28.9), "ssim": agg(0.87654, 0.0123, 0.85, 0.9)},
        "per_subject": [{"subject": "sub-03", "mae": 87.654, "psnr": 27.4321, "ssim": 0.87654, "ms_ssim": None}],
    }


def _generation_metrics() -> dict[str, Any]:
    fake = {"fd": 12.3456, "kid_mean": 0.012345, "kid_std": 0.0011, "precision": 0.7123, "recall": 0.5432, "density": 0.9, "coverage": 0.8}
    real = {"fd": 2.5, "kid_mean": 0.0005, "kid_std": 0.0002, "precision": 0.95, "recall": 0.94, "density": 1.01, "coverage": 0.97}
    return {
        "kind": "generation", "task": "t1w_synthesis", "model": "gan", "n": {"synthetic": 64, "real_test": 128, "real_train": 549},
        "features": {
            "radiomics": {
                "checksum": None, "n": 64, "n_real_total": 128, "n_fake_total": 64, "feature_dim": 93, "real_vs_fake": fake, "real_vs_real": real,
                "warnings": [],
                "intervals": {"method": "half-sampling without replacement", "real_vs_fake": {"fd": [10.5, 14.25], "kid_mean": [0.01, 0.015]}},
            },
            "medicalnet": {
                "checksum": "abcdef0123456789", "n": 7, "feature_dim": 512, "real_vs_fake": {"fd": 3.25},
                "warnings": ["only 7 samples per set (< 50): FD, KID and PRDC are dominated by sampling noise"],
            },
        },
        "memorization": {
            "likely_copy_share": 0.03125, "threshold": 0.25, "alpha": 0.01, "n_train": 549, "n_test": 7, "n_synthetic": 64,
            "warnings": ["the threshold is the 0.01-quantile of only 7 test-to-train distances"], "closest_pairs_png": "gan_closest_pairs.png",
        },
    }


def make_results_tree(root: Path) -> Path:
    """A small but complete results folder (all eight report sections have inputs)."""
    rng = np.random.default_rng(0)
    results = root / "results"
    results.mkdir(parents=True)
    (results / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    for s, subject in enumerate(SUBJECTS):
        for modality in ("T1w", "CT"):
            _save_nifti(results / "nifti" / subject / f"{modality}.nii.gz", _volume(modality, rng))
            warnings = ["T1w: slice spacing uneven (max deviation 0.02 mm)"] if (s, modality) == (0, "T1w") else []
            _write_json(results / "nifti" / subject / f"{modality}.json", {"source": "dicom", "shape": [16, 16, 8], "spacing": [2.0, 2.0, 3.0], "warnings": warnings})
    for name in ("T1w", "CT", "mask"):
        _save_nifti(results / "prep" / "sub-01" / f"{name}.nii.gz", _volume(name, rng))
    _write_json(results / "splits.json", {"splits": {"train": ["sub-01"], "val": ["sub-02"], "test": ["sub-03"]}, "seed": 0})
    IngestSummary(skipped=[("dicom/sr series 99 (SR)", "not an image")], failed=[("dicom/x.dcm", "truncated pixel data")]).write(
        Path(ingest_summary(results, "sub-01"))
    )
    _write_log(results / "models" / "t1w_synthesis" / "gan" / "log.jsonl", ("g_loss", "d_loss"))
    for step in (10, 50):
        _save_grid_png(results / "models" / "t1w_synthesis" / "gan" / "samples" / f"step_{step:06d}.png", step)
    _write_log(results / "models" / "t1_to_ct" / "pix2pix" / "log.jsonl", ("l1", "adv"))
    augment = results / "augment" / "t1w_synthesis" / "gan"
    _save_grid_png(augment / "grid.png", 1, n=8)
    (augment / "manifest.tsv").write_text("path\tmodality\n" + "".join(f"s{i}.nii.gz\tT1w\n" for i in range(5)))
    truth = np.asarray(nib.load(str(results / "nifti" / "sub-03" / "CT.nii.gz")).dataobj)
    _save_nifti(results / "synth" / "t1_to_ct" / "pix2pix" / "sub-03.nii.gz", truth + rng.normal(0, 50, truth.shape))
    _write_json(results / "metrics" / "t1_to_ct" / "pix2pix.json", _translation_metrics())
    _write_json(results / "metrics" / "t1w_synthesis" / "gan.json", _generation_metrics())
    _save_grid_png(results / "metrics" / "t1w_synthesis" / "gan_closest_pairs.png", 2, n=6)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, runs in {"ingest": (1.25, 2.5), "train": (123.4,), "preprocess": (10.0, 11.0, 12.0)}.items():
        for i, seconds in enumerate(runs):
            path = results / "benchmarks" / rule / f"job{i}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header + f"{seconds}\t0:00:{int(seconds):02d}\t{512.5 + i}\t900\t400\t410\t1.0\t2.0\t50.0\t{seconds}\n")
    return results


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a complete fabricated results tree."""
    root = tmp_path_factory.mktemp("report")
    results = make_results_tree(root)
    return build_report(results, root / "report.html", title="medgen test report")


# --------------------------------------------------------------------------- content


def _data_uris(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_has_every_section_in_order(report: Path) -> None:
    text = report.read_text()
    positions = []
    for section_id, heading in SECTIONS.items():
        match = re.search(rf'<section id="{section_id}"><h2>{heading}</h2>', text)
        assert match, f"section {section_id} missing"
        assert f'href="#{section_id}"' in text
        positions.append(match.start())
    assert positions == sorted(positions)


def test_report_overview_lists_versions_and_config(report: Path) -> None:
    text = report.read_text()
    assert "medgen test report" in text and "0.1.0" in text
    for package in ("Python", "torch", "monai", "nibabel", "SimpleITK", "pydicom", "snakemake"):
        assert f"<td class=\"txt\">{package}</td>" in text
    assert "t1_to_ct" in text and "kind: translation" in text  # the config as YAML


def test_report_data_section(report: Path) -> None:
    text = report.read_text()
    data = text[text.index('id="data"') : text.index('id="models"')]
    assert all(s in data for s in SUBJECTS)
    assert "16×16×8 @ 2.00×2.00×3.00 mm" in data and "dicom" in data
    assert "skipped dicom/sr series 99 (SR): not an image" in data
    assert "failed dicom/x.dcm: truncated pixel data" in data
    assert "slice spacing uneven" in data
    assert "<td class=\"txt\">test</td><td class=\"num\">1</td>" in data
    assert len(_data_uris(data)) == 1  # the orthogonal views of sub-01


def test_report_metrics_numbers(report: Path) -> None:
    text = report.read_text()
    metrics = text[text.index('id="metrics"') : text.index('id="memorization"')]
    assert "MAE (HU)" in metrics and "PSNR (dB)" in metrics
    assert "87.7 ± 12.3" in metrics and "[75.1, 99.9]" in metrics
    assert "27.43 ± 1.23" in metrics and "0.877 ± 0.012" in metrics
    assert "12.35" in metrics and "2.50" in metrics and "[10.50, 14.25]" in metrics
    assert "0.0123" in metrics and "0.712" in metrics
    assert "N = 64 per set (of 128 real, 64 synthetic)" in metrics and "radiomics" in metrics and "medicalnet" in metrics
    assert "N = 7 per set" in metrics and "only 7 samples per set" in metrics  # the small-N warning beside the number
    assert "half-sampling without replacement" in metrics
    assert "–" in metrics  # missing values (MS-SSIM, most medicalnet keys)
    memo = text[text.index('id="memorization"') : text.index('id="timing"')]
    assert "3.1 %" in memo and len(_data_uris(memo)) == 1
    assert "of 64 samples" in memo and "all 549 training slices" in memo and "0.01-quantile of 7 real test images" in memo
    assert "only 7 test-to-train distances" in memo


def test_report_models_samples_translation_timing(report: Path) -> None:
    text = report.read_text()
    models = text[text.index('id="models"') : text.index('id="samples"')]
    assert "t1w_synthesis / gan" in models and "t1_to_ct / pix2pix" in models
    assert "142.0" in models  # final images/s
    assert "step 000050" in models
    assert len(_data_uris(models)) == 3  # two loss plots, one sample grid
    samples = text[text.index('id="samples"') : text.index('id="translation"')]
    assert "5 generated samples" in samples
    translation = text[text.index('id="translation"') : text.index('id="metrics"')]
    assert "sub-03" in translation and "T1w → CT" in translation and len(_data_uris(translation)) == 1
    timing = text[text.index('id="timing"') :]
    assert "123.4" in timing and "33.0" in timing and "3.8" in timing  # train; preprocess and ingest sums
    assert "total wall (s)" in timing and "max RSS (MB)" in timing


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text()
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    assert not re.search(r'src="(?!data:image/png;base64,)', text)
    images = _data_uris(text)
    assert len(images) >= 8
    for data in images:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.width <= 1400
    assert report.stat().st_size < 3_000_000


def test_empty_results_give_overview_only(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    out = build_report(tmp_path / "results", tmp_path / "r.html")
    text = out.read_text()
    assert '<section id="overview"><h2>Overview</h2>' in text
    assert all(f'id="{s}"' not in text for s in SECTIONS if s != "overview")
    assert "no configuration given" in text


def test_partial_and_damaged_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _write_json(results / "metrics" / "t1_to_ct" / "pix2pix.json", {"kind": "translation", "aggregate": {"mae": {"mean": 5.0}}})
    (results / "metrics" / "t1_to_ct" / "broken.json").write_text("{not json")
    (results / "benchmarks" / "train").mkdir(parents=True)
    (results / "benchmarks" / "train" / "x.tsv").write_text("s\tmax_rss\nNA\tNA\n")
    (results / "synth" / "t1_to_ct" / "pix2pix").mkdir(parents=True)
    _save_nifti(results / "synth" / "t1_to_ct" / "pix2pix" / "sub-01.nii.gz", np.zeros((4, 4, 4)))
    text = build_report(results, tmp_path / "r.html", config={"tasks": {}}).read_text()
    assert 'id="metrics"' in text and "5.00 ± –" in text
    assert 'id="timing"' not in text and 'id="data"' not in text
    assert "names no source/target" in text  # translation task without config


def test_report_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    results.mkdir()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"modalities": ["T1w"], "seed": 12345}))
    assert report_main(results, tmp_path / "out.html", cfg) == 0
    assert "seed: 12345" in (tmp_path / "out.html").read_text()
    from medgen.cli import main

    assert main(["report", "--results", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")]) == 4
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "x.html"), "--config", str(tmp_path / "nope.yaml")]) == 4
    (tmp_path / "bad.yaml").write_text("modalities: [T1w\n")
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "x.html"), "--config", str(tmp_path / "bad.yaml")]) == 7
    err = capsys.readouterr().err
    assert "medgen report: error: " in err and "bad.yaml: not a readable YAML config" in err
    assert not (tmp_path / "x.html").exists()


def test_report_writes_the_config_it_is_given_without_its_secret_bearing_keys(tmp_path: Path) -> None:
    from medgen.cli import main

    results = tmp_path / "results"
    results.mkdir()
    config = {"modalities": ["T1w"], "seed": 4321, "ingest": {"uid_salt_file": "/keys/salt", "on_tilt": "refuse"}}
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "r.html"), "--config-json", json.dumps(config)]) == 0
    copy = yaml.safe_load((results / "config.yaml").read_text())
    assert copy == {"modalities": ["T1w"], "seed": 4321, "ingest": {"on_tilt": "refuse"}}
    html = (tmp_path / "r.html").read_text()
    assert "seed: 4321" in html and "/keys/salt" not in html
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "x.html"), "--config-json", "[1, 2]"]) == 2
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "x.html"), "--config-json", "{}", "--config", str(results / "config.yaml")]) == 2


def test_fmt() -> None:
    assert fmt(None) == "–" and fmt(float("nan")) == "–" and fmt(True) == "–"
    assert fmt(1234.567) == "1234.6" and fmt(12.345) == "12.35" and fmt(0.012345) == "0.0123"
    assert fmt(3) == "3" and fmt(1e-5) == "1.00e-05" and fmt(2.0, 1) == "2.0"


def test_png_data_uri_downscales_and_converts(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 2000), dtype=np.uint8)).save(big)
    jpeg = tmp_path / "small.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(jpeg)
    for path, width in ((big, 1400), (jpeg, 40)):
        data = base64.b64decode(png_data_uri(path).removeprefix("data:image/png;base64,"))
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.width == width


# --------------------------------------------------------------------------- rendering

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (scripts/install_chromium.sh)")


def _chromium(args: list[str], user_dir: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium; on timeout kill its whole process group and fail."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={user_dir}", *args,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout:.0f} s")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@needs_chromium
def test_chromium_renders_report(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1400,4000", "--hide-scrollbars", report.as_uri()], tmp_path / "profile")
    assert shot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    with Image.open(shot) as img:
        assert img.width == 1400
        top = np.asarray(img.convert("RGB"))[:800]
    assert top.var() > 0
    assert len(np.unique(top.reshape(-1, 3), axis=0)) >= 8
    if os.environ.get("MEDGEN_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["MEDGEN_REPORT_SCREENSHOT"])


@needs_chromium
def test_chromium_dom_has_every_heading(report: Path, tmp_path: Path) -> None:
    result = _chromium(["--dump-dom", report.as_uri()], tmp_path / "profile")
    dom = result.stdout.decode(errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    headings = re.findall(r"<h2>([^<]+)</h2>", dom)
    assert headings == list(SECTIONS.values())
    assert dom.count("<img ") >= 8
