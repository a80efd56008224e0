"""The workflow through a real (one-node) SLURM cluster with configs/profiles/slurm.

Needs root and the slurm-wlm and munge packages (scripts/install_slurm.sh); skipped otherwise.
The cluster has no accounting database, so the executor is told to poll `squeue` instead of
`sacct` and to submit without an account; everything else comes from the profile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slurm_cluster import SlurmCluster, missing_requirements

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "configs" / "profiles" / "slurm"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
# What a cluster without accounting needs on top of the profile, plus test conveniences: keep the
# SLURM logs of successful jobs (to check that jobs ran there), poll every few seconds instead of
# after 40 s, and fail at once instead of resubmitting.
LOCAL_CLUSTER_FLAGS = [
    "--slurm-status-command", "squeue",
    "--slurm-no-account",
    "--slurm-keep-successful-logs",
    "--slurm-init-seconds-before-status-checks", "2",
    "--retries", "0",
    "--latency-wait", "5",
    "--jobs", "4",
]
SUBJECTS = ["sub-001", "sub-002", "sub-003"]

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]


@pytest.fixture
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node cluster; afterwards checks that none of its daemons is left."""
    cluster = SlurmCluster()
    with cluster:
        pids = cluster.daemon_pids()
        yield cluster
    left = [pid for pid in pids if _running(pid)]
    assert not left, f"SLURM/MUNGE daemons still running after stop: {left}"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    # Jobs inherit this environment (sbatch --export=ALL): rules call the venv's `medgen`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MEDGEN_NO_PROGRESS"] = "1"
    return env


def _slurm_logs(workdir: Path, lines: int = 20) -> str:
    """The last lines of every SLURM job log (for assertion messages)."""
    logdir = workdir / ".snakemake" / "slurm_logs"
    parts = []
    for log in sorted(logdir.rglob("*.log")) if logdir.exists() else []:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.relative_to(workdir)}\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no SLURM job logs under {logdir})"


def test_workflow_runs_through_slurm(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    config = {
        "data": {"phantom": {"subjects": len(SUBJECTS), "seed": 5, "spacing_mm": 6.0}},
        "modalities": ["T1w", "CT"],
        "preprocess": {"spacing": [6.0, 6.0, 6.0], "size": [24, 28, 24]},
        "split": {"fractions": [0.4, 0.3, 0.3]},
        "train": {"gpus": 0},
        "tasks": {},
    }
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(cfg_path),
           "--profile", str(PROFILE), *LOCAL_CLUSTER_FLAGS]
    start = time.monotonic()
    # A guard against a hang, not a speed limit. The executor polls squeue 2 s after a submission
    # and then backs off by 10 s per poll that finds nothing finished (2, 14, 36, 68 s ...), so each
    # stage (phantom, preparation, split, report) costs 36-105 s even alone (about 4 min in all
    # here), and more on a 2-core machine where the other test process runs a workflow meanwhile.
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1200)
    elapsed = time.monotonic() - start
    output = res.stdout + res.stderr
    assert res.returncode == 0, (
        f"workflow failed under SLURM after {elapsed:.0f} s (exit {res.returncode})\n"
        f"--- snakemake (last 3000 chars)\n{output[-3000:]}\n{_slurm_logs(tmp_path)}\n{slurm_cluster.log_tail()}"
    )

    # The jobs went through SLURM: the phantom cohort is one job; the profile groups each
    # subject's ingest -> preprocess chain into one SLURM job; split (and any later rule) runs as a
    # job of its own. Every job left an sbatch log named after its SLURM job id, and slurmctld
    # allocated each.
    logdir = tmp_path / ".snakemake" / "slurm_logs"
    logs = sorted(logdir.rglob("*.log"))
    jobs_of = lambda name: [log for log in logs if log.relative_to(logdir).parts[0] == name]  # noqa: E731
    prep_logs = [log for log in logs if log.relative_to(logdir).parts[0].startswith("group_prep")]
    assert (len(jobs_of("rule_phantom")), len(prep_logs), len(jobs_of("rule_split"))) == (1, len(SUBJECTS), 1), _slurm_logs(tmp_path)
    for log in prep_logs:
        text = log.read_text(errors="replace")
        for rule in ("ingest", "preprocess"):
            assert f"rule {rule}:" in text, f"{rule} missing from {log}\n{text[-2000:]}"
    ctld_log = slurm_cluster.slurmctld_log.read_text(errors="replace")
    for log in logs:
        assert log.stem.isdigit(), log
        assert f"JobId={log.stem} " in ctld_log, f"job {log.stem} unknown to slurmctld\n{slurm_cluster.log_tail()}"

    # The outputs exist.
    results = tmp_path / "results"
    assert (results / "splits.json").is_file()
    for subject in SUBJECTS:
        for name in ("T1w.nii.gz", "CT.nii.gz", "mask.nii.gz", "normalisation.json"):
            assert (results / "prep" / subject / name).is_file(), (subject, name)

    # A second run has nothing to submit.
    again = subprocess.run(cmd + ["-n"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout + again.stderr
