"""A self-contained HTML report of a medgen results folder, and ``medgen report``.

:func:`build_report` writes ONE HTML file with inline CSS and every picture embedded as a base64
PNG data URI, so that it can be e-mailed as is. Each section appears only when its inputs exist:
a partial run (or an empty folder) still gives a report. The parts: reading the results folder
(:mod:`medgen.report.results`), HTML pieces (:mod:`medgen.report.format`), one module per
section (:mod:`medgen.report.sections`) and the page with its CSS (:mod:`medgen.report.page`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import medgen
from medgen import layout
from medgen.io.atomic import atomic_write_text
from medgen.report.format import note
from medgen.report.page import Section, render_page
from medgen.report.results import Results, load_config
from medgen.report.sections import SECTIONS, overview

log = logging.getLogger(__name__)


def _build_section(ctx: Results, section_id: str, heading: str, builder: Callable[[Results], str | None]) -> Section | None:
    """One section, or ``None`` when its inputs are absent; a failure becomes a note in it."""
    try:
        body = builder(ctx)
    except Exception as exc:  # a report of a damaged folder is still useful
        log.warning("report: section %s failed: %s", section_id, exc, exc_info=True)
        body = note(f"this section could not be built: {type(exc).__name__}: {exc}")
    return Section(section_id, heading, body) if body else None


def build_report(results: Path, out_html: Path, *, config: dict[str, Any] | None = None, title: str = "medgen report") -> Path:
    """Write a self-contained HTML report of ``results`` to ``out_html`` and return its path.

    ``config`` defaults to ``results/config.yaml``. Sections: overview, data, models, samples,
    translation, metrics, downstream, memorization, timing; each only when its inputs exist."""
    results = Path(results)
    config = dict(config) if config is not None else load_config(results)
    with tempfile.TemporaryDirectory(prefix="medgen_report_") as tmp:
        ctx = Results(results=results, config=config, work=Path(tmp))
        sections = [Section("overview", "Overview", overview.build(ctx, title))]
        sections += [s for s in (_build_section(ctx, *spec) for spec in SECTIONS) if s]
    subtitle = f"medgen {medgen.__version__} · {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M} · {results.name or results}"
    out_html = atomic_write_text(Path(out_html), render_page(title, subtitle, sections))
    _readable(out_html)
    return out_html


def _readable(path: Path) -> None:
    """Give the report the usual file mode (0644 less the umask) instead of a temp file's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o644 & ~umask)


def report_main(results: Path, out: Path, config_path: Path | None = None) -> int:
    """``medgen report``: build the report and the flat metrics table beside the results;
    returns 0 (failures raise errors of :mod:`medgen.errors`, which give the exit status)."""
    from medgen.errors import CorruptFileError, InputMissingError

    results = Path(results)
    if not results.is_dir():
        raise InputMissingError(f"{results}: not a folder; pass the workflow's results folder to --results")
    config = None
    if config_path is not None:
        import yaml

        try:
            config = yaml.safe_load(Path(config_path).read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{config_path}: not a readable YAML config ({' '.join(str(exc).split())}); pass the workflow's config file") from None
        if not isinstance(config, dict):
            raise CorruptFileError(f"{config_path}: not a config (a YAML mapping of keys to values); pass the workflow's config file")
    path = build_report(results, Path(out), config=config)
    print(f"medgen report: wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    from medgen.report.metrics_tsv import write_metrics_tsv

    with tempfile.TemporaryDirectory() as tmp:
        table = write_metrics_tsv([d for _, d in Results(results=results, config=config or {}, work=Path(tmp)).metrics()], layout.metrics_table(results))
    print(f"medgen report: wrote {table}")
    return 0
