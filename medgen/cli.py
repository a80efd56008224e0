"""The ``medgen`` command line: ``medgen <verb> ...``, each verb a thin call into the library.

Every workflow rule calls one of these verbs, so anything the workflow does can be done by hand.
Imports of heavy modules happen inside each verb so that ``medgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from medgen import __version__
from medgen.errors import ExitCode, OptionError, classify
from medgen.io.output_paths import check_output_path
from medgen.synth import DEFAULT_TEMPERATURE

Handler = Callable[[argparse.Namespace], int]


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    """The JSON object given to ``flag``; :class:`OptionError` naming the flag otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"{flag}: not valid JSON ({exc.msg} at column {exc.colno}); give an object, e.g. {flag} '{{\"key\": 1}}'") from None
    if not isinstance(value, dict):
        raise OptionError(f"{flag}: expected a JSON object {{...}}, got {type(value).__name__} {text!r}")
    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse names the flag in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _phantom(args: argparse.Namespace) -> int:
    from medgen.data.phantom import generate_cohort

    check_output_path(args.out, "folder")
    settings = phantom_settings(args)
    written = generate_cohort(
        args.out,
        n_subjects=settings.subjects,
        seed=settings.seed,
        spacing_mm=settings.spacing_mm,
        only=args.only,
        write_dicom=not args.no_dicom,
        workers=args.workers,
    )
    print(f"phantom: wrote {len(written)} subject(s) under {args.out}")
    return 0


def _secret(args: argparse.Namespace) -> str:
    """The pseudonym secret: the public demo one on request, else from --uid-salt-file or MEDGEN_UID_SALT."""
    from medgen.io.secret import DEMO_SECRET, load_secret

    return DEMO_SECRET if getattr(args, "demo_secret", False) else load_secret(args.uid_salt_file)


