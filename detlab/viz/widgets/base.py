"""The base of detlab's widgets: an ipywidgets view that also carries a static picture.

A widget shows itself in JupyterLab as the live ipywidgets view. Its display data also holds a
PNG (and plain text) of its current view, so a notebook executed headless by papermill -- or read
on a page that runs no JavaScript -- still shows what the widget showed.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


def figure_png(figure: Any) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards, so it is not shown twice)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def array_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``H x W x 3`` uint8 RGB array."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class WidgetView:
    """Base class: a subclass builds ``self.widget`` (an ipywidgets container) and implements
    :meth:`render_png` (the current view as PNG bytes); :meth:`refresh` redraws it."""

    widget: Any = None

    def render_png(self) -> bytes:
        """The current view as PNG bytes."""
        raise NotImplementedError(f"{type(self).__name__} must define render_png")

    def summary(self) -> str:
        """One line of text describing the current view (for plain-text outputs)."""
        return type(self).__name__

    def save(self, path: str) -> str:
        """Write the current view to ``path`` (PNG)."""
        with open(path, "wb") as f:
            f.write(self.render_png())
        return path

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {}
        if self.widget is not None:
            bundle.update(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["image/png"] = base64.b64encode(self.render_png()).decode("ascii")
        bundle["text/plain"] = self.summary()
        return bundle
