"""galmorph.evaluation."""
