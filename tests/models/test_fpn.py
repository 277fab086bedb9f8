"""FPN: every add_extra_convs mode, level selection, norms, errors, and torchvision's FPN."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from detlab.config import ConfigError
from detlab.models import FPN

IN_CHANNELS = [8, 16, 32, 64]
SIZES = [32, 16, 8, 4]


def _inputs(batch: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, c, s, s) for c, s in zip(IN_CHANNELS, SIZES, strict=True)]


@pytest.mark.parametrize("mode", [False, True, "on_input", "on_lateral", "on_output"])
def test_extra_levels_for_every_mode(mode):
    fpn = FPN(IN_CHANNELS, 8, num_outs=6, start_level=1, add_extra_convs=mode).eval()
    inputs = _inputs()
    with torch.no_grad():
        outs = fpn(inputs)
        laterals = [conv(inputs[i + 1]) for i, conv in enumerate(fpn.lateral_convs)]
        for i in (1, 0):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[2:])
        base = [conv(lateral) for conv, lateral in zip(fpn.fpn_convs, laterals, strict=False)]
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1, 1]
    assert all(o.shape[1] == 8 for o in outs)
    for a, b in zip(outs[:3], base, strict=True):
        torch.testing.assert_close(a, b)
    if mode is False:
        assert len(fpn.fpn_convs) == 3
        torch.testing.assert_close(outs[3], F.max_pool2d(outs[2], 1, stride=2))
        torch.testing.assert_close(outs[4], F.max_pool2d(outs[3], 1, stride=2))
        return
    assert len(fpn.fpn_convs) == 6
    source = {True: inputs[3], "on_input": inputs[3], "on_lateral": laterals[2],
              "on_output": base[2]}[mode]
    assert fpn.fpn_convs[3].conv.in_channels == source.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(outs[3], fpn.fpn_convs[3](source))
        torch.testing.assert_close(outs[4], fpn.fpn_convs[4](outs[3]))  # no ReLU by default


def test_relu_before_extra_convs():
    fpn = FPN(IN_CHANNELS, 8, num_outs=5, start_level=1, add_extra_convs="on_output",
              relu_before_extra_convs=True).eval()
    with torch.no_grad():
        outs = fpn(_inputs())
        torch.testing.assert_close(outs[3], fpn.fpn_convs[3](outs[2]))  # the first has none
        torch.testing.assert_close(outs[4], fpn.fpn_convs[4](F.relu(outs[3])))


def test_end_level_is_inclusive_and_forbids_extra_levels():
    fpn = FPN(IN_CHANNELS, 8, num_outs=2, start_level=1, end_level=2)
    assert len(fpn.lateral_convs) == 2 and fpn.backbone_end_level == 3
    assert [o.shape[-1] for o in fpn(_inputs())] == [16, 8]
    with pytest.raises(ConfigError, match="end_level - start_level"):
        FPN(IN_CHANNELS, 8, num_outs=4, start_level=1, end_level=2, add_extra_convs=True)


def test_parameter_names_follow_mmdetection():
    fpn = FPN([256, 512, 1024, 2048], 256, num_outs=5, start_level=1,
              add_extra_convs="on_input")
    names = set(fpn.state_dict())
    assert {"lateral_convs.0.conv.weight", "lateral_convs.2.conv.bias",
            "fpn_convs.0.conv.weight", "fpn_convs.4.conv.bias"} <= names
    assert fpn.fpn_convs[3].conv.in_channels == 2048  # P6 from C5
    # RetinaNet's neck: 3 laterals + 3 outputs + 2 extra convs
    count = sum(p.numel() for p in fpn.parameters())
    expected = sum(c * 256 + 256 for c in (512, 1024, 2048)) + 3 * (256 * 256 * 9 + 256) \
        + (2048 * 256 * 9 + 256) + (256 * 256 * 9 + 256)
    assert count == expected


def test_norm_layers_and_no_norm_on_lateral():
    gn = dict(type="GN", num_groups=4, requires_grad=True)
    fpn = FPN(IN_CHANNELS, 8, num_outs=4, norm_cfg=gn)
    assert isinstance(fpn.lateral_convs[0].gn, nn.GroupNorm) and fpn.lateral_convs[0].conv.bias \
        is None
    plain_lateral = FPN(IN_CHANNELS, 8, num_outs=4, norm_cfg=gn, no_norm_on_lateral=True)
    assert plain_lateral.lateral_convs[0].norm is None
    assert isinstance(plain_lateral.fpn_convs[0].gn, nn.GroupNorm)
    act = FPN(IN_CHANNELS, 8, num_outs=4, act_cfg=dict(type="ReLU"))
    assert all(o.min() >= 0 for o in act(_inputs()))


def test_xavier_init():
    fpn = FPN(IN_CHANNELS, 8, num_outs=5, add_extra_convs="on_input")
    for m in fpn.modules():
        if isinstance(m, nn.Conv2d):
            m.bias.data.fill_(1.0)
    fpn.init_weights()
    for m in fpn.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert m.weight.abs().max() <= bound and torch.all(m.bias == 0)


def test_upsample_with_scale_factor():
    fpn = FPN(IN_CHANNELS, 8, num_outs=4, upsample_cfg=dict(scale_factor=2, mode="nearest"))
    assert [o.shape[-1] for o in fpn(_inputs())] == SIZES


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(add_extra_convs="on_top"), ConfigError, "add_extra_convs"),
    (dict(num_outs=2), ConfigError, "num_outs"),
    (dict(start_level=4), ConfigError, "start_level"),
    (dict(end_level=7), ConfigError, "end_level"),
])
def test_bad_arguments(kwargs, error, message):
    args = dict(in_channels=IN_CHANNELS, out_channels=8, num_outs=5)
    with pytest.raises(error, match=message):
        FPN(**{**args, **kwargs})
    with pytest.raises(ConfigError, match="list of ints"):
        FPN(in_channels=256, out_channels=8, num_outs=5)


def test_inputs_that_do_not_match_in_channels():
    fpn = FPN([8, 16, 32, 128], 8, num_outs=4)
    with pytest.raises(ValueError, match=r"in_channels=\[8, 16, 32, 128\].*\[8, 16, 32, 64\]"):
        fpn(_inputs())
    with pytest.raises(ValueError, match="3 feature maps"):
        fpn(_inputs()[:3])


@pytest.mark.parametrize("mode", [False, "on_output"])
def test_same_outputs_as_torchvision_fpn(mode):
    """torchvision's FPN with LastLevelMaxPool is ours without extra convs; with LastLevelP6P7
    on the P5 output it is 'on_output' with ReLU before P7."""
    extra = LastLevelMaxPool() if mode is False else LastLevelP6P7(8, 8)
    torch.manual_seed(0)
    reference = FeaturePyramidNetwork(IN_CHANNELS[1:], 8, extra_blocks=extra).eval()
    ours = FPN(IN_CHANNELS[1:], 8, num_outs=4 if mode is False else 5, add_extra_convs=mode,
               relu_before_extra_convs=True).eval()
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace("inner_blocks", "lateral_convs").replace("layer_blocks", "fpn_convs")
        key = key.replace(".0.weight", ".conv.weight").replace(".0.bias", ".conv.bias")
        key = key.replace("extra_blocks.p6.", "fpn_convs.3.conv.")
        state[key.replace("extra_blocks.p7.", "fpn_convs.4.conv.")] = value
    ours.load_state_dict(state, strict=True)
    inputs = _inputs()[1:]
    with torch.no_grad():
        expected = list(reference({str(i): x for i, x in enumerate(inputs)}).values())
        got = ours(inputs)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a)
