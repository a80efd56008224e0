"""A hospital-style export through the real workflow: nothing identifying lands in the results.

Folders named after patients, names and record numbers in the tags, scanner descriptions that
quote the patient, and a secret in MEDGEN_UID_SALT; Snakemake runs ingest, preprocess and split
(target ``splits.json``), then every path and every byte under the results folder (NIfTI also
decompressed, logs, benchmarks, JSON) is searched for each identifier and for the secret.
"""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medgen.data.splits import read_split
from medgen.io.deid import pseudonymise_subject
from medgen.io.dicom_write import PatientIdentity, write_dicom_series

ROOT = Path(__file__).resolve().parent.parent
SECRET = "correct-horse-battery-9f3e1c"

#: (folder, identity) of each patient as a hospital exports them.
PATIENTS = {
    "DOE_JOHN_MRN4471123": PatientIdentity(name="DOE^JOHN", patient_id="MRN4471123", birth_date="19610412",
                                           institution="SAINT ELSEWHERE", accession="ACC7781234"),
    "ROE_RICHARD_MRN5550199": PatientIdentity(name="ROE^RICHARD", patient_id="MRN5550199", birth_date="19580101",
                                              institution="SAINT ELSEWHERE", accession="ACC7781299"),
    "POE_EDGAR_MRN6660277": PatientIdentity(name="POE^EDGAR", patient_id="MRN6660277", birth_date="19490119",
                                            institution="SAINT ELSEWHERE", accession="ACC7781300"),
}


def _forbidden() -> list[bytes]:
    """Every identifier of the export, in the spellings it could take, and the secret."""
    out = [SECRET]
    for folder, who in PATIENTS.items():
        last, first = who.name.split("^")
        out += [folder, who.patient_id, who.patient_id[3:], who.name, f"{last}_{first}", f"{last} {first}",
                who.accession, who.birth_date]
    out += ["SAINT ELSEWHERE"]
    return [s.encode() for s in out]


def _head(shape=(20, 20, 10)) -> np.ndarray:
    """A bright ellipsoid on a dark background, so that preprocessing finds a head."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(axis=0) < 0.6
    return np.where(inside, 600.0, 5.0) + np.arange(shape[2])[None, None, :]


def _export(root: Path) -> None:
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    for n, (folder, who) in enumerate(PATIENTS.items()):
        last, first = who.name.split("^")
        write_dicom_series(
            _head(), affine, root / folder / "study1" / "series3", modality="MR",
            series_description=f"t1_mprage {last} {first}", series_number=3, identity=who,
            extra={"StationName": "MRI3", "OtherPatientIDs": who.patient_id}, uid_entropy=[folder],
        )


def _run(workdir: Path, config: dict, env: dict[str, str], *targets: str) -> subprocess.CompletedProcess:
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cfg), "--cores", "2", *targets]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
                          preexec_fn=lambda: os.umask(0o022))


def _env(secret: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MEDGEN_UID_SALT"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if secret is not None:
        env["MEDGEN_UID_SALT"] = secret
    return env


def _config(tmp_path: Path) -> dict:
    return {
        "data": {"dicom_root": str(tmp_path / "export")},
        "results": "results",
        "modalities": ["T1w"],
        "ingest": {"mapping_file": str(tmp_path / "private" / "subjects.tsv")},
        "preprocess": {"spacing": [6.0, 6.0, 6.0], "size": [12, 12, 12]},
        "split": {"fractions": [0.34, 0.33, 0.33]},
    }


@pytest.mark.slow
def test_hospital_export_leaves_no_identifier_or_secret_in_results(tmp_path):
    _export(tmp_path / "export")
    res = _run(tmp_path, _config(tmp_path), _env(SECRET), "results/splits.json")
    assert res.returncode == 0, res.stderr[-4000:]
    results = tmp_path / "results"

    pseudonyms = sorted(pseudonymise_subject(folder, SECRET) for folder in PATIENTS)
    split = read_split(results / "splits.json")
    assert sorted(s for key in ("train", "val", "test") for s in split[key]) == pseudonyms

    forbidden = _forbidden()
    files = [p for p in results.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".gz", ".json", ".log", ".tsv"} <= kinds, kinds  # NIfTI, sidecars, logs, benchmarks were all written
    for path in results.rglob("*"):
        rel = str(path.relative_to(tmp_path)).encode()
        for word in forbidden:
            assert word not in rel, (rel, word)
        if path.is_file():
            blobs = [path.read_bytes()]
            if path.suffix == ".gz":
                blobs.append(gzip.decompress(blobs[0]))
            for blob in blobs:
                for word in forbidden:
                    assert word not in blob, (str(path.relative_to(results)), word)
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # outputs honour the umask (022)

    # the ingest log names the input by the subject's pseudonym, relative to the data root
    log = (results / "logs" / "ingest" / f"{pseudonyms[0]}.log").read_text()
    assert f"{pseudonyms[0]}/study1/series3 series 3 (MR)" in log
    # the one map from originals to pseudonyms is where the user asked, outside results, owner-only
    mapping = (tmp_path / "private" / "subjects.tsv")
    assert sorted(mapping.read_text().splitlines()[1:]) == sorted(f"{f}\t{pseudonymise_subject(f, SECRET)}" for f in PATIENTS)
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    # the same secret gives the same labels on a rerun: nothing to do
    again = _run(tmp_path, _config(tmp_path), _env(SECRET), "-n", "results/splits.json")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_real_data_without_a_secret_stops_before_any_job(tmp_path):
    _export(tmp_path / "export")
    res = _run(tmp_path, _config(tmp_path), _env(None), "results/splits.json")
    assert res.returncode != 0
    assert "MEDGEN_UID_SALT" in res.stderr and "ingest.uid_salt_file" in res.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "private").exists()
