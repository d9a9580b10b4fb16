"""Datasets: catalog, scanning, decoding cache, folds, augmentation (SPEC §4)."""
