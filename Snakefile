# medgen workflow: DICOM/NIfTI -> de-identified NIfTI -> preprocessed volumes -> subject split
# -> trained models -> samples and translated volumes -> metrics -> report.html.
# Every rule calls the `medgen` command line; pipeline/ computes subjects and file names.
import shlex
import sys

import yaml

from medgen import layout
from medgen.io.discover import SUBJECT_PATTERN
from medgen.io.secret import DEMO_SECRET, SecretMissing, load_secret
from pipeline.checks import check_input_data
from pipeline.config import validate_config
from pipeline.subjects import ingest_inputs, needs_secret, subject_sources, write_subject_mapping
from pipeline.targets import model_wildcard

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
MODALITIES = config["modalities"]
USE_PHANTOM = "phantom" in config["data"]

# Subjects are named by keyed pseudonyms, so the secret is needed before any job: from the
# environment (MEDGEN_UID_SALT, inherited by every job) or a file (ingest.uid_salt_file, whose
# path, not content, is passed on). It never appears on a command line or in a file medgen writes.
if needs_secret(config):
    try:
        _SECRET = load_secret(config["ingest"]["uid_salt_file"])
    except SecretMissing as exc:
        raise WorkflowError(f"medgen needs a secret for subject pseudonyms before it starts: {exc}") from None
else:
    _SECRET = DEMO_SECRET  # the phantom demo: public, and said so in the report
try:
    SUBJECT_SOURCES = subject_sources(config, _SECRET)
except ValueError as exc:
    raise WorkflowError(str(exc)) from None
del _SECRET
SUBJECTS = list(SUBJECT_SOURCES)
if USE_PHANTOM:
    INGEST_SECRET_FLAG = "--demo-secret"
elif config["ingest"]["uid_salt_file"]:
    INGEST_SECRET_FLAG = "--uid-salt-file " + shlex.quote(config["ingest"]["uid_salt_file"])
else:
    INGEST_SECRET_FLAG = ""  # MEDGEN_UID_SALT, inherited from this process's environment


onstart:
    if config["ingest"]["mapping_file"]:
        write_subject_mapping(config["ingest"]["mapping_file"], SUBJECT_SOURCES)

wildcard_constraints:
    subject=SUBJECT_PATTERN,
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
        expand(layout.prep_mapping(RESULTS), subject=SUBJECTS),
        layout.splits_file(RESULTS),
        layout.report_html(RESULTS),
    default_target: True


# A failed job's console message names its log; print the end of each such log as well.
from pipeline.failed_logs import failed_job_logs, log_tail

onerror:
    for path in failed_job_logs(log):
        print(log_tail(path), file=sys.stderr)
