"""Memorization: the share of generated samples that are likely copies of training images."""

from __future__ import annotations

from typing import Mapping

from medgen.report.format import MISSING, esc, facts, figure, fmt, note, warning_marks
from medgen.report.results import Results


def build(ctx: Results) -> str | None:
    cards = []
    for path, data in ctx.metrics():
        memo = data.get("memorization")
        if data.get("kind") != "generation" or not isinstance(memo, Mapping):
            continue
        share = memo.get("likely_copy_share")
        share_text = f"{fmt(100 * share, 1)} %" if isinstance(share, (int, float)) and not isinstance(share, bool) else MISSING
        counts = data.get("n") if isinstance(data.get("n"), Mapping) else {}
        n_syn = memo.get("n_synthetic", counts.get("synthetic"))
        n_train = memo.get("n_train", counts.get("real_train"))
        n_test = memo.get("n_test", counts.get("real_test"))
        alpha = memo.get("alpha")
        rule = (
            f"closer to a training image than the {fmt(alpha)}-quantile of {fmt(n_test)} real test images' nearest-training distances, "
            "and no farther from it than it is from its own nearest training neighbour"
        )
        items = [
            ("likely copies of training images", f"<b>{share_text}</b> of {fmt(n_syn)} samples, compared with all {fmt(n_train)} training slices"),
            ("flagged when", esc(rule)),
        ]
        spaces = memo.get("spaces")
        if isinstance(spaces, Mapping) and spaces:
            for space, info in spaces.items():
                if isinstance(info, Mapping):
                    flagged = f"{fmt(100 * info['likely_copy_share'], 1)} %" if isinstance(info.get("likely_copy_share"), (int, float)) else MISSING
                    text = f"threshold {fmt(info.get('threshold'))}, {flagged} flagged"
                    if "authenticity" in info:
                        text += f"; authenticity {fmt(info.get('authenticity'))} (real test images: {fmt(info.get('test_authenticity'))})"
                    items.append((f"{space} space ({info.get('metric')})", text))
        else:
            items.append(("distance threshold", fmt(memo.get("threshold"))))
        listed = facts(items) + warning_marks(memo.get("warnings"))
        picture = memo.get("closest_pairs_png")
        closest = ""
        if isinstance(picture, str) and picture:
            png = path.parent / picture
            closest = figure(png, "generated samples (left) next to their closest training images (right)", css="samples") if png.is_file() else note(f"{picture} not found")
        cards.append(f'<div class="card"><h3>{esc(data.get("task"))} / {esc(data.get("model"))}</h3>{listed}{closest}</div>')
    return "".join(cards) or None
