"""galmorph.models."""
