# medgen workflow: DICOM/NIfTI -> de-identified NIfTI -> preprocessed volumes -> subject split
# -> trained models -> samples.
# Every rule calls the `medgen` command line; pipeline/ computes subjects and file names.
import yaml

from pipeline.config import validate_config
from pipeline.subjects import subjects_of, ingest_inputs

# The demo config applies only when none is given: a user's --configfile replaces it instead of
# being merged into it (merging would add the phantom to every user's data sources).
if not config:
    config.update(yaml.safe_load(open(workflow.basedir + "/configs/default.yaml")))

try:
    config = validate_config(config)
except ValueError as exc:
    raise WorkflowError(str(exc)) from None

RESULTS = config["results"]
SUBJECTS = subjects_of(config)
MODALITIES = config["modalities"]
USE_PHANTOM = "phantom" in config["data"]

wildcard_constraints:
    subject=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    task=r"[A-Za-z0-9_-]+",
    model=r"[A-Za-z0-9_-]+",

include: "rules/phantom.smk"
include: "rules/ingest.smk"
include: "rules/preprocess.smk"
include: "rules/split.smk"
include: "rules/train.smk"
include: "rules/sample.smk"

from pipeline.targets import task_models


rule all:
    input:
        expand(f"{RESULTS}/prep/{{subject}}/normalisation.json", subject=SUBJECTS),
        f"{RESULTS}/splits.json",
        [f"{RESULTS}/augment/{t}/{m}/manifest.tsv" for t, m in task_models(config, "generation")],
        [f"{RESULTS}/models/{t}/{m}/model.pt" for t, m in task_models(config, "translation")],
    default_target: True
