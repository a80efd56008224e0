# medgen workflow: DICOM/NIfTI -> de-identified NIfTI -> preprocessed volumes -> subject split
# -> trained models -> samples and translated volumes -> metrics -> report.html.
# Every rule calls the `medgen` command line; pipeline/ computes subjects and file names.
import shlex
import sys

import yaml

from pipeline.checks import check_input_data
from pipeline.config import validate_config
from pipeline.subjects import subjects_of, ingest_inputs

# The demo config applies only when none is given: a user's --configfile replaces it instead of
# being merged into it (merging would add the phantom to every user's data sources).
if not config:
    config.update(yaml.safe_load(open(workflow.basedir + "/configs/default.yaml")))

try:
    config = validate_config(config)
    # Input files checked at the door (once, by the main process; not again inside each job).
    if workflow.is_main_process:
        check_input_data(config)
except ValueError as exc:
    raise WorkflowError(str(exc)) from None

# Every rule runs the medgen of the Python that runs this workflow (`.venv/bin/snakemake` ->
# `.venv/bin/python -m medgen.cli`), so no environment needs activating and no other `medgen` on
# PATH is picked up. SLURM jobs run the same interpreter path (a shared filesystem). Braces are
# doubled because Snakemake formats each shell command.
PYTHON = shlex.quote(sys.executable).replace("{", "{{").replace("}", "}}")
MEDGEN = f"{PYTHON} -m medgen.cli"

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


# A failed job's console message names its log; print the end of each such log as well.
from pipeline.failed_logs import failed_job_logs, log_tail

onerror:
    for path in failed_job_logs(log):
        print(log_tail(path), file=sys.stderr)
