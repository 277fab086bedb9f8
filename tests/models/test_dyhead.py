"""DyHead against MMDetection 2.28: same state_dict and, with its weights (non-zero offsets, so
the deformable sampling matters), the same outputs; a small ATSS + FPN + DyHead from the zoo
config with MMDetection's weights gives the same head outputs, losses (also with an empty
ground truth) and detections; zero_init_offset; errors; the shipped config. (The zoo's ATSS +
DyHead rows are checked by ``test_zoo.py``.)"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_fcos import SMALL, build_pair, compare_detections, compare_losses, compare_outputs

from detlab.config import Config, ConfigError
from detlab.models.necks import DyHead
from detlab.models.necks.dyhead import HSigmoid

REPO = Path(__file__).resolve().parents[2]
CONFIG = "dyhead/atss_r50_fpn_dyhead_1x_coco.py"
SIZES = [(16, 20), (8, 10), (4, 5), (2, 3)]


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CONFIG)
    theirs = Config.fromfile(mmdet_config_dir() / CONFIG)
    assert mine.to_dict() == theirs.to_dict()


SMALL_DYHEAD = {**SMALL, "model.bbox_head.stacked_convs": 0, "model.neck": [
    dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=32, start_level=1,
         add_extra_convs="on_output", num_outs=5),
    dict(type="DyHead", in_channels=32, out_channels=32, num_blocks=2)]}


@pytest.fixture(scope="module")
def atss_dyhead_pair():
    with pytest.MonkeyPatch.context() as patch:
        import_mmdet()
        _read_offsets_as_mmcv_compiled_op(patch)
        yield build_pair(CONFIG, "atss_cls", SMALL_DYHEAD)


def test_detector_outputs_losses_and_detections_match_mmdetection(atss_dyhead_pair):
    compare_outputs(*atss_dyhead_pair)
    losses = compare_losses(*atss_dyhead_pair)
    assert all(v > 0 for v in losses.values())
    empty = compare_losses(*atss_dyhead_pair, empty=True)
    assert empty["loss_cls"] > 0 and empty["loss_bbox"] == 0
    compare_detections(*atss_dyhead_pair)


def _read_offsets_as_mmcv_compiled_op(monkeypatch):
    """mmcv's compiled DCN v2 kernel indexes each image's offset and mask memory as
    ``(C, H_out, W_out)`` whatever their own size (modulated_deform_conv.cpp passes
    ``offset[b]`` to im2col, which reads ``data_offset[(c * H_out + h) * W_out + w]``); the
    test stand-in's torchvision call checks the size instead, so wrap it with that reading."""
    ext = sys.modules["mmcv._ext"]
    plain = ext.modulated_deform_conv_forward

    def as_compiled(input, weight, bias, ones, offset, mask, output, columns, **kwargs):
        height, width = output.shape[-2:]

        def flat(t):
            return t.contiguous().reshape(t.shape[0], -1)[:, :t.shape[1] * height * width] \
                .reshape(t.shape[0], t.shape[1], height, width)

        plain(input, weight, bias, ones, flat(offset), flat(mask), output, columns, **kwargs)

    monkeypatch.setattr(ext, "modulated_deform_conv_forward", as_compiled)


@pytest.mark.parametrize("in_channels,num_blocks", [(16, 2), (32, 1)])
def test_same_state_dict_and_outputs_as_mmdetection(in_channels, num_blocks, monkeypatch):
    import_mmdet()
    _read_offsets_as_mmcv_compiled_op(monkeypatch)
    from mmdet.models.necks import DyHead as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(in_channels, 16, num_blocks=num_blocks)
    ours = DyHead(in_channels, 16, num_blocks=num_blocks)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
        sum(p.numel() for p in reference.parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    ours.load_state_dict(reference.state_dict(), strict=True)
    inputs = [torch.randn(2, in_channels, h, w, generator=gen) for h, w in SIZES]
    with torch.no_grad():
        expected, got = reference(inputs), ours(inputs)
    assert isinstance(got, tuple) and len(got) == len(SIZES)
    for a, b, (h, w) in zip(expected, got, SIZES, strict=True):
        assert b.shape == (2, 16, h, w)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_init_and_errors():
    torch.manual_seed(0)
    neck = DyHead(8, 16, num_blocks=2)
    for block in neck.dyhead_blocks:
        assert torch.all(block.spatial_conv_offset.weight == 0)
        assert block.scale_attn_module[1].weight.std() < 0.05
        assert block.spatial_conv_mid.conv.bias is None
    assert not torch.all(DyHead(8, 16, 1, zero_init_offset=False)
                         .dyhead_blocks[0].spatial_conv_offset.weight == 0)
    x = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(HSigmoid()(x), ((x + 3) / 6).clamp(0, 1))
    with pytest.raises(ConfigError, match="init_cfg"):
        DyHead(8, 16, init_cfg=dict(type="Normal"))
    with pytest.raises(ConfigError, match="in_channels"):
        DyHead([8, 8], 16)
