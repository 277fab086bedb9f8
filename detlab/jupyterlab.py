"""A JupyterLab server and a headless Chromium, for seeing widgets as a person sees them: the
browser test and the README's widget pictures use them.

>>> with jupyterlab_server(root) as url_of:
...     browser = playwright.chromium.launch(executable_path=chromium_path(),
...                                          args=CHROMIUM_ARGS)
...     page = browser.new_page()
...     page.goto(url_of("my.ipynb"))
...     run_all_cells(page)

Needs Debian's ``chromium`` (``apt-get install chromium``) and Playwright (dev extras).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import IO, Any

# what a sandbox-less, network-less machine needs for Chromium to start quietly
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

KERNEL_READY = """() => {
  const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const session = widget && widget.sessionContext && widget.sessionContext.session;
  return Boolean(session && session.kernel);
}"""


def chromium_path() -> str:
    """Debian's Chromium, as found on the PATH (else its usual place)."""
    return shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(root: str) -> str:
    """User settings that keep JupyterLab from asking about news (a popup over the page)."""
    folder = os.path.join(root, "lab-settings", "@jupyterlab", "apputils-extension")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "notification.jupyterlab-settings"), "w") as f:
        json.dump({"fetchNews": "false", "checkForUpdates": False}, f)
    return os.path.join(root, "lab-settings")


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError("JupyterLab exited before answering (see its log)")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url}")


@contextlib.contextmanager
def jupyterlab_server(root: str | os.PathLike, log: IO[str] | None = None
                      ) -> Iterator[Callable[[str], str]]:
    """JupyterLab on 127.0.0.1 (a free port, token auth, ``window.jupyterapp`` exposed)
    serving ``root``; yields ``url_of(notebook)``, the address that opens a notebook of
    ``root``. Its output goes to ``log`` (default: nowhere); it stops on leaving."""
    root = os.fspath(root)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=_settings(root),
               PATH=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}")
    output: Any = log if log is not None else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True"],
        stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/status?token={token}", server)
        yield lambda name: f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}"
    finally:
        server.terminate()
        server.wait(20)


def run_all_cells(page: Any, timeout_ms: int = 90_000) -> None:
    """Wait for the notebook open in ``page`` (a Playwright page) to have a kernel, then start
    "run all". Awaiting the command from the page never returns: wait for what the cells
    display instead."""
    page.wait_for_function(KERNEL_READY, timeout=timeout_ms)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
