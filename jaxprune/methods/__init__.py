"""Pruning methods built from the core: dynamic sparse training, STE, lottery tickets, pruning at init."""
