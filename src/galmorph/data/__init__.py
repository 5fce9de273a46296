"""Data: sources, the Galaxy Zoo CSV reader, the join and label rule, image loading and checks, select, splits,
datasets and transforms."""
