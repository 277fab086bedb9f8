"""CARAFE and FPN_CARAFE against MMDetection 2.28.

mmcv computes CARAFE's reassembly with a compiled op that cannot run here, so the op is
checked against a per-pixel reference written below from the algorithm (each output pixel a
mask-weighted sum of the ``k x k`` input neighbourhood around its source pixel, zero outside
the map); the same reference stands in for mmcv's op when the whole neck is compared with
MMDetection's (same state_dict, same outputs with its weights, every upsampler and the extra
levels; odd sizes exercise the cropping). (The zoo's CARAFE rows are checked by
``test_zoo.py``.)"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir

from detlab.config import Config, ConfigError
from detlab.models.necks import FPN_CARAFE
from detlab.models.ops.carafe import CARAFEPack, carafe

REPO = Path(__file__).resolve().parents[2]
CONFIG = "carafe/faster_rcnn_r50_fpn_carafe_1x_coco.py"
IN_CHANNELS = [8, 16, 32, 64]
SIZES = [(30, 20), (15, 10), (8, 5), (4, 3)]


def reference_carafe(features, masks, kernel_size, group_size, scale_factor):
    """CARAFE one output pixel at a time, straight from the algorithm."""
    n, c, h, w = features.shape
    k, s, radius = kernel_size, scale_factor, (kernel_size - 1) // 2
    per_group = c // group_size
    out = features.new_zeros(n, c, h * s, w * s)
    for oy in range(h * s):
        for ox in range(w * s):
            cy, cx = oy // s, ox // s
            for ky in range(k):
                for kx in range(k):
                    iy, ix = cy + ky - radius, cx + kx - radius
                    if not (0 <= iy < h and 0 <= ix < w):
                        continue
                    for group in range(group_size):
                        channels = slice(group * per_group, (group + 1) * per_group)
                        weight = masks[:, group * k * k + ky * k + kx, oy, ox]
                        out[:, channels, oy, ox] += features[:, channels, iy, ix] * weight[:, None]
    return out


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CONFIG)
    theirs = Config.fromfile(mmdet_config_dir() / CONFIG)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("kernel_size,group_size,scale_factor", [(5, 1, 2), (3, 2, 3)])
def test_carafe_matches_the_per_pixel_reference(kernel_size, group_size, scale_factor):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 5, 4, generator=gen)
    masks = torch.rand(2, group_size * kernel_size ** 2, 5 * scale_factor, 4 * scale_factor,
                       generator=gen)
    torch.testing.assert_close(
        carafe(features, masks, kernel_size, group_size, scale_factor),
        reference_carafe(features, masks, kernel_size, group_size, scale_factor))


def test_carafe_pack_normalizes_its_kernels_and_keeps_constant_maps():
    torch.manual_seed(0)
    pack = CARAFEPack(4, 2, up_kernel=3, compressed_channels=8)
    assert pack.content_encoder.weight.std() < 0.01
    mask = pack.kernel_normalizer(pack.content_encoder(pack.channel_compressor(
        torch.randn(1, 4, 5, 5))))
    torch.testing.assert_close(mask.sum(1), torch.ones(1, 10, 10))
    # inside the map (away from the zero border) a constant map stays constant
    out = pack(torch.full((1, 4, 6, 6), 2.0))
    torch.testing.assert_close(out[:, :, 2:10, 2:10], torch.full((1, 4, 8, 8), 2.0))
    with pytest.raises(ConfigError, match="up_kernel"):
        carafe(torch.zeros(1, 2, 2, 2), torch.zeros(1, 16, 4, 4), 4, 1, 2)


@pytest.mark.parametrize("args", [
    dict(num_outs=5, upsample_cfg=dict(type="carafe", up_kernel=5, up_group=1,
                                       encoder_kernel=3, encoder_dilation=1,
                                       compressed_channels=8)),
    dict(num_outs=6, start_level=1, norm_cfg=dict(type="GN", num_groups=2),
         act_cfg=dict(type="ReLU"), order=("act", "conv", "norm"),
         upsample_cfg=dict(type="carafe", up_kernel=3, up_group=2, encoder_kernel=1,
                           compressed_channels=4)),
    dict(num_outs=5, upsample_cfg=dict(type="nearest")),
    dict(num_outs=4, upsample_cfg=dict(type="bilinear")),
    dict(num_outs=5, upsample_cfg=dict(type="deconv", upsample_kernel=4)),
    dict(num_outs=5, upsample_cfg=dict(type="pixel_shuffle", upsample_kernel=3)),
], ids=["carafe", "carafe-start_level-gn-act_first", "nearest", "bilinear", "deconv",
        "pixel_shuffle"])
def test_same_state_dict_and_outputs_as_mmdetection(args, monkeypatch):
    import_mmdet()
    from mmcv import ConfigDict
    from mmdet.models.necks import FPN_CARAFE as Reference

    # mmcv.ops re-exports the function under the module's name: patch the module itself
    monkeypatch.setattr(sys.modules["mmcv.ops.carafe"], "carafe", reference_carafe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # MMDetection reads upsample_kernel as an attribute: it needs a ConfigDict
        reference = Reference(IN_CHANNELS, 8, **{**args,
                                                 "upsample_cfg": ConfigDict(args["upsample_cfg"])})
    ours = FPN_CARAFE(IN_CHANNELS, 8, **args)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    inputs = [torch.randn(1, c, h, w, generator=gen) for c, (h, w) in zip(IN_CHANNELS, SIZES,
                                                                          strict=True)]
    with torch.no_grad():
        expected, got = reference(inputs), ours(inputs)
    assert len(got) == len(expected) == args["num_outs"]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_init_and_errors():
    torch.manual_seed(0)
    neck = FPN_CARAFE(IN_CHANNELS, 8, num_outs=5)
    assert len(neck.upsample_modules) == 4
    assert torch.all(neck.lateral_convs[0].conv.bias == 0)
    assert neck.upsample_modules[0].content_encoder.weight.std() < 0.01
    with pytest.raises(ConfigError, match="init_cfg"):
        FPN_CARAFE(IN_CHANNELS, 8, num_outs=5, init_cfg=dict(type="Normal"))
    with pytest.raises(ConfigError, match="upsample_kernel"):
        FPN_CARAFE(IN_CHANNELS, 8, num_outs=5, upsample_cfg=dict(type="deconv"))
    with pytest.raises(ConfigError, match="upsample_cfg"):
        FPN_CARAFE(IN_CHANNELS, 8, num_outs=5, upsample_cfg=dict(type="bicubic"))


def test_carafe_mask_head_matches_mmdetection(monkeypatch):
    """The mask head of the zoo's CARAFE Mask R-CNN (``upsample_cfg=dict(type='carafe')``):
    same state_dict and mask logits with MMDetection's weights."""
    import_mmdet()
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead as Reference

    from detlab.models.roi_heads.mask_heads.fcn_mask_head import FCNMaskHead

    monkeypatch.setattr(sys.modules["mmcv.ops.carafe"], "carafe", reference_carafe)
    args = dict(num_convs=2, in_channels=8, conv_out_channels=8, num_classes=3,
                upsample_cfg=dict(type="carafe", scale_factor=2, up_kernel=5, up_group=1,
                                  encoder_kernel=3, encoder_dilation=1, compressed_channels=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    ours = FCNMaskHead(**args)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    rois = torch.randn(3, 8, 7, 7, generator=gen)
    with torch.no_grad():
        expected, got = reference(rois), ours(rois)
    assert got.shape == (3, 3, 14, 14)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
