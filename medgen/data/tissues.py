"""Tissue table of the brain phantom: labels, 3 T relaxation times, proton density and CT numbers.

Sources (values rounded; where a source is named the number is taken from it, otherwise it is an
approximate textbook value and marked ``approx``):

* GM/WM T1 and T2 at 3 T: Wansapura JP et al., "NMR relaxation times in the human brain at 3.0
  tesla", JMRI 1999;9:531-538 (WM T1 832 ms, T2 79.6 ms; GM T1 1331 ms, T2 110 ms). Stanisz GJ et
  al., MRM 2005;54:507-512 report longer T1 at 3 T (WM 1084 ms, GM 1820 ms) with another method;
  the spread between the two is the reason per-subject jitter is applied.
* CSF T1 at 3 T: Rooney WD et al., "Magnetic field and tissue dependencies of human brain
  longitudinal 1H2O relaxation in vivo", MRM 2007;57:308-318 (about 4.2 s). CSF T2 about 2 s (approx;
  reported values at 3 T range from roughly 1.5 to 2.5 s).
* Muscle, subcutaneous fat and bone marrow at 3 T: Gold GE et al., "Musculoskeletal MRI at 3.0 T:
  relaxation times and image contrast", AJR 2004;183:343-351 (muscle T1 about 1420 ms, T2 about
  32 ms; fat T1 about 380 ms; marrow T1 about 370 ms); fat and marrow T2 approx.
* Cortical bone: T2* well below 1 ms (ultrashort-TE literature, e.g. Du J & Bydder GM), so it is
  dark on spin echo; T1 and PD approx.
* Proton density (water content relative to CSF = 1): GM about 0.8, WM about 0.7 (approx, widely
  used values, e.g. in the BrainWeb simulator); other tissues approx.
* CT numbers (HU): typical head CT values (approx); bone values are drawn per subject.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Tissue", "TISSUES", "LABELS", "LESION_LABEL", "SHELL_ORDER", "tissue_table"]


@dataclass(frozen=True)
class Tissue:
    """One tissue class: label value, relaxation times (ms, 3 T), proton density (0..1), CT number (HU)."""

    label: int
    name: str
    t1_ms: float
    t2_ms: float
    pd: float
    hu: float


#: Label values of ``labels.nii.gz``. Inner and outer tables are kept apart so that the diploe
#: between them is a separate class (at 2 mm all three are usually resolved).
TISSUES: tuple[Tissue, ...] = (
    Tissue(0, "air", 1.0, 1.0, 0.0, -1000.0),
    Tissue(1, "skin_muscle", 1420.0, 32.0, 0.75, 40.0),
    Tissue(2, "fat", 380.0, 70.0, 0.90, -100.0),
    Tissue(3, "bone_outer_table", 250.0, 0.5, 0.15, 1350.0),
    Tissue(4, "diploe", 370.0, 50.0, 0.55, 700.0),
    Tissue(5, "bone_inner_table", 250.0, 0.5, 0.15, 1350.0),
    Tissue(6, "csf", 4163.0, 2000.0, 1.00, 15.0),
    Tissue(7, "gm", 1331.0, 110.0, 0.80, 40.0),
    Tissue(8, "wm", 832.0, 79.6, 0.70, 30.0),
)

#: Label of lesions (their MR/CT values are drawn per lesion).
LESION_LABEL = 9

LABELS: dict[int, str] = {t.label: t.name for t in TISSUES} | {LESION_LABEL: "lesion"}

#: Shells around the brain, from the brain surface outward (labels).
SHELL_ORDER: tuple[int, ...] = (6, 5, 4, 3, 2, 1)


def tissue_table() -> list[dict[str, float | int | str]]:
    """The default table as plain dicts (JSON-ready)."""
    return [asdict(t) for t in TISSUES]
