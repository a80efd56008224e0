"""Validation curves in the report: what is read from the logs, cards and baselines, what is drawn,
and where the figures appear."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medgen import layout  # noqa: E402
from medgen.models.artifact import ModelCard, save  # noqa: E402
from medgen.report.format import png_data_uri  # noqa: E402
from medgen.report.html import build_report  # noqa: E402
from medgen.report.plots import draw_validation, validation_curves  # noqa: E402
from medgen.report.results import Results, load_config  # noqa: E402
from medgen.report.validation import FD_KEY, MAE_KEY, Curve, baseline_levels, curve_of, read_curves, validation_card  # noqa: E402
from tests.test_report import _data_uris, make_results_tree  # noqa: E402

LOOKUP, IDENTITY, FLOOR = 210.5, 330.25, 65.0
CHOSEN = {"key": MAE_KEY, "step": 40, "value": 150.0}


def _write_log(path: Path, key: str, values: dict[int, float]) -> None:
    """A training log with loss records every 10 steps and ``key`` (and its running best) at ``values``' steps."""
    lines, best = [], float("inf")
    for step in range(10, 70, 10):
        lines.append(json.dumps({"step": step, "epoch": 0, "loss/l1": 1.0 / step}))
        if step in values:
            best = min(best, values[step])
            lines.append(json.dumps({"step": step, "epoch": 0, key: values[step], f"{key}_best": best}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """The report's results tree with validation logs of two translation models (one with a model.pt
    whose card names the chosen step), the task's baselines, and a generation model's FD log."""
    results = make_results_tree(tmp_path_factory.mktemp("validation"))
    models = Path(layout.models_dir(results))
    _write_log(models / "t1_to_ct" / "pix2pix" / "log.jsonl", MAE_KEY, {20: 300.0, 40: 150.0, 60: 170.0})
    _write_log(models / "t1_to_ct" / "cut" / "log.jsonl", MAE_KEY, {20: 400.0, 40: 250.0, 60: 240.0})
    save(layout.model_file(results, "t1_to_ct", "pix2pix"), ModelCard(model="pix2pix", step=60, validation=CHOSEN), {"w": torch.zeros(1)})
    _write_log(models / "t1w_synthesis" / "gan" / "log.jsonl", FD_KEY, {30: 40.0, 60: 20.0})
    baselines = {"kind": "translation_baselines", "task": "t1_to_ct", "units": "HU", "baselines": {
        "identity_matched": {"aggregate": {"mae": {"mean": IDENTITY}}},
        "intensity_lookup": {"aggregate": {"mae": {"mean": LOOKUP}}},
        "resolution_floor": {"aggregate": {"mae": {"mean": FLOOR}}},
    }}
    Path(layout.baselines_metrics(results, "t1_to_ct")).write_text(json.dumps(baselines))
    return results


def _gids(ax: plt.Axes) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_keys_are_the_validators_keys() -> None:
    from medgen.train.validation import GenerationValidator, TranslationValidator

    assert (MAE_KEY, FD_KEY) == (TranslationValidator.key, GenerationValidator.key)


def test_curves_are_read_from_the_logs_with_the_cards_step(results: Path, tmp_path: Path) -> None:
    ctx = Results(results, load_config(results), tmp_path)
    curves = {c.run: c for c in read_curves(ctx, "t1_to_ct", MAE_KEY)}
    assert set(curves) == {"cut", "pix2pix"}
    assert curves["pix2pix"].steps == (20, 40, 60) and curves["pix2pix"].values == (300.0, 150.0, 170.0)
    assert curves["pix2pix"].chosen == (40, 150.0) and curves["cut"].chosen is None  # cut has no model.pt
    assert read_curves(ctx, "t1w_synthesis", MAE_KEY) == []
    assert baseline_levels(Path(layout.baselines_metrics(results, "t1_to_ct"))) == {"lookup (test subjects)": LOOKUP, "identity (test subjects)": IDENTITY}
    assert baseline_levels(tmp_path / "absent.json") == {}


def test_draw_validation_draws_each_run_the_chosen_step_and_the_baseline_levels() -> None:
    curves = [
        Curve("pix2pix/seed-0", (10, 20, 30), (3.0, 1.0, 2.0), chosen=(20, 1.0)),
        Curve("pix2pix/seed-1", (10, 20, 30), (4.0, 3.0, 2.5), chosen=(30, 2.5)),
        Curve("cut", (10, 30), (5.0, 4.0)),
    ]
    fig, ax = plt.subplots()
    draw_validation(ax, curves, {"lookup (test subjects)": LOOKUP, "identity (test subjects)": IDENTITY})
    drawn = _gids(ax)
    assert drawn["curve:pix2pix/seed-0"] == ([10, 20, 30], [3.0, 1.0, 2.0]) and drawn["curve:cut"] == ([10, 30], [5.0, 4.0])
    assert drawn["chosen:pix2pix/seed-0"] == ([20], [1.0]) and drawn["chosen:pix2pix/seed-1"] == ([30], [2.5])
    assert "chosen:cut" not in drawn
    assert drawn["baseline:lookup (test subjects)"][1] == [LOOKUP, LOOKUP]
    assert drawn["baseline:identity (test subjects)"][1] == [IDENTITY, IDENTITY]
    colours = {line.get_gid(): line.get_color() for line in ax.lines}
    assert colours["curve:pix2pix/seed-0"] == colours["curve:pix2pix/seed-1"] != colours["curve:cut"]  # seeds share their model's colour
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pix2pix (2 seeds)" in legend and "cut" in legend and any(t.startswith("lookup (test subjects)") for t in legend)
    plt.close(fig)


def test_a_log_without_validation_records_draws_nothing(tmp_path: Path) -> None:
    assert curve_of("gan", [{"step": 10, "loss/g": 1.0}, {"step": 20, "val/mae": float("nan")}], MAE_KEY) is None
    assert validation_curves([], tmp_path / "v.png") is None and not (tmp_path / "v.png").exists()


def test_validation_card_writes_the_figure_it_embeds(results: Path, tmp_path: Path) -> None:
    ctx = Results(results, load_config(results), tmp_path)
    card = validation_card(ctx, "t1_to_ct", MAE_KEY)
    (png,) = tmp_path.glob("*val_t1_to_ct.png")
    assert png_data_uri(png) in card and "baselines measured on the test subjects" in card and "MAE (HU)" in card
    assert validation_card(ctx, "t1w_synthesis", MAE_KEY) == ""  # its log holds FD, no MAE
    assert "baselines" not in validation_card(ctx, "t1w_synthesis", FD_KEY)


def test_report_shows_the_mae_curves_in_translation_and_the_fd_curves_in_models(results: Path, tmp_path: Path) -> None:
    text = build_report(results, tmp_path / "report.html").read_text()
    models = text[text.index('id="models"') : text.index('id="samples"')]
    translation = text[text.index('id="translation"') : text.index('id="metrics"')]
    assert "t1_to_ct: validation during training" in translation and "MAE (HU) on the validation subjects" in translation
    assert len(_data_uris(translation)) == 2  # the validation curves and one subject's panel
    assert "t1w_synthesis: validation during training" in models and "FD (encoder features)" in models
    assert "t1_to_ct: validation during training" not in models
