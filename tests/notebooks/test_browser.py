"""The DatasetBrowser as a person uses it: JupyterLab on 127.0.0.1 (token auth), Debian's
Chromium driven by Playwright, notebooks/01_browse_dataset.ipynb run from the page, then the
widget clicked: next image, class filter. Screenshots go to the test's output folder."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from conftest import REPO

from detlab.jupyterlab import CHROMIUM_ARGS, chromium_path, jupyterlab_server, run_all_cells

CHROMIUM = chromium_path()
NOTEBOOK = REPO / "notebooks" / "01_browse_dataset.ipynb"


def _parameterized_copy(root: Path) -> str:
    """01_browse_dataset with small parameters injected (as papermill injects them)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK))  # (papermill's loader adds the metadata it needs)
    nb = parameterize_notebook(nb, dict(
        data_root=str(root / "shapes"), num_train=10, num_val=4, image_size=96,
        config=str(REPO / "configs" / "quickstart" / "retinanet_r18_fpn_shapes.py")))
    path = root / "01_browse_dataset.ipynb"
    nbformat.write(nb, str(path))
    return path.name


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving tmp_path; yields (url of the notebook, root)."""
    name = _parameterized_copy(tmp_path)
    with open(tmp_path / "jupyterlab.log", "w") as log, jupyterlab_server(tmp_path, log) as url_of:
        yield url_of(name), tmp_path


def _view_src(page) -> str:
    return page.get_attribute(".detlab-dataset-browser img.detlab-view", "src")


@pytest.mark.slow
def test_dataset_browser_in_jupyterlab(jupyterlab):
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, root = jupyterlab
    shots = root / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        run_all_cells(page)
        page.wait_for_selector(".detlab-dataset-browser img.detlab-view", timeout=180_000)
        page.locator(".detlab-dataset-browser").scroll_into_view_if_needed()
        first = _view_src(page)
        page.screenshot(path=str(shots / "browser_first.png"))

        page.click(".detlab-dataset-browser .detlab-next")
        page.wait_for_function(
            f"() => document.querySelector('.detlab-dataset-browser img.detlab-view').src "
            f"!== {json.dumps(first)}", timeout=30_000)
        page.screenshot(path=str(shots / "browser_next.png"))
        after_next = _view_src(page)
        assert after_next != first

        page.select_option(".detlab-class-filter select", label="triangle")
        page.wait_for_function(
            "() => document.querySelector('.detlab-dataset-browser .detlab-info') && "
            "document.querySelector('.detlab-dataset-browser .detlab-info').innerText"
            ".includes('triangle')", timeout=30_000)
        page.screenshot(path=str(shots / "browser_triangles.png"))
        browser.close()
    assert all((shots / name).stat().st_size > 10_000 for name in
               ("browser_first.png", "browser_next.png", "browser_triangles.png"))
