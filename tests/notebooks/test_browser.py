"""The DatasetBrowser as a person uses it: JupyterLab on 127.0.0.1 (token auth), Debian's
Chromium driven by Playwright, notebooks/01_browse_dataset.ipynb run from the page, then the
widget clicked: next image, class filter. Screenshots go to the test's output folder."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOK = REPO / "notebooks" / "01_browse_dataset.ipynb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _settings(root: Path) -> Path:
    """User settings that keep JupyterLab from asking about news (a popup over the page)."""
    folder = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
    folder.mkdir(parents=True)
    (folder / "notification.jupyterlab-settings").write_text(json.dumps(
        {"fetchNews": "false", "checkForUpdates": False}))
    return root / "lab-settings"


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving tmp_path; yields (url of the notebook, root)."""
    port, token = _free_port(), secrets.token_hex(16)
    name = _parameterized_copy(tmp_path)
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
               JUPYTERLAB_SETTINGS_DIR=str(_settings(tmp_path)))
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", "--allow-root",
         f"--ServerApp.root_dir={tmp_path}", "--LabApp.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/status?token={token}", server)
        yield f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}", tmp_path
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError("JupyterLab exited; see jupyterlab.log in the test folder")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url}")


KERNEL_READY = """() => {
  const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const session = widget && widget.sessionContext && widget.sessionContext.session;
  return Boolean(session && session.kernel);
}"""


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
        page.wait_for_function(KERNEL_READY, timeout=90_000)
        # awaiting the command never returns: start it and wait for the widget instead
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
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
