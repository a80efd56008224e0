"""Every default has one source, the settings classes: the config schema's defaults and the
command line's defaults agree with them, and ``medgen train`` reads one settings section."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from medgen.cli import _settings, build_parser, eval_settings, ingest_options, phantom_settings, preprocess_config, split_settings, train_settings
from medgen.data import phantom, splits
from medgen.data.datasets import CachePolicy
from medgen.data.preprocess import PreprocessConfig
from medgen.data.settings import PhantomSettings, SplitSettings
from medgen.data.usable import MIN_MASK_FRACTION
from medgen.eval import downstream, generation_run
from medgen.eval.settings import DownstreamSettings, EvalSettings
from medgen.io.ingest import IngestOptions
from medgen.synth.translate import translate_volume
from medgen.train.settings import CACHE_KEY, LAUNCH_KEYS, TrainConfig, engine_defaults, read_section
from pipeline.config import validate_config
from pipeline.targets import model_options_json, train_settings_json

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((ROOT / "configs" / "config.schema.yaml").read_text())["properties"]


def schema_defaults(*path: str) -> dict[str, Any]:
    node = SCHEMA[path[0]]
    for key in path[1:]:
        node = node["properties"][key]
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v}


def dataclass_defaults(cls: type) -> dict[str, Any]:
    return {f.name: _plain(f.default) for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def function_defaults(fn: Any) -> dict[str, Any]:
    return {k: _plain(p.default) for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def cli_defaults(verb: str) -> dict[str, Any]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return {a.dest: _plain(a.default) for a in sub._actions if a.dest != "help" and a.default is not argparse.SUPPRESS}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_train_section_of_the_schema_is_trainconfig_with_its_defaults():
    schema = SCHEMA["train"]["properties"]
    assert set(schema) == {*engine_defaults(), CACHE_KEY, *LAUNCH_KEYS}
    assert {k: v for k, v in schema_defaults("train").items() if k not in (CACHE_KEY, *LAUNCH_KEYS)} == engine_defaults()
    assert schema_defaults("train", "cache") == dataclass_defaults(CachePolicy)


def test_train_command_line_defaults_are_trainconfig_defaults(tmp_path):
    args = build_parser().parse_args(["train", "--prep-root", "p", "--split", "s", "--task-json", "{}", "--model", "gan", "--out", str(tmp_path)])
    cfg, cache = train_settings(args)
    assert cfg == TrainConfig(out_dir=tmp_path)
    assert CachePolicy(**cache) == CachePolicy()


def test_train_flags_override_the_settings_file_which_overrides_the_defaults(tmp_path):
    section = {"steps": 7, "batch_size": 2, "ema_decay": 0, "gpus": 2, "cache": {"ram_mb": 10}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(section))
    base = ["train", "--prep-root", "p", "--split", "s", "--task-json", "{}", "--model", "gan", "--out", str(tmp_path)]
    for given in (str(tmp_path / "train.yaml"), json.dumps(section)):
        cfg, cache = train_settings(build_parser().parse_args([*base, "--settings", given, "--batch-size", "3", "--no-amp"]))
        assert (cfg.max_steps, cfg.batch_size, cfg.ema_decay, cfg.amp, cfg.ckpt_every) == (7, 3, None, False, TrainConfig.ckpt_every)
        assert cache == {"ram_mb": 10}


def test_an_unknown_train_setting_is_refused_with_the_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown train setting\(s\) 'stpes'; valid keys: .*steps"):
        read_section({"stpes": 3}, tmp_path)


def test_workflow_passes_each_run_its_resolved_train_section():
    cfg = validate_config(yaml.safe_load((ROOT / "configs" / "default.yaml").read_text()))
    section = json.loads(train_settings_json(cfg, "t1w_to_ct", "pix2pix"))
    train, _ = read_section(section, "out")
    assert (train.max_steps, train.batch_size, train.val_every, train.ckpt_every) == (1000, 8, 100, 100)
    assert json.loads(model_options_json(cfg, "t1w_to_ct", "pix2pix"))["ngf"] == 16


def test_ingest_defaults_agree():
    options = dataclass_defaults(IngestOptions)
    schema = {**schema_defaults("ingest"), "keep_subject_labels": schema_defaults("data")["keep_subject_labels"]}
    for key, value in options.items():
        if key != "uid_salt":  # the secret: never in a config nor on a command line
            assert schema[key] == value, key
    assert ingest_options(build_parser().parse_args(["ingest", "in", "--out", "o"]), None) == IngestOptions()


def test_preprocess_and_split_defaults_agree():
    options, schema = dataclass_defaults(PreprocessConfig), schema_defaults("preprocess")
    assert {k: schema[k] for k in set(schema) - {"min_mask_fraction"}} == {k: options[k] for k in set(schema) - {"min_mask_fraction"}}
    args = build_parser().parse_args(["preprocess", "--input-dir", "i", "--modalities", "T1w", "--out", "o"])
    assert preprocess_config(args) == PreprocessConfig()
    assert schema["min_mask_fraction"] == MIN_MASK_FRACTION == cli_defaults("split")["min_mask_fraction"]
    make_split = function_defaults(splits.make_split)
    assert schema_defaults("split") == {"fractions": make_split["fractions"], "seed": make_split["seed"]} == dataclass_defaults(SplitSettings)
    assert split_settings(build_parser().parse_args(["split", "--subjects", "a", "--out", "o"])) == SplitSettings()


def test_a_settings_section_is_read_with_the_flags_over_it(tmp_path):
    section = {"spacing": [3, 3, 3], "size": [64, 64, 64], "register": False, "reference": None, "min_mask_fraction": 0.1}
    args = build_parser().parse_args(["preprocess", "--input-dir", "i", "--modalities", "T1w", "--out", "o", "--settings", json.dumps(section), "--size", "32", "32", "32"])
    cfg = preprocess_config(args)
    assert (cfg.spacing, cfg.size, cfg.mr_norm) == ((3.0, 3.0, 3.0), (32, 32, 32), PreprocessConfig.mr_norm)
    (tmp_path / "ingest.yaml").write_text("on_tilt: refuse\nmapping_file: null\n")
    options = ingest_options(build_parser().parse_args(["ingest", "in", "--out", "o", "--settings", str(tmp_path / "ingest.yaml")]), None)
    assert options == IngestOptions(on_tilt="refuse")
    with pytest.raises(ValueError, match=r"--settings: unknown key\(s\) 'on_tlit'; valid keys: .*on_tilt"):
        ingest_options(build_parser().parse_args(["ingest", "in", "--out", "o", "--settings", '{"on_tlit": "refuse"}']), None)


def test_phantom_defaults_agree():
    cohort, schema = function_defaults(phantom.generate_cohort), schema_defaults("data", "phantom")
    assert schema == dataclass_defaults(PhantomSettings)
    assert schema["spacing_mm"] == cohort["spacing_mm"]
    assert phantom_settings(build_parser().parse_args(["phantom", "--out", "o"])) == PhantomSettings()


def test_phantom_split_and_eval_settings_are_read_with_the_flags_over_them(tmp_path):
    section = {"subjects": 5, "seed": 3, "spacing_mm": 4}
    args = build_parser().parse_args(["phantom", "--out", "o", "--settings", json.dumps(section), "--seed", "7"])
    assert phantom_settings(args) == PhantomSettings(subjects=5, seed=7, spacing_mm=4.0)
    assert phantom_settings(build_parser().parse_args(["phantom", "--out", "o", "--spacing", "3"])).spacing_mm == 3.0
    (tmp_path / "split.yaml").write_text("fractions: [1, 0, 0]\nseed: 2\n")
    args = build_parser().parse_args(["split", "--subjects", "a", "--out", "o", "--settings", str(tmp_path / "split.yaml")])
    assert split_settings(args) == SplitSettings(fractions=(1.0, 0.0, 0.0), seed=2)
    section = {"features": ["radiomics"], "max_real": 16, "encoder_steps": 9, "extractors": {"radimagenet": {"weights": "w.pt"}}, "downstream": {}}
    base = ["evaluate", "generation", "--model", "m", "--prep-root", "p", "--split", "s", "--out", "o", "--settings", json.dumps(section)]
    settings = eval_settings(build_parser().parse_args([*base, "--max-real", "32"]))
    assert settings == EvalSettings(features=("radiomics",), max_real=32, encoder_steps=9, extractors={"radimagenet": {"weights": "w.pt"}})
    assert eval_settings(build_parser().parse_args([*base, "--extractors-json", "{}"])).extractors == {}
    encoder = ["encoder", "--prep-root", "p", "--split", "s", "--modalities", "T1w", "--out", "o"]
    assert eval_settings(build_parser().parse_args([*encoder, "--settings", '{"encoder_steps": 5}'])).encoder_steps == 5
    assert eval_settings(build_parser().parse_args([*encoder, "--settings", '{"encoder_steps": 5}', "--steps", "6"])).encoder_steps == 6
    with pytest.raises(ValueError, match=r"--settings: unknown key\(s\) 'subject'; valid keys: .*subjects"):
        phantom_settings(build_parser().parse_args(["phantom", "--out", "o", "--settings", '{"subject": 3}']))


def test_workflow_passes_each_verb_its_section():
    rules = {name: (ROOT / "rules" / f"{name}.smk").read_text() for name in ("phantom", "split", "evaluate")}
    assert 'json.dumps(config["data"].get("phantom", {}), sort_keys=True)' in rules["phantom"]
    assert 'json.dumps(config["split"], sort_keys=True)' in rules["split"]
    assert '--settings' in rules["evaluate"] and "--max-real" not in rules["evaluate"] and "--steps" not in rules["evaluate"]


def test_eval_defaults_agree():
    settings, schema = dataclass_defaults(EvalSettings), schema_defaults("eval")
    assert {k: schema[k] for k in settings} == settings and schema["extractors"] == EvalSettings().extractors == {}
    assert eval_settings(build_parser().parse_args(["evaluate", "generation", "--model", "m", "--prep-root", "p", "--split", "s", "--out", "o"])) == EvalSettings()
    assert eval_settings(build_parser().parse_args(["encoder", "--prep-root", "p", "--split", "s", "--modalities", "T1w", "--out", "o"])) == EvalSettings()
    assert function_defaults(generation_run.evaluate_generation)["max_real"] == settings["max_real"]
    ds = dataclass_defaults(DownstreamSettings)
    assert schema_defaults("eval", "downstream") == ds
    args = build_parser().parse_args(["downstream", "--task-json", "{}", "--prep-root", "p", "--split", "s", "--out", "o"])
    assert _settings(args, DownstreamSettings) == {}  # evaluate_downstream's defaults, which are:
    assert {k: function_defaults(downstream.evaluate_downstream)[k] for k in ds} == ds


def test_translate_defaults_agree():
    assert schema_defaults("translate") == {"mirror_average": function_defaults(translate_volume)["mirror_average"]}
    assert cli_defaults("translate")["mirror_average"] == schema_defaults("translate")["mirror_average"]


def test_mixed_model_entries_are_read_with_a_warning_naming_the_new_form():
    cfg = {"data": {"phantom": {}}, "modalities": ["T1w"],
           "tasks": {"t": {"kind": "generation", "modalities": ["T1w"], "models": {"glow": {"levels": 2, "steps": 5, "temperature": 0.7}}}}}
    with pytest.warns(FutureWarning, match=r"'tasks.t.models.glow'.*write the entry as \{options: \{levels: 2\}, train: \{steps: 5\}, sample: \{temperature: 0.7\}\}"):
        entry = validate_config(cfg)["tasks"]["t"]["models"]["glow"]
    assert entry == {"options": {"levels": 2}, "train": {"steps": 5}, "sample": {"temperature": 0.7}}


def test_an_entry_mixing_both_forms_is_refused():
    cfg = {"data": {"phantom": {}}, "modalities": ["T1w"],
           "tasks": {"t": {"kind": "generation", "modalities": ["T1w"], "models": {"gan": {"options": {"ngf": 8}, "steps": 5}}}}}
    with pytest.raises(ValueError, match=r"config key 'tasks.t.models.gan': 'steps' beside 'options'; .*under 'train'"):
        validate_config(cfg)


def test_shipped_configs_use_the_sectioned_form():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name != "config.schema.yaml":
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)
                validate_config(yaml.safe_load(path.read_text()))


def test_the_parser_imports_no_heavy_module():
    code = "import sys; from medgen.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
