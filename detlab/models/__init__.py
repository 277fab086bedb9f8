"""Detectors and their parts: backbones, necks, heads, losses, assigners, coders, anchors.

Importing this package registers every built-in model component in ``detlab.registry.MODELS``.
"""
