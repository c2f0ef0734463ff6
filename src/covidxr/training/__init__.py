"""Training stage: Lightning module and callbacks, feature cache for frozen backbones, the `train` job, resume."""
