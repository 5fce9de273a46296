"""Data: sources, the catalogue (join, label rule), image checks, splits, datasets and transforms."""
