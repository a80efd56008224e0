"""The logs of a workflow run's failed jobs, read from Snakemake's own run log, and their tails.

Snakemake's console names a failed job's log ("log: <path> (check log file(s) for error
details)"); ``--show-failed-logs`` would print whole logs, which for training runs to thousands of
lines. The Snakefile's ``onerror`` handler prints the last lines of each instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

_FAILED_LOG = re.compile(r"^\s*log: (.+?) \(check log file\(s\) for error details\)\s*$", re.MULTILINE)


def failed_job_logs(run_logs: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """Job logs named as failed in Snakemake's run log(s) (what ``onerror`` receives: one path
    or, in Snakemake 9, a list), in order, without repeats."""
    if run_logs is None:
        return []
    if isinstance(run_logs, (str, Path)):
        run_logs = [run_logs]
    text = "\n".join(Path(p).read_text(errors="replace") for p in run_logs if p and Path(p).is_file())
    found: list[Path] = []
    for match in _FAILED_LOG.finditer(text):
        for name in match.group(1).split(", "):
            path = Path(name.strip())
            if path not in found:
                found.append(path)
    return found


def log_tail(path: str | Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a job log, framed with its path."""
    path = Path(path)
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"--- {path}: cannot be read ({exc.strerror})"
    rule = "-" * 20
    return "\n".join([f"{rule} last {len(tail)} line(s) of {path} {rule}", *tail, rule * 2])
