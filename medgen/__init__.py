"""medgen: medical image synthesis, from DICOM to evaluated synthetic volumes."""

__version__ = "0.1.0"
