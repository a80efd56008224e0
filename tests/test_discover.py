"""Reading manifests and BIDS-like trees: one reader for ``medgen ingest`` and the workflow.

The workflow's subjects and ingest inputs (:mod:`pipeline.subjects`), its input checks
(:mod:`pipeline.checks`) and ``medgen ingest`` (:mod:`medgen.io.discover`) must agree on every
row and file, so each case is asked of all of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medgen.io.discover import SUBJECT_PATTERN, SUBJECT_RE, ManifestError, bids_images, bids_subject_dirs, discover, read_manifest
from pipeline.checks import input_problems
from pipeline.subjects import ingest_inputs, subject_sources

MANIFEST = (
    "# study export, 2026\n"
    "Subject\t PATH \tModality\tnote\n"
    "\n"
    "S1\ta.nii.gz\tT1w\tfirst\n"
    "  # S9\tz.nii.gz\tT1w\n"
    " S2 \tb.nii.gz\t CT \t\n"
)


def _manifest(folder: Path, text: str = MANIFEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.nii.gz", "b.nii.gz"):
        (folder / name).write_bytes(b"")
    path = folder / "m.tsv"
    path.write_text(text)
    return path


def _cfg(key: str, value: Path, modalities: list[str]) -> dict:
    return {"data": {key: str(value), "keep_subject_labels": True}, "modalities": modalities, "results": "results"}


def test_manifest_header_any_case_and_order_comments_and_blank_lines_skipped(tmp_path):
    tsv = _manifest(tmp_path)
    rows = read_manifest(tsv)
    assert [(r.number, r.subject, r.modality, r.path) for r in rows] == [(2, "S1", "T1w", "a.nii.gz"), (3, "S2", "CT", "b.nii.gz")]
    assert rows[0].resolve(tsv) == tmp_path / "a.nii.gz"
    # the workflow and ingest see the same subjects and rows
    assert subject_sources(_cfg("manifest", tsv, ["T1w"]), None) == {"S1": "S1", "S2": "S2"}
    found = discover([tsv])
    assert [(s.subject, s.modality, s.path.name, s.display_root) for s in found.sources] == [
        ("S1", "T1w", "a.nii.gz", "m.tsv row 2"), ("S2", "CT", "b.nii.gz", "m.tsv row 3")
    ]
    assert not found.failed
    assert [s.subject for s in discover([tsv], subject="S2").sources] == ["S2"]


def test_manifest_without_a_needed_column_is_refused_the_same_way_everywhere(tmp_path):
    tsv = _manifest(tmp_path, "subject\tpath\nS1\ta.nii.gz\n")
    with pytest.raises(ManifestError, match=r"lacks column\(s\) modality.*header"):
        read_manifest(tsv)
    with pytest.raises(ValueError, match="m.tsv: manifest lacks column.*modality"):
        subject_sources(_cfg("manifest", tsv, ["T1w"]), None)
    assert "lacks column(s) modality" in dict(discover([tsv]).failed)["m.tsv"]
    assert any("first line must be the header" in p for p in input_problems(_cfg("manifest", tsv, ["T1w"])))
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(_manifest(tmp_path / "empty", "# only a comment\n\n"))


def test_manifest_row_numbers_and_incomplete_rows_agree(tmp_path):
    tsv = _manifest(tmp_path, "subject\tmodality\tpath\n# skipped\nS1\tT1w\ta.nii.gz\nS2\tT1w\n")
    assert dict(discover([tsv]).failed) == {"m.tsv row 3": "needs subject, modality and path"}
    assert any(p.endswith("m.tsv row 3: needs subject, modality and path separated by tabs; found 'S2\\tT1w'") for p in input_problems(_cfg("manifest", tsv, ["T1w"])))
    bad = _manifest(tmp_path / "bad", "subject\tmodality\tpath\n../x\tT1w\ta.nii.gz\n")
    with pytest.raises(ValueError, match="m.tsv row 2: a subject label"):
        subject_sources(_cfg("manifest", bad, ["T1w"]), None)


def _bids(root: Path) -> dict[str, Path]:
    files = {
        "anat": root / "sub-01" / "anat" / "sub-01_T1w.nii.gz",
        "session": root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_CT.nii.gz",
        "flat": root / "sub-02" / "T1w.nii.gz",  # medgen's own output layout
        "func": root / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz",
        "deep": root / "sub-02" / "ses-1" / "x" / "anat" / "sub-02_CT.nii.gz",
        "sidecar": root / "sub-02" / "T1w.json",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (root / "sub-03").mkdir()
    (root / "derivatives").mkdir()
    return files


def test_bids_tree_images_are_the_same_for_the_workflow_and_ingest(tmp_path):
    files = _bids(tmp_path / "bids")
    assert [p.name for p in bids_subject_dirs(tmp_path / "bids")] == ["sub-01", "sub-02", "sub-03"]
    assert bids_subject_dirs(tmp_path / "bids" / "sub-01") == [tmp_path / "bids" / "sub-01"]
    assert bids_images(tmp_path / "bids" / "sub-02") == ([files["flat"]], [files["func"], files["deep"]])
    cfg = _cfg("bids_root", tmp_path / "bids", ["T1w"])
    sources = subject_sources(cfg, None)
    assert list(sources) == ["sub-01", "sub-02", "sub-03"]
    assert ingest_inputs(cfg, "sub-01", sources) == [str(files["anat"]), str(files["session"])]
    assert ingest_inputs(cfg, "sub-02", sources) == [str(files["flat"])]
    found = discover([tmp_path / "bids"])
    assert sorted(str(s.path) for s in found.sources) == sorted(p for s in sources for p in ingest_inputs(cfg, s, sources))
    assert sorted(what for what, _ in found.skipped) == ["bids/sub-02/func/sub-02_task-rest_bold.nii.gz", "bids/sub-02/ses-1/x/anat/sub-02_CT.nii.gz"]


def test_one_subject_label_pattern():
    for good in ("sub-01", "P1", "a.b_c-d"):
        assert SUBJECT_RE.match(good) and re.fullmatch(SUBJECT_PATTERN, good)
    for bad in ("", ".hidden", "-x", "a/b", "a b", "sub-ü"):
        assert not SUBJECT_RE.match(bad) and not re.fullmatch(SUBJECT_PATTERN, bad)
    snakefile = (Path(__file__).resolve().parents[1] / "Snakefile").read_text()
    assert "subject=SUBJECT_PATTERN" in snakefile
