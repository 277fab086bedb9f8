"""``open-mmlab://NAME`` and ``mmcls://NAME``: the pretrained weights MMDetection 2.x configs name
resolve to OpenMMLab's download addresses and load through torch.hub's cache (no network here:
the files are put in the cache first)."""

from __future__ import annotations

import os
import re

import pytest
import torch
from reference.mmdet_reference import mmdet_config_dir
from test_resnet import offline_hub  # noqa: F401  (fixture)

from detlab.checkpoint import openmmlab_weights_url, read_checkpoint
from detlab.config import ConfigError
from detlab.models.backbones.resnet import ResNet

NAMES = re.compile(r"""['"]((?:open-mmlab|mmcls)://[^'"]+)['"]""")


def test_every_name_the_zoo_configs_use_resolves():
    """Every open-mmlab:// and mmcls:// name in MMDetection 2.28's configs has an address."""
    names = {name for path in mmdet_config_dir().rglob("*.py")
             for name in NAMES.findall(path.read_text())}
    assert len(names) > 30
    for name in sorted(names):
        url = openmmlab_weights_url(name)
        assert url.startswith("https://download.openmmlab.com/") and url.endswith(".pth"), name


def test_renamed_and_unknown_names():
    with pytest.warns(DeprecationWarning, match="open-mmlab://detectron/resnet50_caffe"):
        old = openmmlab_weights_url("open-mmlab://resnet50_caffe")
    assert old == openmmlab_weights_url("open-mmlab://detectron/resnet50_caffe")
    with pytest.raises(ConfigError, match="open-mmlab://resnext101_64x4d") as info:
        openmmlab_weights_url("open-mmlab://resnext101_64x4")
    assert "local file" in str(info.value)


def test_open_mmlab_weights_read_from_the_cache(offline_hub):  # noqa: F811
    url = openmmlab_weights_url("open-mmlab://darknet53")
    offline_hub.mkdir(parents=True)
    state = {"conv1.conv.weight": torch.randn(32, 3, 3, 3)}
    torch.save({"state_dict": state, "meta": {}}, offline_hub / os.path.basename(url))
    checkpoint = read_checkpoint("open-mmlab://darknet53")
    torch.testing.assert_close(checkpoint["state_dict"]["conv1.conv.weight"],
                               state["conv1.conv.weight"])


def test_mmcls_classifier_loads_as_a_backbone(offline_hub):  # noqa: F811
    """An MMClassification checkpoint holds a whole classifier; its ``backbone.`` weights load
    into the backbone, the head's are left out."""
    torch.manual_seed(0)
    source = ResNet(depth=18)
    url = openmmlab_weights_url("mmcls://resnet18")
    offline_hub.mkdir(parents=True)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["head.fc.weight"] = torch.randn(1000, 512)
    torch.save({"state_dict": state, "meta": {}}, offline_hub / os.path.basename(url))
    model = ResNet(depth=18, init_cfg=dict(type="Pretrained", checkpoint="mmcls://resnet18"))
    model.init_weights()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)
