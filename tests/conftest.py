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
