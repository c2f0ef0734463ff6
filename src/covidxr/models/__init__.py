"""Models stage: one registry of backbones, weight resolution (offline first), the study's head, freezing,
and the ModelSpec (`model.json`) that every later stage loads a model from."""
