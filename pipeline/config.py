"""Workflow configuration: load, fill defaults from the schema, and refuse bad keys at the door."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "configs" / "config.schema.yaml"


class ConfigError(ValueError):
    """An invalid workflow configuration; the message names the offending key."""


def _with_defaults(validator_class: type) -> type:
    """A validator that fills ``default`` values of the schema into the instance while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema) -> Iterator:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path: Iterator[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"config key '{key}'" if error.absolute_path else "the config"
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}; valid keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"config key '{key}': {error.instance!r} is not one of {', '.join(map(repr, error.validator_value))}"
    return f"config key '{key}': {error.message}"


def validate_config(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled in.

    Raises :class:`ConfigError` naming every bad key (schema violations first, then the checks
    a schema cannot express: fractions summing to 1, a reference among the modalities, input
    paths that exist).
    """
    schema = yaml.safe_load(schema_path.read_text())
    cfg = copy.deepcopy(dict(config))
    if isinstance(cfg.get("ingest"), Mapping) and "uid_salt" in cfg["ingest"]:
        raise ConfigError(
            "invalid configuration:\n  config key 'ingest.uid_salt': a secret does not belong in a config (it is copied "
            "into results); set the environment variable MEDGEN_UID_SALT or name a file holding it in ingest.uid_salt_file"
        )
    problems = _upgrade_model_entries(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    errors = sorted(_Validator(schema).iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    problems = list(_semantic_problems(cfg))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def _semantic_problems(cfg: dict[str, Any]) -> Iterator[str]:
    sources = [k for k in ("phantom", "dicom_root", "bids_root", "manifest") if k in cfg["data"]]
    if len(sources) != 1:
        yield f"config key 'data': needs exactly one of phantom, dicom_root, bids_root, manifest (found {len(sources)})"
    mapping = cfg["ingest"]["mapping_file"]
    if mapping is not None:
        results = Path(cfg["results"]).resolve()
        if Path(mapping).resolve() == results or results in Path(mapping).resolve().parents:
            yield f"config key 'ingest.mapping_file': {mapping} lies inside the results folder; the map of originals to pseudonyms must be kept elsewhere"
    fractions = cfg["split"]["fractions"]
    if abs(sum(fractions) - 1.0) > 1e-6:
        yield f"config key 'split.fractions': {fractions} must sum to 1 (sums to {sum(fractions):g})"
    reference = cfg["preprocess"]["reference"]
    if reference is not None and reference not in cfg["modalities"]:
        yield f"config key 'preprocess.reference': {reference!r} is not one of modalities {cfg['modalities']}"
    lo, hi = cfg["preprocess"]["ct_window"]
    if lo >= hi:
        yield f"config key 'preprocess.ct_window': lower bound {lo} must be below upper bound {hi}"
    lo, hi = cfg["preprocess"]["mr_percentiles"]
    if lo >= hi:
        yield f"config key 'preprocess.mr_percentiles': {lo} must be below {hi}"
    yield from _task_problems(cfg)
    yield from _extractor_problems(cfg)
    for key in ("dicom_root", "bids_root", "manifest"):
        if key in cfg["data"] and not Path(cfg["data"][key]).exists():
            yield f"config key 'data.{key}': {cfg['data'][key]} does not exist"


#: feature extractors that need a weights file from ``eval.extractors``
PRETRAINED_EXTRACTORS = ("radimagenet", "medicalnet", "inception")


def _extractor_problems(cfg: dict[str, Any]) -> Iterator[str]:
    has_generation = any(t["kind"] == "generation" for t in cfg["tasks"].values())
    configured = cfg["eval"]["extractors"]
    for name in PRETRAINED_EXTRACTORS:
        key = f"eval.extractors.{name}.weights"
        if name in configured and not Path(configured[name]["weights"]).is_file():
            yield f"config key '{key}': weights file {configured[name]['weights']} does not exist (nothing is downloaded: give a local file)"
        elif name in cfg["eval"]["features"] and name not in configured and has_generation:
            yield f"config key 'eval.features' lists {name!r} but '{key}' is not set: give the local weights file"


#: the sections of a model's entry under ``tasks.<task>.models``
ENTRY_SECTIONS = ("options", "train", "sample")
#: keys the former mixed form of a model's entry held beside the options, and their section now
MOVED_ENTRY_KEYS = {"steps": "train", "batch_size": "train", "val_every": "train", "temperature": "sample"}


def _upgrade_model_entries(cfg: dict[str, Any]) -> list[str]:
    """Rewrite model entries of the former mixed form (``{ngf: 32, steps: 600}``) in place as
    ``{options: {ngf: 32}, train: {steps: 600}}``, each with a FutureWarning that shows the new
    form; returns a problem for each entry that mixes both forms."""
    problems = []
    tasks = cfg.get("tasks")
    for task_name, task in (tasks.items() if isinstance(tasks, dict) else ()):
        models = task.get("models") if isinstance(task, dict) else None
        for model, entry in (models.items() if isinstance(models, dict) else ()):
            loose = [k for k in entry if k not in ENTRY_SECTIONS] if isinstance(entry, dict) else []
            if not loose:
                continue
            key = f"tasks.{task_name}.models.{model}"
            sections = [k for k in entry if k in ENTRY_SECTIONS]
            if sections:
                problems.append(
                    f"config key '{key}': {', '.join(map(repr, loose))} beside {', '.join(map(repr, sections))}; put the model's options "
                    f"under 'options', {', '.join(k for k, v in MOVED_ENTRY_KEYS.items() if v == 'train')} under 'train' and temperature under 'sample'"
                )
                continue
            upgraded: dict[str, dict[str, Any]] = {"options": {k: v for k, v in entry.items() if k not in MOVED_ENTRY_KEYS}}
            for name, section in MOVED_ENTRY_KEYS.items():
                if name in entry:
                    upgraded.setdefault(section, {})[name] = entry[name]
            models[model] = upgraded
            shown = yaml.safe_dump(upgraded, default_flow_style=True, sort_keys=False, width=10**6).strip()
            warnings.warn(
                f"config key '{key}': model options and training keys side by side are deprecated; write the entry as {shown}",
                FutureWarning, stacklevel=3,
            )
    return problems


def _task_problems(cfg: dict[str, Any]) -> Iterator[str]:
    from medgen.models.registry import MODELS, model_options, models_of_kind, task_kind

    label_map_models = models_of_kind("label_map")

    modalities = set(cfg["modalities"])
    for name, task in cfg["tasks"].items():
        key = f"tasks.{name}"
        if task["kind"] == "translation":
            for side in ("source", "target"):
                if task.get(side) not in modalities:
                    yield f"config key '{key}.{side}': {task.get(side)!r} is not one of modalities {cfg['modalities']}"
        else:
            mods = task.get("modalities") or []
            if not mods or not set(mods) <= modalities:
                yield f"config key '{key}.modalities': {mods} must be a non-empty subset of {cfg['modalities']}"
            if len(mods) > 1 and task.get("condition") != "modality":
                yield f"config key '{key}.condition': several modalities need condition 'modality'"
            if task.get("flip_lr"):
                yield f"config key '{key}.flip_lr': mirrored training pairs are an option of translation tasks"
        for model, entry in task["models"].items():
            if model not in MODELS:
                yield f"config key '{key}.models.{model}': unknown model; valid names: {', '.join(sorted(MODELS))}"
                continue
            if (model in label_map_models) != (task.get("condition") == "label_map"):
                yield f"config key '{key}.models.{model}': label-map models ({', '.join(sorted(label_map_models))}) and condition 'label_map' go together"
            if task_kind(model) != task["kind"]:
                yield f"config key '{key}.models.{model}': a {task_kind(model)} model in a {task['kind']} task"
            valid = set(model_options(model)) | {"patch_size"}
            for option in sorted(set(entry["options"]) - valid):
                yield f"config key '{key}.models.{model}.options.{option}': unknown option; valid options: {', '.join(sorted(valid))}"


def load_config(path: Path | str) -> dict[str, Any]:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    return validate_config(raw)
