"""Builds the public reference CUT/FastCUT (taesungp/contrastive-unpaired-translation) from a local
checkout, for side-by-side timing in ``bench_translation.py``. Nothing of it is vendored here.

The reference imports torchvision only for image I/O and dataset transforms, which a training
step does not use; a placeholder module stands in for it when torchvision is not installed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import tempfile
import types
from pathlib import Path

import torch


def _placeholder_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    try:
        importlib.import_module("torchvision")
        return
    except Exception:  # not installed, or does not import beside this torch build
        sys.modules.pop("torchvision", None)
    stub = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = types.ModuleType("torchvision.transforms.functional")
    stub.transforms = transforms
    sys.modules.update({"torchvision": stub, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": transforms.functional})


class ReferenceCUT:
    """One reference model; :meth:`step` is one training iteration (``set_input`` + ``optimize_parameters``)."""

    def __init__(self, checkout: Path | str, mode: str, size: int, *, antialias: bool = True, ngf: int = 64, seed: int = 0) -> None:
        checkout = Path(checkout).resolve()
        if not (checkout / "models" / "cut_model.py").is_file():
            raise FileNotFoundError(
                f"{checkout} does not hold the reference CUT code (models/cut_model.py); "
                "point --reference at a checkout of taesungp/contrastive-unpaired-translation"
            )
        _placeholder_torchvision()
        if str(checkout) not in sys.path:
            sys.path.insert(0, str(checkout))
        from models import create_model  # noqa: PLC0415 (the reference's own package)
        from options.train_options import TrainOptions  # noqa: PLC0415

        self._tmp = tempfile.TemporaryDirectory(prefix="refcut_")
        argv = ["--dataroot", self._tmp.name, "--gpu_ids", "-1", "--input_nc", "1", "--output_nc", "1",
                "--CUT_mode", mode.upper() if mode == "cut" else "FastCUT", "--batch_size", "1",
                "--crop_size", str(size), "--load_size", str(size), "--ngf", str(ngf),
                "--checkpoints_dir", self._tmp.name, "--name", f"{mode}_{size}"]
        if not antialias:
            argv += ["--no_antialias", "--no_antialias_up"]
        torch.manual_seed(seed)
        # The reference's CUTModel.modify_commandline_options reads sys.argv itself (not the
        # cmd_line given to TrainOptions) to choose the CUT_mode defaults (FastCUT: nce_idt off,
        # lambda_NCE 10, flip equivariance); without argv in place every mode would build CUT.
        saved_argv = sys.argv
        sys.argv = [saved_argv[0], *argv]
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints every option and network
                opt = TrainOptions(cmd_line=" ".join(argv)).parse()  # it splits on whitespace
        finally:
            sys.argv = saved_argv
        if opt.nce_idt != (mode == "cut"):
            raise RuntimeError(f"reference options: {mode} built with nce_idt={opt.nce_idt}")
        with contextlib.redirect_stdout(io.StringIO()):
            self.model = create_model(opt)
            self.data = {
                "A": torch.rand(1, 1, size, size) * 2 - 1,
                "B": torch.rand(1, 1, size, size) * 2 - 1,
                "A_paths": ["a.png"], "B_paths": ["b.png"],
            }
            self.model.data_dependent_initialize(self.data)
            self.model.setup(opt)

    def step(self) -> None:
        self.model.set_input(self.data)
        self.model.optimize_parameters()
