# medgen workflow: DICOM/NIfTI -> de-identified NIfTI -> preprocessed volumes -> subject split
# -> trained models -> samples and translated volumes -> metrics -> report.html.
# Every rule calls the `medgen` command line; pipeline/ computes subjects and file names.
import yaml

from pipeline.config import validate_config
from pipeline.subjects import subjects_of, ingest_inputs
from pipeline.targets import model_wildcard

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
    model=model_wildcard(),  # a registry model name, with /seed-<n> when the task lists several seeds

include: "rules/phantom.smk"
include: "rules/ingest.smk"
include: "rules/preprocess.smk"
include: "rules/split.smk"
from pipeline.splits import test_subjects
from pipeline.targets import task_models

TEST_SUBJECTS = test_subjects(config, SUBJECTS)

include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/translate.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        expand(f"{RESULTS}/prep/{{subject}}/normalisation.json", subject=SUBJECTS),
        f"{RESULTS}/splits.json",
        f"{RESULTS}/report.html",
    default_target: True
