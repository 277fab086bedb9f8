"""Shared fixtures: where the test data lives, a tiny shapes dataset and a tiny training config."""

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
CONFIGS = TESTS / "data" / "configs"
REPO = TESTS.parent
QUICKSTART = REPO / "configs" / "quickstart" / "retinanet_r18_fpn_shapes.py"


@pytest.fixture
def configs() -> Path:
    """The folder of test config files (tests/data/configs)."""
    return CONFIGS


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> str:
    """A shapes dataset of 8 training and 4 validation images of 64 pixels (made once)."""
    from detlab.data import make_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)
    return str(root)


def tiny_config(root: str, epochs: int = 2, **options):
    """The quickstart config on 64-pixel images of ``root``: 2 iterations an epoch, logging,
    evaluating and saving every epoch; ``options`` are more dotted overrides."""
    from detlab.config import Config
    from detlab.notebooks import quickstart_overrides

    cfg = Config.fromfile(QUICKSTART)
    cfg.merge_from_dict(quickstart_overrides(cfg, root, 64, epochs))
    cfg.merge_from_dict({"data.samples_per_gpu": 4, "data.workers_per_gpu": 0,
                         "log_config.interval": 1, "evaluation.interval": 1,
                         "checkpoint_config.interval": 1, "lr_config.warmup_iters": 2,
                         "lr_config.step": [2], **options})
    return cfg


@pytest.fixture
def make_config():
    """``make_config(root, epochs=2, **dotted_overrides)`` -> a tiny training Config."""
    return tiny_config


# coloured rectangles, one class each, on 64 x 48 images: a scene whose boxes are known exactly
RECT_NAMES = ["red", "green", "blue"]
RECT_BOXES = [[4, 4, 20, 16], [30, 6, 58, 20], [8, 26, 40, 44]]  # xyxy of each class
RECT_COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
RECT_CONTENT = [(0, 1), (2,), (0, 2), (1,)]  # the classes of each image (ids 1..4)


def write_rectangles(root, polygons: bool = False):
    """Write the rectangle images into ``root`` and their COCO file ``root / 'ann.json'``."""
    import json

    import numpy as np
    from PIL import Image

    images, anns = [], []
    for i, classes in enumerate(RECT_CONTENT):
        pixels = np.full((48, 64, 3), 40, np.uint8)
        for c in classes:
            x1, y1, x2, y2 = RECT_BOXES[c]
            pixels[y1:y2, x1:x2] = RECT_COLORS[c]
            ann = dict(id=len(anns) + 1, image_id=i + 1, category_id=c + 1, iscrowd=0,
                       bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1))
            if polygons:
                ann["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            anns.append(ann)
        Image.fromarray(pixels).save(root / f"im{i}.png")
        images.append(dict(id=i + 1, file_name=f"im{i}.png", width=64, height=48))
    cats = [dict(id=j + 1, name=name) for j, name in enumerate(RECT_NAMES)]
    (root / "ann.json").write_text(json.dumps(dict(images=images, annotations=anns,
                                                   categories=cats)))
    return root / "ann.json"


@pytest.fixture(scope="module")
def one_math_thread():
    """Torch on one math thread for a module's tests: tiny models run several times faster
    that way than with a thread per core on a machine shared with other work; the thread count
    comes back afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_math_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
