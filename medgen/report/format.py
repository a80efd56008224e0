"""HTML pieces the report's sections are made of: escaped text, numbers at sensible precision,
tables, key/value lists, notes and embedded pictures.

Each piece is a string of HTML; text going into one is escaped here, so that a section only
assembles pieces.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

#: widest embedded picture in pixels; larger ones are downscaled
MAX_IMAGE_PX = 1400
#: a missing value in a table
MISSING = "–"


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int | None = None) -> str:
    """A number at sensible precision (``digits`` decimals when given); :data:`MISSING` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    if digits is not None:
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return str(value)
    size = abs(value)
    if size == 0:
        return "0"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 1e-3:
        return f"{value:.3g}"
    return f"{value:.2e}"


def note(text: str) -> str:
    """A muted paragraph of plain text."""
    return f'<p class="note">{esc(text)}</p>'


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, caption: str | None = None, numeric_from: int = 1, numeric_to: int | None = None) -> str:
    """An HTML table; cells are already HTML; columns ``numeric_from:numeric_to`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    numeric = range(len(header))[numeric_from:numeric_to]
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i in numeric else "txt"}">{cell}</td>' for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(items: Iterable[tuple[str, str]]) -> str:
    """A compact key/value list (values are already HTML)."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def aggregate_cell(agg: Any, digits: int | None) -> str:
    """``mean ± std [lo, hi]`` of one aggregate metric."""
    if not isinstance(agg, Mapping):
        return MISSING
    text = f"{fmt(agg.get('mean'), digits)} ± {fmt(agg.get('std'), digits)}"
    ci = agg.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f' <span class="ci">[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]</span>'
    return text


def warning_marks(notes: Any) -> str:
    """Small-N warnings of a metrics file, shown next to the numbers they qualify."""
    if not isinstance(notes, list) or not notes:
        return ""
    return "".join(f'<p class="warn">⚠ {esc(n)}</p>' for n in notes)


def png_data_uri(path: Path, *, max_px: int = MAX_IMAGE_PX) -> str:
    """``path`` as a ``data:image/png;base64`` URI, converted to PNG and downscaled to at most
    ``max_px`` pixels wide when needed."""
    data = Path(path).read_bytes()
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format != "PNG" or img.width > max_px:
            if img.width > max_px:
                img = img.resize((max_px, max(1, round(img.height * max_px / img.width))), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            img.save(buffer, format="PNG", optimize=True)
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path: Path | None, caption: str, *, css: str = "") -> str:
    """An embedded picture with a caption; a note when it cannot be read."""
    if path is None:
        return ""
    try:
        uri = png_data_uri(path)
    except Exception as exc:  # a broken picture must not stop the report
        return note(f"cannot embed {Path(path).name}: {exc}")
    cls = f' class="{css}"' if css else ""
    return f'<figure{cls}><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
