"""Every config shipped in ``configs/`` is MMDetection 2.28's file of the same path, read to the
same dict (its ``_base_`` files too), or one of detlab's own, listed here: a config added
under an MMDetection name that drifts from MMDetection's, or a new config of detlab's own that
nobody listed, fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference.mmdet_reference import mmdet_config_dir

from detlab.config import Config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# detlab's own configs: the demo data's, and the cross-family lesson of notebook 09
OWN = {"quickstart/mask_rcnn_r18_fpn_shapes.py", "quickstart/retinanet_r18_fpn_shapes.py",
       "atss/atss_effb0_fpn_yoloxhead_simota_coco.py",
       "atss/atss_effb0_fpn_yoloxhead_simota_true-strides_coco.py"}
SHIPPED = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py"))


def _read(path: Path) -> dict:
    return Config.fromfile(path, import_custom_modules=False).to_dict()


def test_own_configs_exist():
    assert OWN <= set(SHIPPED), sorted(OWN - set(SHIPPED))


@pytest.mark.parametrize("config", [c for c in SHIPPED if c not in OWN])
def test_config_is_mmdetections(config):
    theirs = mmdet_config_dir() / config
    assert theirs.is_file(), (f"configs/{config} has no counterpart in MMDetection 2.28's "
                              f"configs: list it in OWN if it is detlab's own")
    mine, reference = _read(CONFIGS / config), _read(theirs)
    differing = sorted(k for k in set(mine) | set(reference) if mine.get(k) != reference.get(k))
    assert not differing, f"configs/{config} differs from MMDetection's in {differing}"


@pytest.mark.parametrize("config", [c for c in SHIPPED if not c.startswith("_base_/")])
def test_config_editor_finds_no_problem(config):
    """The config editor's checks (types, arguments, values) pass every shipped config: what
    it reports on a user's config is worth reading."""
    from detlab.viz.widgets.config_editor import check_config

    problems = check_config(Config.fromfile(CONFIGS / config, import_custom_modules=False))
    assert not problems, "\n".join(map(str, problems))
