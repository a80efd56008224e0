"""Feature extractors for the distribution metrics, selectable by name.

    extractor = get_extractor("radiomics")              # default, no weights
    extractor = get_extractor("encoder", path=...)      # medgen's in-domain encoder
    extractor = get_extractor("radimagenet", weights_path=...)
    extractor = get_extractor("medicalnet", weights_path=..., depth=10)
    extractor = get_extractor("inception", weights_path=...)   # only with torchvision
    features = extractor(images)                        # (N, F) float64
    extractor.info()                                    # name, options, weights SHA-256 -> metrics file

Each factory imports its module only when called, so that e.g. the radiomics packages are not
needed for the encoder. Nothing is downloaded: weights come from local files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

DEFAULT_EXTRACTOR = "radiomics"


class FeatureExtractor(Protocol):
    """Images in, ``(N, F)`` float64 features out; ``checksum`` is the weights' SHA-256 or None."""

    name: str
    checksum: str | None

    def __call__(self, images: Any) -> np.ndarray: ...

    def info(self) -> dict[str, Any]: ...


def _radiomics(**options: Any) -> FeatureExtractor:
    from medgen.eval.radiomics_features import RadiomicsFeatures

    return RadiomicsFeatures(**options)


def _encoder(**options: Any) -> FeatureExtractor:
    from medgen.eval.encoder import EncoderFeatures

    if "weights_path" in options:  # same option name as the pretrained extractors
        options["path"] = options.pop("weights_path")
    if "path" not in options:
        raise FileNotFoundError("the 'encoder' extractor needs path=: the workflow trains it (rule encoder, eval.encoder_steps); by hand pass `medgen evaluate generation --encoder FILE`")
    return EncoderFeatures(**options)


def _radimagenet(**options: Any) -> FeatureExtractor:
    from medgen.eval.pretrained import RadImageNetFeatures

    return RadImageNetFeatures(**options)


def _medicalnet(**options: Any) -> FeatureExtractor:
    from medgen.eval.pretrained import MedicalNetFeatures

    return MedicalNetFeatures(**options)


def _inception(**options: Any) -> FeatureExtractor:
    from medgen.eval.pretrained import InceptionFeatures

    return InceptionFeatures(**options)


#: name -> factory(**options) -> extractor
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "radiomics": _radiomics,
    "encoder": _encoder,
    "radimagenet": _radimagenet,
    "medicalnet": _medicalnet,
    "inception": _inception,
}


def get_extractor(name: str = DEFAULT_EXTRACTOR, **options: Any) -> FeatureExtractor:
    """Build the extractor registered as ``name``; unknown names raise ``KeyError`` listing the known ones."""
    try:
        factory = EXTRACTORS[name]
    except KeyError:
        raise KeyError(f"unknown feature extractor {name!r}; available: {', '.join(sorted(EXTRACTORS))}") from None
    return factory(**options)
