"""Helpers the converters (and the dataset checks) share: atomic writes, image orientation."""

from __future__ import annotations

import json
import os
from typing import Any


def write_text(text: str, path: str) -> str:
    """Write ``text`` to ``path`` through a temporary file, so that an interrupted conversion
    never leaves a truncated file behind. Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # a plain open() (not mkstemp) so that the file gets the usual permissions
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json(data: Any, path: str) -> str:
    """Write ``data`` as json to ``path`` atomically (see :func:`write_text`). Returns
    ``path``."""
    return write_text(json.dumps(data), path)


def oriented_size(image: Any) -> tuple[int, int, bool]:
    """``(width, height, turned)`` of an opened PIL image as detlab's loader sees it: EXIF
    orientations 5..8 turn the picture by 90 degrees (``LoadImageFromFile`` applies them)."""
    width, height = image.size
    # EXIF sits in the header of these formats; for others (PNG) reading it decodes the pixels
    turned = image.format in ("JPEG", "MPO", "TIFF", "WEBP") and \
        image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (height, width, True) if turned else (width, height, False)
