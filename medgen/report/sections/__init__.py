"""The report's sections after the overview, one module each, in report order.

Each module's ``build(results) -> str | None`` returns the section's HTML, or None when the
results folder holds nothing for it (the section is then left out).
"""

from __future__ import annotations

from typing import Callable

from medgen.report.results import Results
from medgen.report.sections import data, downstream, memorization, metrics, models, samples, timing, translation

#: id, heading, builder
SECTIONS: tuple[tuple[str, str, Callable[[Results], str | None]], ...] = (
    ("data", "Data", data.build),
    ("models", "Models", models.build),
    ("samples", "Samples", samples.build),
    ("translation", "Translation", translation.build),
    ("metrics", "Metrics", metrics.build),
    ("downstream", "Downstream segmentation", downstream.build),
    ("memorization", "Memorization", memorization.build),
    ("timing", "Timing", timing.build),
)
