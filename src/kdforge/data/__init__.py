"""Datasets, transforms and samplers."""
