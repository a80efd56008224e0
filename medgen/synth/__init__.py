"""Using trained models: samples for augmentation, whole volumes translated into another modality."""

#: The sampling temperature when none is configured (``medgen sample --temperature``); generation
#: validation during training draws at the temperature the samples will be drawn at.
DEFAULT_TEMPERATURE = 1.0