def _settings(args: argparse.Namespace, cls: type, *, ignore: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments of the settings class ``cls``: the ``--settings`` section (a JSON object
    or a JSON/YAML file), with the flags given on the command line over it; the class supplies
    every default. Keys that ``cls`` lacks are refused, except ``ignore`` (the workflow's own)."""
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    section = _section_arg(args.settings, "--settings") if args.settings else {}
    unknown = sorted(set(section) - set(fields) - set(ignore))
    if unknown:
        raise OptionError(f"--settings: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(fields))}")
    values = {k: v for k, v in section.items() if k in fields}
    values.update({k: getattr(args, k) for k in fields if hasattr(args, k)})
    return {k: _like(v, fields[k]) for k, v in values.items()}


def _like(value: Any, default: Any) -> Any:
    """``value`` in the form of the class's ``default``: lists become tuples, and integers become
    floats where the default holds floats (JSON and YAML write 2.0 as 2, the flags parse floats)."""
    def number(v: Any, d: Any) -> Any:
        return float(v) if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool) else v

    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(number(v, default[0]) if default else v for v in value)
    return number(value, default)


def ingest_options(args: argparse.Namespace, uid_salt: str | None) -> Any:
    """The IngestOptions of ``medgen ingest`` (``--settings``: the config's ingest section, whose
    secret-file and mapping-file keys belong to the workflow)."""
    from medgen.io.ingest import IngestOptions

    values = _settings(args, IngestOptions, ignore=("uid_salt_file", "mapping_file"))
    if "uid_salt" in values:
        raise OptionError("--settings: the secret does not belong in settings; use MEDGEN_UID_SALT or --uid-salt-file")
    return IngestOptions(**values, uid_salt=uid_salt)


def preprocess_config(args: argparse.Namespace) -> Any:
    """The PreprocessConfig of ``medgen preprocess`` (``--settings``: the config's preprocess
    section, whose min_mask_fraction belongs to the split and the datasets)."""
    from medgen.data.preprocess import PreprocessConfig

    return PreprocessConfig(**_settings(args, PreprocessConfig, ignore=("min_mask_fraction",)))


def phantom_settings(args: argparse.Namespace) -> Any:
    """The PhantomSettings of ``medgen phantom`` (``--settings``: the config's data.phantom section)."""
    from medgen.data.settings import PhantomSettings

    return PhantomSettings(**_settings(args, PhantomSettings))


def split_settings(args: argparse.Namespace) -> Any:
    """The SplitSettings of ``medgen split`` (``--settings``: the config's split section)."""
    from medgen.data.settings import SplitSettings

    return SplitSettings(**_settings(args, SplitSettings))


def eval_settings(args: argparse.Namespace) -> Any:
    """The EvalSettings of ``medgen encoder`` and ``medgen evaluate`` (``--settings``: the config's
    eval section or part of it, whose downstream part is ``medgen downstream``'s)."""
    from medgen.eval.settings import EvalSettings

    values = _settings(args, EvalSettings, ignore=("downstream",))
    if hasattr(args, "extractors_json"):
        values["extractors"] = _json_arg(args.extractors_json, "--extractors-json") if args.extractors_json else {}
    return EvalSettings(**values)


def _ingest(args: argparse.Namespace) -> int:
    from medgen.io.ingest import ingest

    check_output_path(args.out, "folder")
    options = ingest_options(args, _secret(args))
    summary = ingest(args.inputs, args.out, subject=args.subject, modalities=args.modalities, options=options)
    print(summary.render())
    return summary.exit_code


def _preprocess(args: argparse.Namespace) -> int:
    from medgen.data.preprocess import preprocess_subject

    check_output_path(args.out, "folder")
    cfg = preprocess_config(args)
    inputs = {mod: args.input_dir / f"{mod}.nii.gz" for mod in args.modalities}
    preprocess_subject(inputs, args.out, cfg, labels=args.labels)
    print(f"preprocess: wrote {', '.join(args.modalities)} and mask to {args.out}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from medgen.data.splits import make_split, write_split

    check_output_path(args.out, "file")
    settings = split_settings(args)
    split = make_split(args.subjects, fractions=settings.fractions, seed=settings.seed)
    if args.prep_root is not None:
        from medgen.data.usable import check_split_subjects

        check_split_subjects(args.prep_root, split, min_fraction=args.min_mask_fraction)
    write_split(split, args.out)
    print("split: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()) + f" subjects -> {args.out}")
    return 0


#: ``medgen train`` flags named as the keys of the config's ``train`` section (defaults: TrainConfig)
_TRAIN_FLAGS = ("steps", "batch_size", "seed", "device", "precision", "compile", "num_workers", "ckpt_every", "log_every",
                "image_every", "ema_decay", "grad_clip", "val_every", "deterministic")


def _section_arg(text: str, flag: str) -> dict[str, Any]:
    """A settings section given to ``flag``: a JSON object, or a JSON/YAML file holding one."""
    if text.lstrip().startswith("{"):
        return _json_arg(text, flag)
    import yaml

    path = Path(text)
    if not path.is_file():
        raise OptionError(f"{flag}: {text} is neither a JSON object nor a file")
    try:
        value = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise OptionError(f"{flag}: {path} is not valid JSON/YAML ({exc})") from None
    if not isinstance(value, dict):
        raise OptionError(f"{flag}: {path} must hold a mapping of settings, got {type(value).__name__}")
    return value


def train_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The run's TrainConfig and cache settings: TrainConfig's defaults, then ``--settings``,
    then the flags given on the command line."""
    from medgen.train.settings import read_section

    section = _section_arg(args.settings, "--settings") if args.settings else {}
    section.update({key: getattr(args, key) for key in _TRAIN_FLAGS if hasattr(args, key)})
    if getattr(args, "no_amp", False):
        section["amp"] = False
    cache = dict(section.get("cache") or {})
    for dest, key in (("cache_ram_mb", "ram_mb"), ("cache_dir", "dir")):
        if hasattr(args, dest):
            cache[key] = getattr(args, dest)
    if cache:
        section["cache"] = cache
    return read_section(section, args.out)


def _train(args: argparse.Namespace) -> int:
    from medgen.data.datasets import CachePolicy, set_default_cache_policy
    from medgen.train.run import train_task

    task, options = _json_arg(args.task_json, "--task-json"), _json_arg(args.options_json, "--options-json")
    check_output_path(args.out, "folder")
    cfg, cache = train_settings(args)
    valid = [f.name for f in dataclasses.fields(CachePolicy)]
    if set(cache) - set(valid):
        raise OptionError(f"--settings: unknown cache key(s) {', '.join(map(repr, sorted(set(cache) - set(valid))))}; valid keys: {', '.join(valid)}")
    set_default_cache_policy(CachePolicy(**cache))
    path = train_task(
        prep_root=args.prep_root,
        split_path=args.split,
        task=task,
        model_name=args.model,
        options=options,
        train_cfg=cfg,
        extra_manifests=args.extra_data or (),
        resume=not args.no_resume,
        on_mismatch=args.on_mismatch,
        restart=args.restart,
        encoder=args.encoder,
        sample_temperature=args.sample_temperature,
    )
    print(f"train: {args.model} -> {path}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from medgen.models import artifact
    from medgen.synth.sample import held_out_label_maps, sample_to_files

    check_output_path(args.out, "folder")
    trained = artifact.load(args.checkpoint, device=args.device)
    label_maps = None
    if args.label_maps_from is not None:
        label_maps = held_out_label_maps(
            args.label_maps_from[0], args.label_maps_from[1], trained.card.task["modalities"][:1], trained.card.task.get("min_mask_fraction")
        )
    manifest = sample_to_files(
        trained, args.n, args.out, labels=args.labels, temperature=args.temperature, seed=args.seed, label_maps=label_maps
    )
    print(f"sample: {args.n} samples -> {manifest}")
    return 0


def _translate(args: argparse.Namespace) -> int:
    from medgen.models import artifact
    from medgen.synth.translate import translate_volume

    if len(args.input) != len(args.output):
        raise OptionError(f"--input names {len(args.input)} volume(s) but --output {len(args.output)}: give one output per input, in order")
    for output in args.output:
        check_output_path(output, "folder" if args.dicom else "file", flag="--output")
    trained = artifact.load(args.checkpoint, device=args.device)
    salt = _secret(args) if args.dicom else None
    for source, output in zip(args.input, args.output):
        summary = translate_volume(
            trained, source, output, axis=args.axis, overlap=args.overlap, device=args.device, dicom=args.dicom,
            uid_salt=salt, source_modality=args.source_modality, force=args.force, mirror_average=args.mirror_average,
        )
        print(f"translate: {source} -> {output} ({summary.get('units', '')})")
    return 0


def _encoder(args: argparse.Namespace) -> int:
    from medgen.eval.generation_run import train_study_encoder

    check_output_path(args.out, "file")
    steps = eval_settings(args).encoder_steps
    path = train_study_encoder(prep_root=args.prep_root, split_path=args.split, modalities=args.modalities, out_path=args.out, steps=steps, seed=args.seed)
    print(f"encoder: trained on the training split -> {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    check_output_path(args.out, "file")
    if args.kind == "translation":
        if not args.task_json:
            raise OptionError("evaluate translation needs --task-json (the task's source and target)")
        from medgen.eval.translation_run import evaluate_translation, read_baselines

        result = evaluate_translation(
            task=_json_arg(args.task_json, "--task-json"), model=args.model, pred_dir=args.pred_dir, nifti_root=args.nifti_root,
            prep_root=args.prep_root, split_path=args.split, out_json=args.out, seed=args.seed,
            baselines=read_baselines(args.baselines) if args.baselines else None,
        )
        mae = result["aggregate"]["mae"]
        print(f"evaluate: {args.model} MAE {mae['mean']:.4g} {result['units']} over {mae['n']} test subjects -> {args.out}")
        return 0
    from medgen.eval.generation_run import evaluate_generation
    from medgen.models.artifact import read_card

    card = read_card(args.checkpoint)
    settings = eval_settings(args)
    if "encoder" in settings.features and args.encoder is None:
        raise OptionError("--features encoder needs --encoder FILE (the study encoder written by `medgen encoder`); or leave encoder out of --features")
    weights = settings.extractors
    # eval.extractors entries: {"weights": path, **options} -> the extractor's weights_path and options
    extractors: dict[str, dict] = {name: {("weights_path" if k == "weights" else k): v for k, v in weights.get(name, {}).items()} for name in settings.features}
    if "encoder" in extractors:
        extractors["encoder"] = {"path": args.encoder}
    if "radiomics" in extractors:
        extractors["radiomics"] = {"image_types": ["Original"]}
    result = evaluate_generation(
        card=card, model=args.model, manifest=args.samples, prep_root=args.prep_root, split_path=args.split,
        out_json=args.out, extractors=extractors, max_real=settings.max_real, seed=args.seed,
    )
    memo = result["memorization"]
    print(
        f"evaluate: {args.model} likely copies {memo['likely_copy_share']:.1%} of {memo['n_synthetic']} samples against all {memo['n_train']} training slices"
        f" (pixel threshold {memo['threshold']:.4g}: the {memo['alpha']:g}-quantile of {memo['n_test']} test slices' distances) -> {args.out}"
    )
    return 0


def _baselines(args: argparse.Namespace) -> int:
    from medgen.eval.baselines import run_baselines

    check_output_path(args.out, "file")
    check_output_path(args.out_dir, "folder", flag="--out-dir")
    result = run_baselines(
        task=_json_arg(args.task_json, "--task-json"), prep_root=args.prep_root, nifti_root=args.nifti_root, split_path=args.split,
        out_dir=args.out_dir, out_json=args.out, seed=args.seed,
    )
    for name, entry in result["baselines"].items():
        print(f"baselines: {name} MAE {entry['aggregate']['mae']['mean']:.4g} {result['units']}")
    print(f"baselines: -> {args.out}")
    return 0


def _downstream(args: argparse.Namespace) -> int:
    from medgen.eval.downstream import evaluate_downstream
    from medgen.eval.settings import DownstreamSettings

    models: dict[str, list[Path]] = {}
    for item in args.model or []:
        name, sep, paths = item.partition("=")
        if not sep or not paths:
            raise OptionError(f"--model {item!r}: expected NAME=PATH[,PATH...] (one model.pt per training seed)")
        models[name] = [Path(p) for p in paths.split(",")]
    check_output_path(args.out, "file")
    result = evaluate_downstream(
        task=_json_arg(args.task_json, "--task-json"), prep_root=args.prep_root, split_path=args.split, out_json=args.out, models=models,
        **_settings(args, DownstreamSettings),
    )
    for name, setting in result["settings"].items():
        print(f"downstream: {name} mean Dice {setting['mean_dice']['mean']:.3f} over {len(result['seeds'])} seeds")
    print(f"downstream: -> {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from medgen.report.html import report_main

    check_output_path(args.out, "file")
    config_path = args.config
    if args.config_json is not None:
        if config_path is not None:
            raise OptionError("--config and --config-json both name the config: give one")
        config_path = _write_config_copy(args.results, args.config_json)
    code = report_main(args.results, args.out, config_path)
    if code == 0:
        print(f"report: {args.out.resolve()}")
    return code


def _write_config_copy(results: Path, config_json: str) -> Path:
    """Write ``config_json`` (the workflow's config) to the results folder's config copy, without
    its secret-bearing keys; returns its path."""
    import yaml

    from medgen import layout
    from medgen.io.atomic import atomic_write_text
    from medgen.io.secret import public_config

    config = _json_arg(config_json, "--config-json")
    path = Path(layout.config_copy(results))
    atomic_write_text(path, yaml.safe_dump(public_config(config), sort_keys=False))
    return path


#: flags whose default is the settings' own (absent unless given, so that they override a settings file only when given)
S = argparse.SUPPRESS


def _show(values: Sequence[Any]) -> str:
    return " ".join(map(str, values))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (also used to document the CLI); defaults come from the settings classes."""
    from medgen.data.settings import PhantomSettings, SplitSettings
    from medgen.eval.settings import DownstreamSettings, EvalSettings
    from medgen.train.settings import engine_defaults

    parser = argparse.ArgumentParser(prog="medgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("phantom", help="write the multi-modal brain phantom cohort (NIfTI + DICOM)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    ph = PhantomSettings()
    p.add_argument("--settings", metavar="JSON|FILE",
                   help="the config's data.phantom section as a JSON object or a JSON/YAML file; the flags below override it (defaults: PhantomSettings)")
    p.add_argument("--subjects", type=_at_least(1), default=S, help=f"number of subjects (sub-001 ...; default {ph.subjects})")
    p.add_argument("--seed", type=int, default=S, help=f"cohort seed; each subject's draw depends only on it and its index (default {ph.seed})")
    p.add_argument("--spacing", dest="spacing_mm", type=float, default=S,
                   help=f"isotropic voxel size in mm (template is 1 mm; default {ph.spacing_mm})")
    p.add_argument("--only", nargs="+", metavar="SUBJECT", help="write only these subjects (e.g. sub-003)")
    p.add_argument("--no-dicom", action="store_true", help="write NIfTI only")
    p.add_argument("--workers", type=_at_least(1), help="worker processes (default: one per CPU, at most one per subject)")
    p.set_defaults(handler=_phantom)

    p = verbs.add_parser("ingest", help="DICOM folders / BIDS-like trees / manifest TSV -> de-identified NIfTI + JSON sidecars")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="DICOM folder, BIDS-like root, NIfTI file or manifest .tsv")
    p.add_argument("--out", type=Path, required=True, help="output root: OUT/<subject>/<modality>.nii.gz")
    p.add_argument("--subject", help="subject label for every input; refused if they hold several patients (default: BIDS label, or a keyed pseudonym)")
    p.add_argument("--modalities", nargs="+", help="modalities that must be found (others are still converted)")
    p.add_argument("--settings", metavar="JSON|FILE",
                   help="the config's ingest section as a JSON object or a JSON/YAML file; the flags below override it (defaults: IngestOptions)")
    p.add_argument("--on-tilt", choices=["refuse", "resample"], default=S,
                   help="gantry-tilted series: resample onto an orthogonal grid holding the whole stack (default), or refuse")
    p.add_argument("--on-uneven", choices=["refuse", "resample"], default=S, help="missing slices / uneven spacing")
    p.add_argument("--keep-descriptions", action="store_true", default=S, help="keep SeriesDescription/ProtocolName in sidecars")
    p.add_argument("--uid-salt-file", type=Path, help="file holding the pseudonym secret (default: the MEDGEN_UID_SALT environment variable)")
    p.add_argument("--demo-secret", action="store_true", help="use the public demo secret (phantom data only: its pseudonyms protect nothing)")
    p.add_argument("--keep-subject-labels", action="store_true", default=S, help="keep a manifest's subject labels (else keyed pseudonyms)")
    p.add_argument("--merge-patients", action="store_true", default=S, help="let --subject take inputs that hold several patients (PatientID)")
    p.add_argument("--nonfinite", choices=["error", "zero", "min"], default=S, help="NaN/inf voxels in NIfTI input")
    p.add_argument("--form-mismatch", choices=["error", "warn"], default=S, help="NIfTI qform != sform")
    p.add_argument("--min-slices", type=_at_least(1), default=S, help="series with fewer slices are skipped (default 1: single slices convert)")
    p.add_argument("--allow-constant", action="store_true", default=S, help="keep images whose voxels all have one value (refused by default)")
    p.set_defaults(handler=_ingest)

    p = verbs.add_parser("preprocess", help="reorient, resample, mask, normalise one subject (MONAI transforms)")
    p.add_argument("--input-dir", type=Path, required=True, help="folder with <modality>.nii.gz (ingest output)")
    p.add_argument("--modalities", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", metavar="JSON|FILE",
                   help="the config's preprocess section as a JSON object or a JSON/YAML file; the flags below override it (defaults: PreprocessConfig)")
    p.add_argument("--spacing", type=float, nargs=3, default=S, metavar=("X", "Y", "Z"), help="voxel size in mm")
    p.add_argument("--size", type=int, nargs=3, default=S, metavar=("X", "Y", "Z"), help="output grid in voxels")
    p.add_argument("--mr-norm", choices=["percentile", "zscore"], default=S)
    p.add_argument("--mr-percentiles", type=float, nargs=2, default=S, metavar=("LOW", "HIGH"))
    p.add_argument("--ct-window", type=float, nargs=2, default=S, metavar=("LOW", "HIGH"), help="HU window mapped to [-1, 1]")
    p.add_argument("--register", action="store_true", default=S, help="rigidly register each modality to the reference (SimpleITK)")
    p.add_argument("--reference", default=S, help="modality whose grid the others follow (default: the first)")
    p.add_argument("--labels", type=Path, help="ground-truth label map resampled with the images (nearest neighbour)")
    p.set_defaults(handler=_preprocess)

    p = verbs.add_parser("split", help="subject-level train/val/test split")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    sp = SplitSettings()
    p.add_argument("--settings", metavar="JSON|FILE",
                   help="the config's split section as a JSON object or a JSON/YAML file; the flags below override it (defaults: SplitSettings)")
    p.add_argument("--fractions", type=float, nargs=3, default=S, metavar=("TRAIN", "VAL", "TEST"), help=f"default {_show(sp.fractions)}")
    p.add_argument("--seed", type=int, default=S, help=f"default {sp.seed}")
    p.add_argument("--prep-root", type=Path, help="preprocessed subjects: refuse a split whose subjects have no slice usable for their role")
    p.add_argument("--min-mask-fraction", type=float, default=0.05,
                   help="with --prep-root: a usable slice's head-mask share (preprocess.min_mask_fraction; training and evaluation use the same)")
    p.set_defaults(handler=_split)

    p = verbs.add_parser("train", help="train one model of one task (resumes from OUT/checkpoint.pt)")
    p.add_argument("--prep-root", type=Path, required=True, help="preprocessed subjects (results/prep)")
    p.add_argument("--split", type=Path, required=True, help="splits.json; only its train subjects are used")
    p.add_argument("--task-json", required=True, help='task as JSON, e.g. {"name": "t1", "kind": "generation", "modalities": ["T1w"]}')
    p.add_argument("--model", required=True, help="model name from the registry (glow, gan, cgan, ...)")
    p.add_argument("--options-json", default="{}", help="model options as JSON")
    p.add_argument("--out", type=Path, required=True, help="run folder: model.pt, checkpoint.pt, log.jsonl, tb/, samples/")
    p.add_argument("--settings", metavar="JSON|FILE",
                   help="training settings (the config's train section) as a JSON object or a JSON/YAML file; the flags below override it")
    d = engine_defaults()
    p.add_argument("--steps", type=_at_least(1), default=S, help=f"training steps (default {d['steps']})")
    p.add_argument("--batch-size", type=_at_least(1), default=S, help=f"per process (default {d['batch_size']})")
    p.add_argument("--seed", type=int, default=S, help=f"default {d['seed']}")
    p.add_argument("--device", default=S, help=f"auto (CUDA when present), cpu, cuda, cuda:1 ... (default {d['device']})")
    p.add_argument("--no-amp", action="store_true", default=S, help="disable mixed precision (same as --precision fp32)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=S,
                   help=f"auto: bf16 autocast on GPUs with bf16 and CPUs with avx512_bf16/AMX, fp16 on older GPUs, else fp32 (default {d['precision']})")
    p.add_argument("--compile", action="store_true", default=S, help="torch.compile the networks")
    p.add_argument("--num-workers", type=_at_least(0), default=S, help=f"data-loading worker processes (default {d['num_workers']})")
    p.add_argument("--cache-ram-mb", type=float, default=S, help="MB of volumes cached in RAM (default: all); the rest on disk")
    p.add_argument("--cache-dir", type=Path, default=S, help="local-disk cache for volumes beyond --cache-ram-mb (default: a temporary folder)")
    p.add_argument("--ckpt-every", type=_at_least(1), default=S, help=f"steps between checkpoints (default {d['ckpt_every']})")
    p.add_argument("--log-every", type=_at_least(1), default=S, help=f"steps between log points (default {d['log_every']})")
    p.add_argument("--image-every", type=_at_least(0), default=S, help=f"steps between sample grids, 0: none (default {d['image_every']})")
    p.add_argument("--ema-decay", type=float, default=S, help=f"<= 0 disables the EMA (default {d['ema_decay']})")
    p.add_argument("--grad-clip", type=float, default=S, help=f"max global gradient norm (default {d['grad_clip']})")
    p.add_argument("--val-every", type=int, default=S,
                   help=f"translation: validation MAE every N steps; model.pt holds the best (0: none, last weights; default {d['val_every']})")
    p.add_argument("--encoder", type=Path, default=None, help="generation: study encoder (medgen encoder); with --val-every, FD on the validation split picks model.pt")
    p.add_argument("--sample-temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"generation: the temperature `medgen sample` will draw at; validation samples draw at it too (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--deterministic", action="store_true", default=S, help="deterministic algorithms where torch has them (see medgen.train.determinism)")
    p.add_argument("--extra-data", type=Path, nargs="+", help="augmentation manifests (medgen sample) added to the training data")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/checkpoint.pt exists")
    p.add_argument("--restart", action="store_true",
                   help="move the previous run's checkpoint.pt, model.pt and log.jsonl aside (*.stale-<n>.*) and train from scratch")
    p.add_argument("--on-mismatch", choices=("refuse", "restart"), default="refuse",
                   help="when OUT/checkpoint.pt belongs to a different run (model, options, task, split, preprocessing, "
                        "data, batch size, seed): refuse with a message (default) or move it aside and train from scratch")
    p.set_defaults(handler=_train)

    p = verbs.add_parser("sample", help="draw samples of a trained model as NIfTI + PNG grid + manifest")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt written by medgen train")
    p.add_argument("--n", type=_at_least(1), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", type=int, nargs="+", help="class labels to cycle through (conditional models)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--label-maps-from", type=Path, nargs=2, metavar=("PREP_ROOT", "SPLIT"),
                   help="label-map models: tissue maps of the test split's slices condition the samples")
    p.set_defaults(handler=_sample)

    p = verbs.add_parser("translate", help="translate a whole volume into the target modality, in scanner space and units")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt of a translation model")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="NIfTI file(s) or DICOM folder(s) of the source modality")
    p.add_argument("--output", type=Path, nargs="+", required=True, help=".nii.gz file, or a folder with --dicom; one per --input, in order")
    p.add_argument("--axis", type=int, choices=[0, 1, 2], help="slice axis for 2D models (RAS; default: as trained)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap for 3D models")
    p.add_argument("--mirror-average", action=argparse.BooleanOptionalAction, default=True,
                   help="average the translations of the volume and of its left-right mirror image (default: on)")
    p.add_argument("--dicom", action="store_true", help="write a derived DICOM series instead of NIfTI")
    p.add_argument("--uid-salt-file", type=Path, help="--dicom: file holding the pseudonym secret (default: MEDGEN_UID_SALT)")
    p.add_argument("--source-modality", help="modality of the input (e.g. T1w, CT) when neither a sidecar JSON nor DICOM says it")
    p.add_argument("--force", action="store_true",
                   help="translate even if the input's modality is not the model's source (recorded in the output's sidecar)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_translate)

    p = verbs.add_parser("encoder", help="train the study's in-domain feature encoder on the training split")
    p.add_argument("--prep-root", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--modalities", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    ev = EvalSettings()
    p.add_argument("--settings", metavar="JSON|FILE",
                   help="the config's eval section (encoder_steps) as a JSON object or a JSON/YAML file; --steps overrides it")
    p.add_argument("--steps", dest="encoder_steps", type=_at_least(1), default=S, help=f"training steps (eval.encoder_steps, default {ev.encoder_steps})")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_encoder)

    p = verbs.add_parser("evaluate", help="metrics of one trained model (paired for translation, distribution + memorization for generation)")
    p.add_argument("kind", choices=["translation", "generation"])
    p.add_argument("--model", required=True, help="model name (for the metrics file)")
    p.add_argument("--prep-root", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="metrics JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task-json", help="translation: the task as JSON (source, target)")
    p.add_argument("--pred-dir", type=Path, help="translation: folder of <subject>.nii.gz outputs")
    p.add_argument("--nifti-root", type=Path, help="translation: ingested volumes (ground truth)")
    p.add_argument("--checkpoint", type=Path, help="generation: model.pt")
    p.add_argument("--samples", type=Path, help="generation: manifest.tsv of the samples")
    p.add_argument("--settings", metavar="JSON|FILE",
                   help="generation: the config's eval section (features, max_real, extractors) as a JSON object or a JSON/YAML file; "
                        "the flags below override it (defaults: EvalSettings)")
    p.add_argument("--features", nargs="+", default=S,
                   help=f"generation: feature extractors (default {_show(ev.features)}; encoder needs --encoder)")
    p.add_argument("--encoder", type=Path, help="generation: the study encoder (for --features encoder)")
    p.add_argument("--max-real", type=_at_least(1), default=S,
                   help=f"generation: real test slices drawn (default {ev.max_real}; the memorization audit uses every training slice)")
    p.add_argument("--extractors-json", default=S,
                   help='generation: pretrained extractors as JSON, e.g. {"radimagenet": {"weights": "rin.pt"}} (config eval.extractors)')
    p.add_argument("--baselines", type=Path, help="translation: the task's baselines.json, copied into the metrics file")
    p.set_defaults(handler=_evaluate)

    p = verbs.add_parser("baselines", help="translation baselines (intensity matching, lookup, resolution floor) on the test subjects")
    p.add_argument("--task-json", required=True, help="the task as JSON (name, source, target)")
    p.add_argument("--prep-root", type=Path, required=True, help="preprocessed subjects (the fit uses the training split)")
    p.add_argument("--nifti-root", type=Path, required=True, help="ingested volumes (inputs and ground truth)")
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the baselines' test volumes")
    p.add_argument("--out", type=Path, required=True, help="baselines JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    p.set_defaults(handler=_baselines)

    p = verbs.add_parser("downstream", help="segmentation Dice on the real test split, trained on real data alone and with each model's synthetic data")
    p.add_argument("--task-json", required=True, help="the task as JSON (translation: source, target; label-map generation: modalities)")
    p.add_argument("--prep-root", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="downstream JSON")
    p.add_argument("--model", action="append", metavar="NAME=PATH[,PATH]", help="a trained model (one model.pt per seed); repeatable")
    ds = DownstreamSettings()
    p.add_argument("--settings", metavar="JSON|FILE", help="the config's eval.downstream section as a JSON object or a JSON/YAML file; the flags below override it")
    p.add_argument("--seeds", type=int, nargs="+", default=S, help=f"segmentation training seeds (default {_show(ds.seeds)})")
    p.add_argument("--steps", type=int, default=S, help=f"segmentation training steps per seed (default {ds.steps})")
    p.add_argument("--batch-size", type=int, default=S, help=f"default {ds.batch_size}")
    p.add_argument("--channels", type=int, nargs="+", default=S, help=f"UNet channels per level (default {_show(ds.channels)})")
    p.add_argument("--min-mask-fraction", type=float, default=S, help=f"slices with a smaller head-mask share are left out (default {ds.min_mask_fraction})")
    p.set_defaults(handler=_downstream)

    p = verbs.add_parser("report", help="one self-contained HTML page of a results folder")
    p.add_argument("--results", type=Path, required=True, help="the workflow's results folder")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.add_argument("--config", type=Path, help="the config to show (default: RESULTS/config.yaml)")
    p.add_argument("--config-json", help="the workflow's config as JSON: written to RESULTS/config.yaml (secret-bearing keys left out) and shown")
    p.set_defaults(handler=_report)
    return parser


def _quiet_optional_backends() -> None:
    """MONAI announces, on import, GPU image decoders that medgen does not use: keep logs readable."""
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medgen`` console script; returns the process exit status.

    The one error boundary of the command line: an expected failure (see :mod:`medgen.errors`)
    becomes one line on stderr and the exit status of its class; anything else is a bug and
    shows its traceback with a request to report it.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_optional_backends()
    try:
        return int(args.handler(args))
    except BaseException as exc:  # noqa: BLE001 - the boundary: every failure leaves through here
        if isinstance(exc, SystemExit):
            raise
        known = classify(exc)
        if known is not None:
            code, message = known
            print(f"medgen {args.verb}: error: {message}", file=sys.stderr)
            return int(code)
        traceback.print_exc()
        print(
            f"medgen {args.verb}: internal error ({type(exc).__name__}): this is a bug in medgen {__version__}; "
            "please file a bug report with the command line and the traceback above",
            file=sys.stderr,
        )
        return int(ExitCode.BUG)


if __name__ == "__main__":
    sys.exit(main())
