"""Report tables over seeds and baselines, the paired ranking, and the flat metrics table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medgen.report.comparison import paired_test, ranking_statements, seed_summary
from medgen.report.html import report_main

SUBJECTS = ("sub-a", "sub-b", "sub-c")


def _run(model: str, seed: int | None, maes: list[float]) -> dict:
    per_subject = [{"subject": s, "mae": m, "psnr": 30.0 - m / 10, "ssim": 0.9} for s, m in zip(SUBJECTS, maes)]
    return {"kind": "translation", "task": "t1_ct", "model": model, "units": "HU", "per_subject": per_subject,
            "aggregate": {"mae": {"mean": float(np.mean(maes)), "std": float(np.std(maes, ddof=1)), "ci95": [min(maes), max(maes)], "n": 3}}}


def _baselines() -> dict:
    def entry(maes: list[float]) -> dict:
        run = _run("x", None, maes)
        return {"description": "d", "per_subject": run["per_subject"], "aggregate": run["aggregate"]}

    return {"identity_matched": entry([300.0, 310.0, 290.0]), "intensity_lookup": entry([210.0, 220.0, 205.0]), "resolution_floor": entry([60.0, 70.0, 65.0])}


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    baselines = _baselines()
    # pix2pix, three seeds: per-subject MAE 100 + 10 * seed + subject offset
    for seed in (0, 1, 2):
        run = _run("pix2pix", seed, [100.0 + 10 * seed, 110.0 + 10 * seed, 105.0 + 10 * seed])
        _write(results / "metrics" / "t1_ct" / "pix2pix" / f"seed-{seed}.json", {**run, "baselines": baselines})
    _write(results / "metrics" / "t1_ct" / "baselines.json", {"kind": "translation_baselines", "baselines": baselines})
    for seed, fd in ((0, 10.0), (1, 14.0), (2, 12.0)):
        _write(results / "metrics" / "gen" / "gan" / f"seed-{seed}.json", {
            "kind": "generation", "task": "gen", "model": "gan", "n": {"synthetic": 16},
            "features": {"encoder": {"real_vs_fake": {"fd": fd}, "real_vs_real": {"fd": 3.0}}}})
    dice = {"csf": {"mean": 0.61, "seed_std": 0.02, "ci95": [0.55, 0.66], "n_subjects": 3}}
    _write(results / "metrics" / "t1_ct" / "downstream.json", {
        "kind": "downstream", "task": "t1_ct", "modality": "CT", "network": "UNet", "steps": 5, "seeds": [0, 1, 2],
        "test_subjects": list(SUBJECTS), "classes": ["skin_muscle", "csf"],
        "settings": {"real": {"dice": dice, "mean_dice": {"mean": 0.5, "seed_std": 0.01}},
                     "real+pix2pix": {"dice": {"csf": {**dice["csf"], "mean": 0.64}}, "mean_dice": {"mean": 0.55, "seed_std": 0.03}}}})
    return results


def test_seed_summary_averages_seeds_per_subject_and_reports_the_seed_spread():
    runs = [_run("m", seed, [100.0 + 10 * seed, 110.0 + 10 * seed, 105.0 + 10 * seed]) | {"seed": seed} for seed in (0, 1, 2)]
    summary = seed_summary(runs, "mae")
    # per-subject means over seeds: 110, 120, 115 -> mean 115, SD 5; seed means 105, 115, 125 -> SD 10
    assert summary["mean"] == pytest.approx(115.0) and summary["std"] == pytest.approx(5.0)
    assert summary["seed_means"] == pytest.approx([105.0, 115.0, 125.0]) and summary["seed_std"] == pytest.approx(10.0)
    assert summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    assert (summary["n_subjects"], summary["n_seeds"]) == (3, 3)


def test_paired_test_pairs_every_seed_with_a_seedless_baseline_and_ranks_only_when_significant():
    model = {(s, k): 100.0 + k + i for i, s in enumerate(SUBJECTS) for k in (0, 1, 2)}
    baseline = {(s, None): 200.0 + i for i, s in enumerate(SUBJECTS)}
    result = paired_test(model, baseline)
    # 9 pairs all below the baseline: exact two-sided p = 2 / 2**9
    assert result["n"] == 9 and result["p"] == pytest.approx(2 / 2**9)
    assert ranking_statements({"m": model, "b": baseline}, "MAE") == ["m beats b on MAE (p = 0.00391, n = 9 pairs)"]
    # one seed, three subjects: never significant (smallest p 0.25), so not ranked
    one_seed = {k: v for k, v in model.items() if k[1] == 0}
    lines = ranking_statements({"m": one_seed, "b": baseline}, "MAE")
    assert len(lines) == 1 and "not ranked" in lines[0] and "0.25" in lines[0]


def test_report_shows_seeds_baselines_ranking_and_writes_the_flat_table(results: Path, tmp_path: Path):
    assert report_main(results, tmp_path / "r.html") == 0
    text = (tmp_path / "r.html").read_text()
    metrics = text[text.index('id="metrics"'):]
    assert "115.0 ± 5.0" in metrics and "seeds ± 10.0" in metrics  # seed-averaged subjects; spread over seeds
    for name in ("baseline: identity_matched", "baseline: intensity_lookup", "baseline: resolution_floor"):
        assert name in metrics
    assert "pix2pix beats baseline: intensity_lookup on MAE" in metrics
    assert "baseline: resolution_floor beats pix2pix on MAE" in metrics
    assert "gan (3 seeds)" in metrics and "12.00 ± 2.00" in metrics and "10.00 / 14.00 / 12.00" in metrics
    downstream = text[text.index('id="downstream"'):]
    assert "real+pix2pix" in downstream and "0.640 ± 0.020" in downstream and "[0.550, 0.660]" in downstream and "0.550 ± 0.030" in downstream
    rows = list(csv.DictReader((results / "metrics.tsv").open(), delimiter="\t"))
    maes = {(r["method"], r["seed"]): float(r["value"]) for r in rows if r["metric"] == "mae"}
    # the table holds 6 significant digits
    assert maes[("pix2pix", "1")] == pytest.approx(115.0, rel=1e-5) and maes[("intensity_lookup", "")] == pytest.approx(635 / 3, rel=1e-5)
    assert sum(1 for r in rows if r["kind"] == "baseline" and r["metric"] == "mae") == 3  # once, not once per seed
    assert {r["metric"] for r in rows if r["method"] == "gan"} == {"encoder/fd", "encoder/fd/real_vs_real"}
    assert [(r["method"], r["value"]) for r in rows if r["kind"] == "downstream"] == [("real", "0.61"), ("real+pix2pix", "0.64")]
