"""galmorph.serving."""
