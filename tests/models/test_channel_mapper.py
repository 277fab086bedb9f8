"""ChannelMapper against MMDetection 2.28: same state_dict and, with its weights, the same
outputs (with and without extra levels, norms, no activation); the Xavier init; errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from reference.mmdet_reference import import_mmdet

from detlab.config import ConfigError
from detlab.models.necks import ChannelMapper

IN_CHANNELS = [8, 16, 32]
SIZES = [16, 8, 4]


@pytest.mark.parametrize("args", [
    dict(),
    dict(kernel_size=1, num_outs=5, norm_cfg=dict(type="GN", num_groups=4)),
    dict(num_outs=4, act_cfg=None),
], ids=["plain", "extra-levels-gn", "one-extra-no-act"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    import_mmdet()
    from mmdet.models.necks import ChannelMapper as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(IN_CHANNELS, 8, **args)
    ours = ChannelMapper(IN_CHANNELS, 8, **args)
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
    assert len(got) == len(expected) == args.get("num_outs", len(IN_CHANNELS))
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_init_and_errors():
    torch.manual_seed(0)
    neck = ChannelMapper(IN_CHANNELS, 8, num_outs=4)
    for conv in [*neck.convs, *neck.extra_convs]:
        assert torch.all(conv.conv.bias == 0)
        fan = conv.conv.in_channels * 9 + 8 * 9
        assert conv.conv.weight.abs().max() <= (6 / fan) ** 0.5
    assert ChannelMapper(IN_CHANNELS, 8).extra_convs is None
    with pytest.raises(ConfigError, match="num_outs"):
        ChannelMapper(IN_CHANNELS, 8, num_outs=2)
    with pytest.raises(ConfigError, match="in_channels"):
        ChannelMapper(8, 8)
    with pytest.raises(ValueError, match="in_channels"):
        neck([torch.randn(1, 8, 4, 4)])
