"""Timing: wall time, jobs and peak memory per workflow rule, from the rules' benchmark files."""

from __future__ import annotations

from medgen.report.format import esc, figure, fmt, note, table
from medgen.report.results import Results


def _hms(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


def build(ctx: Results) -> str | None:
    from medgen.report.plots import timing_bars

    times = ctx.benchmark_times()
    if not times:
        return None
    ordered = sorted(times.items(), key=lambda kv: -kv[1]["total_s"])
    rows = [[esc(rule), str(int(t["jobs"])), fmt(t["total_s"], 1), fmt(t["max_s"], 1), fmt(t["max_rss_mb"], 0)] for rule, t in ordered]
    total = sum(t["total_s"] for t in times.values())
    rows.append(["<b>all rules</b>", f"<b>{sum(int(t['jobs']) for t in times.values())}</b>", f"<b>{fmt(total, 1)}</b>", "", ""])
    listed = table(["rule", "jobs (n)", "total wall (s)", "longest job (s)", "max RSS (MB)"], rows, caption=f"total wall time {_hms(total)} (h:mm:ss), summed over jobs")
    try:
        png = timing_bars({rule: t["total_s"] for rule, t in times.items()}, ctx.png("timing"), title="wall time per rule (sum over jobs)")
        chart = figure(png, "wall time per rule")
    except Exception as exc:
        chart = note(f"cannot draw the timing chart: {exc}")
    return f'<div class="row">{listed}{chart}</div>'
