"""The report page: one HTML file with its CSS inline, rendered from the package's templates
(``templates/page.html`` and ``templates/report.css``) with Jinja2."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import jinja2
from markupsafe import Markup


@dataclass(frozen=True)
class Section:
    """One section of the page: its anchor, heading and body (HTML, from a section builder)."""

    id: str
    heading: str
    body: str


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # text is escaped by the template; section bodies are HTML already (marked safe in render_page)
    return jinja2.Environment(loader=jinja2.PackageLoader("medgen.report", "templates"), autoescape=True, keep_trailing_newline=True)


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page: header, a link to each section, then the sections in order."""
    shown = [Section(s.id, s.heading, Markup(s.body)) for s in sections]
    return _environment().get_template("page.html").render(title=title, subtitle=subtitle, sections=shown)
