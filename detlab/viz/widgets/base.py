"""The base of detlab's widgets: an ipywidgets view that also carries a static picture.

A widget shows itself in JupyterLab as the live ipywidgets view. Its display data also holds a
PNG (and plain text) of its current view, so a notebook executed headless by papermill -- or read
on a page that runs no JavaScript -- still shows what the widget showed.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
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


# --------------------------------------------------------------------------------------------
# what the widgets' controls share
# --------------------------------------------------------------------------------------------


def error_text(err: BaseException) -> str:
    """``'KindError: message'`` (without the quotes ``str(KeyError)`` adds)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return f"{type(err).__name__}: {text}"


def status_html(text: str, error: bool = False) -> str:
    """``text`` as an HTML line, red when it reports an error."""
    import html

    color = "#b00020" if error else "inherit"
    return f"<span style='color:{color}'>{html.escape(text)}</span>"


def make_button(w: Any, description: str, css: str, icon: str = "") -> Any:
    """An ``ipywidgets.Button`` with the CSS class ``css`` (what browser tests click)."""
    button = w.Button(description=description, icon=icon,
                      layout=w.Layout(width="auto", flex="0 0 auto"))  # never cut to "..."
    button.add_class(css)
    return button


def control_row(w: Any, children: list[Any]) -> Any:
    """An ``ipywidgets.HBox`` of controls that wraps onto a second line in a narrow notebook
    instead of squeezing its buttons."""
    return w.HBox(children, layout=w.Layout(width="100%", flex_flow="row wrap"))


class ControlsMixin:
    """The control plumbing of an interactive widget: ``_status`` (an HTML line) shows errors,
    ``_syncing`` marks values set by code so that callbacks ignore them."""

    _syncing: bool = False
    _status: Any = None

    def _sync_controls(self) -> None:
        """Put the controls' values in line with the state (a widget with controls overrides
        it)."""

    def _safely(self, method: Any, *args: Any, **kwargs: Any) -> None:
        """Run a control's action; an error is shown under the controls (a callback's
        exception would otherwise only reach the browser's console)."""
        try:
            method(*args, **kwargs)
        except Exception as err:  # any failure is reported to the user
            self._sync_controls()  # a control the action refused shows the state again
            self._status.value = status_html(error_text(err), error=True)

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Set control values without their callbacks acting on them."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False
