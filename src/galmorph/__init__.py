"""galmorph: galaxy morphology (spiral vs elliptical) from Galaxy Zoo labels and SDSS cut-outs."""

__version__ = "0.1.0"
