"""The command layer for everything that is not a DVC stage: argparse handlers, printing, rich tables."""
