"""Training stage: the classifier's steps in the one loop (engine.loop), the feature cache for frozen backbones, the
`train` job, stacked heads for a search."""
