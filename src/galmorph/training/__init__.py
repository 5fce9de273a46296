"""galmorph.training."""
