"""The ``medgen`` command line: ``medgen <verb> ...``, each verb a thin call into the library.

Every workflow rule calls one of these verbs, so anything the workflow does can be done by hand.
Imports of heavy modules happen inside each verb so that ``medgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from medgen import __version__

Handler = Callable[[argparse.Namespace], int]


def _phantom(args: argparse.Namespace) -> int:
    from medgen.data.phantom import generate_cohort

    written = generate_cohort(
        args.out,
        n_subjects=args.subjects,
        seed=args.seed,
        spacing_mm=args.spacing,
        only=args.only,
        write_dicom=not args.no_dicom,
    )
    print(f"phantom: wrote {len(written)} subject(s) under {args.out}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from medgen.io.ingest import IngestOptions, ingest

    options = IngestOptions(
        on_tilt=args.on_tilt,
        on_uneven=args.on_uneven,
        keep_descriptions=args.keep_descriptions,
        uid_salt=args.uid_salt,
        nonfinite=args.nonfinite,
        form_mismatch=args.form_mismatch,
        min_slices=args.min_slices,
    )
    summary = ingest(args.inputs, args.out, subject=args.subject, modalities=args.modalities, options=options)
    print(summary.render())
    return summary.exit_code


def _preprocess(args: argparse.Namespace) -> int:
    from medgen.data.preprocess import PreprocessConfig, preprocess_subject

    cfg = PreprocessConfig(
        spacing=tuple(args.spacing),
        size=tuple(args.size),
        mr_norm=args.mr_norm,
        mr_percentiles=tuple(args.mr_percentiles),
        ct_window=tuple(args.ct_window),
        register=args.register,
        reference=args.reference,
    )
    inputs = {mod: args.input_dir / f"{mod}.nii.gz" for mod in args.modalities}
    preprocess_subject(inputs, args.out, cfg, labels=args.labels)
    print(f"preprocess: wrote {', '.join(args.modalities)} and mask to {args.out}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from medgen.data.splits import make_split, write_split

    split = make_split(args.subjects, fractions=tuple(args.fractions), seed=args.seed)
    write_split(split, args.out)
    print(f"split: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()) + f" subjects -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (also used to document the CLI)."""
    parser = argparse.ArgumentParser(prog="medgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("phantom", help="write the multi-modal brain phantom cohort (NIfTI + DICOM)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=20, help="number of subjects (sub-001 ...)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed; each subject's draw depends only on it and its index")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm (template is 1 mm)")
    p.add_argument("--only", nargs="+", metavar="SUBJECT", help="write only these subjects (e.g. sub-003)")
    p.add_argument("--no-dicom", action="store_true", help="write NIfTI only")
    p.set_defaults(handler=_phantom)

    p = verbs.add_parser("ingest", help="DICOM folders / BIDS-like trees / manifest TSV -> de-identified NIfTI + JSON sidecars")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="DICOM folder, BIDS-like root, NIfTI file or manifest .tsv")
    p.add_argument("--out", type=Path, required=True, help="output root: OUT/<subject>/<modality>.nii.gz")
    p.add_argument("--subject", help="subject label for every input (default: from BIDS/manifest, or a pseudonym)")
    p.add_argument("--modalities", nargs="+", help="modalities that must be found (others are still converted)")
    p.add_argument("--on-tilt", choices=["refuse", "resample"], default="refuse", help="gantry-tilted series")
    p.add_argument("--on-uneven", choices=["refuse", "resample"], default="refuse", help="missing slices / uneven spacing")
    p.add_argument("--keep-descriptions", action="store_true", help="keep SeriesDescription/ProtocolName in sidecars")
    p.add_argument("--uid-salt", default="medgen", help="secret that makes replaced UIDs consistent across runs and jobs")
    p.add_argument("--nonfinite", choices=["error", "zero", "min"], default="error", help="NaN/inf voxels in NIfTI input")
    p.add_argument("--form-mismatch", choices=["error", "warn"], default="error", help="NIfTI qform != sform")
    p.add_argument("--min-slices", type=int, default=3, help="series with fewer slices are skipped as localizers")
    p.set_defaults(handler=_ingest)

    p = verbs.add_parser("preprocess", help="reorient, resample, mask, normalise one subject (MONAI transforms)")
    p.add_argument("--input-dir", type=Path, required=True, help="folder with <modality>.nii.gz (ingest output)")
    p.add_argument("--modalities", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--spacing", type=float, nargs=3, default=[2.0, 2.0, 2.0], metavar=("X", "Y", "Z"))
    p.add_argument("--size", type=int, nargs=3, default=[96, 112, 96], metavar=("X", "Y", "Z"))
    p.add_argument("--mr-norm", choices=["percentile", "zscore"], default="percentile")
    p.add_argument("--mr-percentiles", type=float, nargs=2, default=[0.5, 99.5], metavar=("LOW", "HIGH"))
    p.add_argument("--ct-window", type=float, nargs=2, default=[-1024.0, 3000.0], metavar=("LOW", "HIGH"), help="HU window mapped to [-1, 1]")
    p.add_argument("--register", action="store_true", help="rigidly register each modality to the reference (SimpleITK)")
    p.add_argument("--reference", help="modality whose grid the others follow (default: the first)")
    p.add_argument("--labels", type=Path, help="ground-truth label map resampled with the images (nearest neighbour)")
    p.set_defaults(handler=_preprocess)

    p = verbs.add_parser("split", help="subject-level train/val/test split")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fractions", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medgen`` console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"medgen {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
