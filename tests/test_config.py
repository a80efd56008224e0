"""Workflow configuration: defaults from the schema, errors that name the bad key."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config, validate_config
from medgen.io.deid import pseudonymise_subject
from medgen.io.secret import public_config
from pipeline.subjects import ingest_inputs, subject_sources, subjects_of, write_subject_mapping

ROOT = Path(__file__).resolve().parent.parent


def test_default_config_is_valid_and_complete():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg["data"]["phantom"]["subjects"] == 20
    assert cfg["ingest"]["on_tilt"] == "resample"  # filled from the schema
    assert cfg["ingest"]["min_slices"] == 1 and cfg["ingest"]["allow_constant"] is False
    assert cfg["preprocess"]["register"] is False
    assert subjects_of(cfg)[:2] == ["sub-001", "sub-002"]


def test_defaults_fill_a_minimal_config():
    cfg = validate_config({"data": {"phantom": {}}, "modalities": ["T1w"]})
    assert cfg["results"] == "results"
    assert cfg["data"]["phantom"] == {"subjects": 20, "seed": 0, "spacing_mm": 2.0}
    assert cfg["split"]["fractions"] == [0.7, 0.15, 0.15]


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"preprocess": {"spacng": [1, 1, 1]}}, r"config key 'preprocess': unknown key\(s\) 'spacng'; valid keys: .*spacing"),
        ({"preprocess": {"mr_norm": "minmax"}}, r"config key 'preprocess.mr_norm': 'minmax' is not one of 'percentile', 'zscore'"),
        ({"preprocess": {"spacing": [1, 1]}}, r"config key 'preprocess.spacing'"),
        ({"split": {"fractions": [0.5, 0.2, 0.2]}}, r"config key 'split.fractions'.*must sum to 1"),
        ({"preprocess": {"reference": "PET"}}, r"config key 'preprocess.reference': 'PET' is not one of modalities"),
        ({"modalities": ["T1 w"]}, r"config key 'modalities.0'"),
        ({"data": {"phantom": {}, "manifest": "x.tsv"}}, r"config key 'data'"),
        ({"data": {"bids_root": "/nonexistent/bids"}}, r"config key 'data.bids_root': /nonexistent/bids does not exist"),
        ({"modle": "cyclegan"}, r"the config: unknown key\(s\) 'modle'"),
        ({"tasks": {"t": {"kind": "generation", "modalities": ["T1w"], "models": {"stylegan9": {}}}}},
         r"config key 'tasks.t.models.stylegan9': unknown model; valid names: .*cgan.*glow"),
        ({"tasks": {"t": {"kind": "generation", "modalities": ["T1w"], "models": {"gan": {"options": {"ngff": 8}}}}}},
         r"config key 'tasks.t.models.gan.options.ngff': unknown option; valid options: .*ngf"),
        ({"tasks": {"t": {"kind": "translation", "source": "T1w", "target": "PET", "models": {}}}}, r"config key 'tasks.t.models'"),
        ({"tasks": {"t": {"kind": "translation", "source": "T1w", "target": "PET", "models": {"glow": {}}}}},
         r"'tasks.t.target': 'PET' is not one of modalities(.|\n)*a generation model in a translation task"),
        ({"tasks": {"t": {"kind": "generation", "modalities": ["T1w", "CT"], "models": {"cgan": {}}}}}, r"several modalities need condition 'modality'"),
        ({"tasks": {"t": {"kind": "generation", "modalities": ["T1w"], "flip_lr": True, "models": {"gan": {}}}}},
         r"config key 'tasks.t.flip_lr': mirrored training pairs are an option of translation tasks"),
    ],
)
def test_bad_config_names_the_key(patch, message):
    cfg = {"data": {"phantom": {"subjects": 4}}, "modalities": ["T1w", "CT"]}
    cfg.update(patch)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_invalid_yaml_names_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        load_config(bad)


def test_subject_discovery_per_source(tmp_path):
    secret = "s3cret"
    (tmp_path / "dicom" / "DOE_JOHN_MRN4471123").mkdir(parents=True)
    (tmp_path / "dicom" / "patB").mkdir()
    cfg = validate_config({"data": {"dicom_root": str(tmp_path / "dicom")}, "modalities": ["CT"]})
    sources = subject_sources(cfg, secret)
    pseudonym = pseudonymise_subject("DOE_JOHN_MRN4471123", secret)
    assert sources == dict(sorted({pseudonym: "DOE_JOHN_MRN4471123", pseudonymise_subject("patB", secret): "patB"}.items()))
    assert subjects_of(cfg, secret) == sorted(sources) and all(re.fullmatch(r"sub-[0-9a-f]{10}", s) for s in sources)
    assert subject_sources(cfg, secret) == sources  # the same in every job and rerun with the same secret
    assert subjects_of(cfg, "another secret") != subjects_of(cfg, secret)
    assert ingest_inputs(cfg, pseudonym, sources) == [str(tmp_path / "dicom" / "DOE_JOHN_MRN4471123")]
    with pytest.raises(ValueError, match="MEDGEN_UID_SALT"):
        subjects_of(cfg, None)
    kept = validate_config({"data": {"dicom_root": str(tmp_path / "dicom"), "keep_subject_labels": True}, "modalities": ["CT"]})
    assert subjects_of(kept, None) == ["DOE_JOHN_MRN4471123", "patB"]

    anat = tmp_path / "bids" / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_ses-1_T1w.nii.gz").write_bytes(b"")
    cfg = validate_config({"data": {"bids_root": str(tmp_path / "bids")}, "modalities": ["T1w"]})
    assert subjects_of(cfg, secret) == ["sub-01"]  # BIDS labels are kept
    assert ingest_inputs(cfg, "sub-01", subject_sources(cfg, secret)) == [str(anat / "sub-01_ses-1_T1w.nii.gz")]

    manifest = tmp_path / "m.tsv"
    manifest.write_text("subject\tmodality\tpath\nS2\tCT\ta.nii.gz\nS1\tCT\tb.nii.gz\nS1\tT1w\tc.nii.gz\n")
    cfg = validate_config({"data": {"manifest": str(manifest)}, "modalities": ["CT"]})
    assert subjects_of(cfg, secret) == sorted(pseudonymise_subject(s, secret) for s in ("S1", "S2"))


def test_mapping_file_is_written_owner_only_and_refused_inside_results(tmp_path):
    (tmp_path / "dicom" / "DOE_JOHN").mkdir(parents=True)
    base = {"data": {"dicom_root": str(tmp_path / "dicom")}, "modalities": ["CT"], "results": str(tmp_path / "results")}
    with pytest.raises(ConfigError, match="ingest.mapping_file.*inside the results folder"):
        validate_config({**base, "ingest": {"mapping_file": str(tmp_path / "results" / "map.tsv")}})
    cfg = validate_config({**base, "ingest": {"mapping_file": str(tmp_path / "private" / "map.tsv")}})
    path = write_subject_mapping(cfg["ingest"]["mapping_file"], subject_sources(cfg, "s3cret"))
    assert path.read_text().splitlines() == ["original\tlabel", f"DOE_JOHN\t{pseudonymise_subject('DOE_JOHN', 's3cret')}"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_secret_in_the_config_is_refused_with_where_to_put_it():
    with pytest.raises(ConfigError, match="ingest.uid_salt.*MEDGEN_UID_SALT.*ingest.uid_salt_file"):
        validate_config({"data": {"phantom": {}}, "modalities": ["T1w"], "ingest": {"uid_salt": "hunter2"}})


def test_config_copy_and_report_leave_out_secret_bearing_keys():
    cfg = validate_config({"data": {"phantom": {}}, "modalities": ["T1w"], "ingest": {"uid_salt_file": "/keys/salt"}})
    public = public_config(cfg)
    assert "uid_salt_file" not in public["ingest"] and "mapping_file" not in public["ingest"]
    assert cfg["ingest"]["uid_salt_file"] == "/keys/salt"  # the original is untouched


def test_manifest_with_missing_column_is_refused(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("subject\tpath\nS1\ta.nii.gz\n")
    cfg = validate_config({"data": {"manifest": str(manifest)}, "modalities": ["CT"]})
    with pytest.raises(ValueError, match="m.tsv: manifest lacks column.*modality"):
        subjects_of(cfg)


def test_schema_is_valid_yaml_with_defaults_for_every_optional_section():
    schema = yaml.safe_load((ROOT / "configs" / "config.schema.yaml").read_text())
    for section in ("ingest", "preprocess", "split"):
        assert schema["properties"][section]["default"] == {}


def test_pretrained_extractor_weights_are_checked_at_start(tmp_path):
    task = {"t": {"kind": "generation", "modalities": ["T1w"], "models": {"gan": {}}}}
    base = {"data": {"phantom": {}}, "modalities": ["T1w"], "tasks": task}
    missing = {**base, "eval": {"features": ["radimagenet"], "extractors": {"radimagenet": {"weights": str(tmp_path / "rin.pt")}}}}
    with pytest.raises(ConfigError, match=r"config key 'eval.extractors.radimagenet.weights': weights file .*rin.pt does not exist"):
        validate_config(missing)
    unset = {**base, "eval": {"features": ["medicalnet"]}}
    with pytest.raises(ConfigError, match=r"'eval.features' lists 'medicalnet' but 'eval.extractors.medicalnet.weights' is not set"):
        validate_config(unset)
    with pytest.raises(ConfigError, match=r"config key 'eval.extractors.medicalnet': unknown key\(s\) 'weigths'"):
        validate_config({**base, "eval": {"extractors": {"medicalnet": {"weights": "x", "weigths": "x"}}}})
    (tmp_path / "rin.pt").write_bytes(b"weights")
    cfg = validate_config(missing)
    assert cfg["eval"]["extractors"]["radimagenet"] == {"weights": str(tmp_path / "rin.pt"), "input_norm": "imagenet"}
