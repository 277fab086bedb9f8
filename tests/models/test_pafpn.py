"""PAFPN against MMDetection 2.28: same state_dict and outputs with its weights for every
extra-level mode, a start level, norms; the Xavier init reaches the bottom-up convs; the
shipped config. (The zoo's PAFPN row is checked by ``test_zoo.py``.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models.necks import PAFPN

REPO = Path(__file__).resolve().parents[2]
CONFIG = "pafpn/faster_rcnn_r50_pafpn_1x_coco.py"
IN_CHANNELS = [8, 16, 32, 64]
SIZES = [32, 16, 8, 4]


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CONFIG)
    theirs = Config.fromfile(mmdet_config_dir() / CONFIG)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("args", [
    dict(num_outs=5),
    dict(num_outs=6, start_level=1, add_extra_convs="on_input"),
    dict(num_outs=5, add_extra_convs="on_lateral", relu_before_extra_convs=True),
    dict(num_outs=6, start_level=1, add_extra_convs="on_output", relu_before_extra_convs=True),
    dict(num_outs=2, start_level=1, end_level=2, norm_cfg=dict(type="GN", num_groups=2),
         act_cfg=dict(type="ReLU")),
], ids=["maxpool", "on_input", "on_lateral", "on_output", "end_level-gn-relu"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    import_mmdet()
    from mmdet.models.necks import PAFPN as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(IN_CHANNELS, 8, **args)
    ours = PAFPN(IN_CHANNELS, 8, **args)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    inputs = [torch.randn(2, c, s, s, generator=gen) for c, s in zip(IN_CHANNELS, SIZES,
                                                                      strict=True)]
    with torch.no_grad():
        expected, got = reference(inputs), ours(inputs)
    assert len(got) == len(expected) == args["num_outs"]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_bottom_up_convs_get_the_xavier_init_and_errors_name_the_key():
    torch.manual_seed(0)
    neck = PAFPN(IN_CHANNELS, 8, num_outs=5)
    assert len(neck.downsample_convs) == len(neck.pafpn_convs) == 3
    for conv in [*neck.downsample_convs, *neck.pafpn_convs]:
        assert torch.all(conv.conv.bias == 0)
        bound = (6 / (8 * 9 + 8 * 9)) ** 0.5
        assert conv.conv.weight.abs().max() <= bound
    with pytest.raises(ConfigError, match="start_level"):
        PAFPN(IN_CHANNELS, 8, num_outs=5, start_level=4)
    with pytest.raises(ValueError, match="in_channels"):
        neck([torch.randn(1, 8, 8, 8)])
    assert isinstance(neck.downsample_convs[0].conv, nn.Conv2d)
