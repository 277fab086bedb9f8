"""Screenshots of detlab's widgets as JupyterLab shows them, for the README.

    .venv/bin/python docs/widget_screenshots.py [--out docs/widgets]

Generates the quickstart's shapes dataset, trains two quickstart runs (learning rates 1e-3 and
5e-4, about 5 minutes each on a CPU), writes a notebook that builds each
widget, runs it in JupyterLab (127.0.0.1, token) through Debian's Chromium (Playwright) and saves
a picture of each widget. Needs `chromium` (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import nbformat

from detlab.jupyterlab import CHROMIUM_ARGS, chromium_path, jupyterlab_server, run_all_cells

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGETS = {  # root CSS class -> file name
    "detlab-dataset-browser": "dataset_browser.png",
    "detlab-config-editor": "config_editor.png",
    "detlab-training-monitor": "training_monitor.png",
    "detlab-error-browser": "error_browser.png",
    "detlab-rescore-explorer": "rescore_explorer.png",
    "detlab-run-comparer": "run_comparer.png",
}

SETUP = """\
import detlab, os
from detlab.notebooks import quickstart_overrides
from detlab.evaluation import match_detections
root = {root!r}
detlab.make_shapes_dataset(os.path.join(root, "shapes"), num_train=600, num_val=40,
                           image_size=192, seed=0)
cfg = detlab.Config.fromfile({config!r})
cfg.merge_from_dict(quickstart_overrides(cfg, os.path.join(root, "shapes"), 192, 6))
cfg.merge_from_dict({{"evaluation.interval": 1}})
runs = [detlab.train(cfg, work_dir=os.path.join(root, f"run_lr{{lr}}"), progress=False,
                     cfg_options={{"optimizer.lr": lr}}) for lr in (0.001, 0.0005)]
outputs = [detlab.test(os.path.join(r.work_dir, "config.py"), r.checkpoint, progress=False,
                       out=os.path.join(r.work_dir, "results.pkl")) for r in runs]
output = outputs[0]  # results.pkl in a work_dir gives RunComparer its per-class AP
val_set = detlab.build_dataset(cfg.data.val, dict(test_mode=True))
table = match_detections(val_set.to_coco(), output["results"], img_ids=val_set.coco_image_ids(),
                         cat_ids=val_set.cat_ids)"""

CELLS = [
    "from detlab.viz.widgets import DatasetBrowser\nbrowser = DatasetBrowser(cfg)\n"
    "browser.show(3)\nbrowser",
    "from detlab.viz.widgets import ConfigEditor\neditor = ConfigEditor({config!r})\n"
    "editor.set('optimizer.lr', 0.005)\neditor.set('model.bbox_head.stacked_conv', 3)\n"
    "editor.open('model')\neditor",
    "from detlab.viz.widgets import TrainingMonitor\nmonitor = TrainingMonitor(runs[0].work_dir)\n"
    "monitor.refresh()\nmonitor",
    "from detlab.viz.widgets import ErrorBrowser\nerrors = ErrorBrowser(table, val_set)\n"
    "errors.filter(score=(0.3, 1.0))\nerrors",
    "from detlab.viz.widgets import RescoreExplorer, cache_raw_detections\n"
    "model = detlab.init_detector(cfg, runs[0].checkpoint)\n"
    "RescoreExplorer(cache_raw_detections(model, val_set), val_set)",
    "from detlab.viz.widgets import RunComparer\nRunComparer([r.work_dir for r in runs])",
]


def _notebook(root: str) -> str:
    config = os.path.join(REPO, "configs", "quickstart", "retinanet_r18_fpn_shapes.py")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP.format(root=root, config=config))]
    nb.cells += [nbformat.v4.new_code_cell(c.format(config=config)) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = os.path.join(root, "widgets.ipynb")
    nbformat.write(nb, path)
    return os.path.basename(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "widgets"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    os.makedirs(args.out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="detlab-shots-")
    try:
        with jupyterlab_server(root) as url_of, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 3200})
            page.goto(url_of(_notebook(root)))
            run_all_cells(page)
            # the set-up cell trains two runs: the first widget comes after some minutes
            for css, name in WIDGETS.items():
                element = page.wait_for_selector(f".{css}", timeout=2_400_000)
                element.scroll_into_view_if_needed()
                page.wait_for_timeout(1500)  # let the picture arrive
                element.screenshot(path=os.path.join(args.out, name))
                print("saved", name)
            browser.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
