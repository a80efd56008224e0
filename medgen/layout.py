"""Where each result of a study lies under its results folder, in one place.

The workflow's rules and targets (:mod:`pipeline.targets`) name their files with these functions
and the report (:mod:`medgen.report.results`) finds them with the same ones. Every argument left
out stays a ``{name}`` placeholder, so that ``model_file(results)`` is the pattern
``<results>/models/{task}/{model}/model.pt`` (``str.format`` style, as workflow managers take
them) and ``model_file(results, "t1_to_ct", "pix2pix")`` one file::

    nifti/{subject}/{modality}.nii.gz (+ .json sidecar, ingest_summary.json)   ingest
    phantom/dicom/{subject}/, phantom/nifti/{subject}/labels.nii.gz           demo data
    prep/{subject}/{modality}.nii.gz, mask, labels, normalisation.json        preprocessing
    splits.json                                                               subject split
    models/{task}/{model}/model.pt (+ log.jsonl, samples/step_*.png)          training
    augment/{task}/{model}/manifest.tsv, grid.png                             samples
    synth/{task}/{model}/{subject}.nii.gz                                     translations
    metrics/{task}/{model}.json, baselines.json, downstream.json              evaluation
    report.html, metrics.tsv, config.yaml                                     report

A *run* (the ``{model}`` placeholder) is a model name, or ``<model>/seed-<s>`` when its task
trains several seeds (:func:`run_name`); every per-model path then gains one folder level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

#: a results folder: a path or its text
Root = Union[str, os.PathLike]

#: Prefix of a run's seed folder (``pix2pix/seed-1``).
SEED_FOLDER = "seed-"
#: What one subject's ingest did (converted, skipped, failed, missing), beside its images.
#: Not a modality name: those hold no ``_``.
INGEST_SUMMARY = "ingest_summary.json"
#: Files of one subject's preprocessed folder besides its images: the head mask, the label map
#: (when the subject has one) and the normalisation record, written last (the completion marker).
MASK_FILE = "mask.nii.gz"
LABELS_FILE = "labels.nii.gz"
NORMALISATION_JSON = "normalisation.json"


def run_name(model: str, seed: int | None = None) -> str:
    """``model``, or ``model/seed-<seed>`` for one of several seeds."""
    return model if seed is None else f"{model}/{SEED_FOLDER}{seed}"


# --------------------------------------------------------------------------- ingest and demo data


def nifti_dir(results: Root) -> str:
    """Ingested images, one folder per subject."""
    return f"{results}/nifti"


def nifti_subject_dir(results: Root, subject: str = "{subject}") -> str:
    return f"{results}/nifti/{subject}"


def nifti_image(results: Root, subject: str = "{subject}", modality: str = "{modality}") -> str:
    return f"{results}/nifti/{subject}/{modality}.nii.gz"


def nifti_sidecar(results: Root, subject: str = "{subject}", modality: str = "{modality}") -> str:
    return f"{results}/nifti/{subject}/{modality}.json"


def ingest_summary(results: Root, subject: str = "{subject}") -> str:
    """The summary that ``medgen ingest --subject`` writes beside the subject's images."""
    return f"{results}/nifti/{subject}/{INGEST_SUMMARY}"


def phantom_dir(results: Root) -> str:
    return f"{results}/phantom"


def phantom_dicom(results: Root, subject: str = "{subject}") -> str:
    return f"{results}/phantom/dicom/{subject}"


def phantom_labels(results: Root, subject: str = "{subject}") -> str:
    return f"{results}/phantom/nifti/{subject}/labels.nii.gz"


# --------------------------------------------------------------------------- preprocessing and split


def prep_dir(results: Root) -> str:
    """Preprocessed images, one folder per subject."""
    return f"{results}/prep"


def prep_subject_dir(results: Root, subject: str = "{subject}") -> str:
    return f"{results}/prep/{subject}"


def prep_image(results: Root, subject: str = "{subject}", modality: str = "{modality}") -> str:
    return f"{results}/prep/{subject}/{modality}.nii.gz"


