"""galmorph.stages."""
