"""FPG against MMDetection 2.28: same state_dict and, with its weights, the same outputs for
bottom-up and top-down pathways, skipped levels, extra levels by conv or max-pool and the zoo's
transitions; errors name the key; the shipped config. (The zoo's FPG rows are checked by
``test_zoo.py``.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir

from detlab.config import Config, ConfigError
from detlab.models.necks import FPG

REPO = Path(__file__).resolve().parents[2]
CONFIG = "fpg/faster_rcnn_r50_fpg_crop640_50e_coco.py"
IN_CHANNELS = [8, 16, 32, 64]
SIZES = [32, 16, 8, 4]
BN = dict(type="BN", requires_grad=True)
ACT_FIRST = dict(norm_cfg=BN, inplace=False, order=("act", "conv", "norm"))
ZOO_TRANSITIONS = dict(
    same_down_trans=None,
    same_up_trans=dict(type="conv", kernel_size=3, stride=2, padding=1, **ACT_FIRST),
    across_lateral_trans=dict(type="conv", kernel_size=1, **ACT_FIRST),
    across_down_trans=dict(type="interpolation_conv", mode="nearest", kernel_size=3,
                           **ACT_FIRST),
    across_up_trans=None,
    across_skip_trans=dict(type="conv", kernel_size=1, **ACT_FIRST),
    output_trans=dict(type="last_conv", kernel_size=3, order=("act", "conv", "norm"),
                      inplace=False),
    norm_cfg=BN)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CONFIG)
    theirs = Config.fromfile(mmdet_config_dir() / CONFIG)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("args", [
    dict(num_outs=5, stack_times=3, paths=["bu"] * 3, inter_channels=8,
         skip_inds=[(0, 1, 2), (0, 1), (0,), (), ()], **ZOO_TRANSITIONS),
    dict(num_outs=5, stack_times=2, paths=["td", "bu"], add_extra_convs=True,
         skip_inds=[(1,), (), (1,), (), ()],
         same_down_trans=dict(type="interpolation_conv", kernel_size=3),
         across_up_trans=dict(type="conv", kernel_size=3, stride=2, padding=1),
         across_down_trans=dict(type="interpolation_conv", kernel_size=3,
                                norm_cfg=dict(type="GN", num_groups=2)),
         across_skip_trans=dict(type="conv", kernel_size=1)),
    dict(num_outs=3, start_level=1, stack_times=1, paths=["td"], inter_channels=[8, 16, 8],
         skip_inds=[(), (), ()], across_skip_trans=None,
         same_down_trans=dict(type="interpolation_conv", kernel_size=3),
         across_down_trans=dict(type="interpolation_conv", kernel_size=1)),
], ids=["zoo-bu-skips", "td-bu-extra-convs", "start_level-inter_channels"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    import_mmdet()
    from mmdet.models.necks import FPG as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(IN_CHANNELS, 8, **args)
    ours = FPG(IN_CHANNELS, 8, **args)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2
                        + (1.0 if name.endswith("bn.weight") else 0.0))
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.train(), ours.train()  # batch statistics in the norms
    inputs = [torch.randn(2, c, s, s, generator=gen) for c, s in zip(IN_CHANNELS, SIZES,
                                                                      strict=True)]
    expected, got = reference(inputs), ours(inputs)
    assert len(got) == len(expected) == args["num_outs"]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_init_and_errors():
    torch.manual_seed(0)
    neck = FPG(IN_CHANNELS, 8, num_outs=5, stack_times=1, paths=["bu"],
               skip_inds=[()] * 5, across_skip_trans=None, **{
                   k: v for k, v in ZOO_TRANSITIONS.items() if k != "across_skip_trans"})
    bound = (3 / 8) ** 0.5  # Caffe2Xavier: uniform in sqrt(3 / fan_in), fan_in of a 1x1 conv
    assert neck.lateral_convs[0].weight.abs().max() <= bound
    assert torch.all(neck.lateral_convs[0].bias == 0)
    assert isinstance(FPG(IN_CHANNELS, 8, num_outs=4, stack_times=1, paths=["bu"])
                      .fpn_transitions[0][1]["across_skip"], torch.nn.Identity)
    with pytest.raises(ConfigError, match="across_lateral_trans"):
        FPG(IN_CHANNELS, 8, num_outs=4, stack_times=1, paths=["bu"],
            across_lateral_trans=dict(type="conv1x1"))
    with pytest.raises(ConfigError, match="paths"):
        FPG(IN_CHANNELS, 8, num_outs=4, stack_times=2, paths=["bu"])
    with pytest.raises(ConfigError, match="num_outs"):
        FPG(IN_CHANNELS, 8, num_outs=3, stack_times=1, paths=["bu"])