def prep_mask(results: Root, subject: str = "{subject}") -> str:
    return f"{results}/prep/{subject}/{MASK_FILE}"


def prep_labels(results: Root, subject: str = "{subject}") -> str:
    return f"{results}/prep/{subject}/{LABELS_FILE}"


def prep_mapping(results: Root, subject: str = "{subject}") -> str:
    """The subject's normalisation record, written last by preprocessing (its completion marker)."""
    return f"{results}/prep/{subject}/{NORMALISATION_JSON}"


def splits_file(results: Root) -> str:
    return f"{results}/splits.json"


# --------------------------------------------------------------------------- models and their outputs


def models_dir(results: Root) -> str:
    """Trained models: ``<task>/<run>/`` folders."""
    return f"{results}/models"


def model_dir(results: Root, task: str = "{task}", model: str = "{model}") -> str:
    return f"{results}/models/{task}/{model}"


def model_file(results: Root, task: str = "{task}", model: str = "{model}") -> str:
    return f"{results}/models/{task}/{model}/model.pt"


def samples_root(results: Root) -> str:
    """Augmentation sets of generation models: ``<task>/<run>/`` folders."""
    return f"{results}/augment"


def samples_dir(results: Root, task: str = "{task}", model: str = "{model}") -> str:
    return f"{results}/augment/{task}/{model}"


def samples_manifest(results: Root, task: str = "{task}", model: str = "{model}") -> str:
    return f"{results}/augment/{task}/{model}/manifest.tsv"


def samples_grid(results: Root, task: str = "{task}", model: str = "{model}") -> str:
    return f"{results}/augment/{task}/{model}/grid.png"


def translations_root(results: Root) -> str:
    """Translated test volumes: ``<task>/<run>/<subject>.nii.gz``."""
    return f"{results}/synth"


def translations_dir(results: Root, task: str = "{task}", model: str = "{model}") -> str:
    return f"{results}/synth/{task}/{model}"


def translation(results: Root, task: str = "{task}", model: str = "{model}", subject: str = "{subject}") -> str:
    return f"{results}/synth/{task}/{model}/{subject}.nii.gz"


# --------------------------------------------------------------------------- evaluation and report


def metrics_dir(results: Root) -> str:
    """Metrics: ``<task>/<run>.json`` per run, beside the task's baselines and downstream files."""
    return f"{results}/metrics"


def metrics_file(results: Root, task: str = "{task}", model: str = "{model}") -> str:
    return f"{results}/metrics/{task}/{model}.json"


def baselines_metrics(results: Root, task: str = "{task}") -> str:
    return f"{results}/metrics/{task}/baselines.json"


def baselines_dir(results: Root, task: str = "{task}") -> str:
    """The baselines' own outputs (their translated volumes)."""
    return f"{results}/baselines/{task}"


def downstream_metrics(results: Root, task: str = "{task}") -> str:
    return f"{results}/metrics/{task}/downstream.json"


def encoder_file(results: Root) -> str:
    """The study's feature encoder for distribution metrics."""
    return f"{results}/eval/encoder.pt"


def benchmarks_dir(results: Root) -> str:
    """Each job's time and memory: ``<rule>/**/*.tsv``."""
    return f"{results}/benchmarks"


def report_html(results: Root) -> str:
    return f"{results}/report.html"


def metrics_table(results: Root) -> str:
    """Every metric in one flat table, beside the report."""
    return f"{results}/metrics.tsv"


def config_copy(results: Root) -> str:
    """The study's configuration as run (secrets left out), read by the report."""
    return f"{results}/config.yaml"


# --------------------------------------------------------------------------- what a folder holds


def subfolders(folder: Root) -> list[Path]:
    """The folders in ``folder``, sorted; none when it does not exist."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def runs(task_folder: Root) -> list[str]:
    """Run names found in a task's folder (under models/, augment/ or synth/): each model folder,
    or its ``seed-<s>`` folders when it has some."""
    names = []
    for model in subfolders(task_folder):
        seeds = [d.name for d in subfolders(model) if d.name.startswith(SEED_FOLDER)]
        names += [f"{model.name}/{seed}" for seed in seeds] or [model.name]
    return names
