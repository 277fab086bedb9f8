"""Datasets, transforms (pipelines), loaders and converters.

Importing this package registers the built-in datasets and transforms.
"""
