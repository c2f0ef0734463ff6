"""Explain stage: feature maps, learned and dead filters, Grad-CAM with a localisation check, MC-dropout
uncertainty. All work on any trained run (CovidxrNet + ModelSpec)."""
