"""SwinTransformer: MMDetection's state_dict, trainable parameter count and outputs (window
padding, shifted windows, absolute position embedding, frozen stages ...), its pretrained
loading (original Swin weights through convert_weights, resized position tables) and the
shipped config."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones import SwinTransformer
from detlab.models.backbones.swin import convert_swin_weights

REPO = Path(__file__).resolve().parents[2]
CONFIG = "swin/mask_rcnn_swin-t-p4-w7_fpn_1x_coco.py"
# four narrow stages with 3x3 windows: every map but the last is padded to whole windows
SMALL = dict(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3,
             drop_path_rate=0.0)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mmdet_swin(**args) -> nn.Module:
    import_mmdet()
    from mmdet.models.backbones import SwinTransformer as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(**args)


def _randomize(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("args", [
    SMALL,
    dict(SMALL, use_abs_pos_embed=True, pretrain_img_size=32, out_indices=(1, 3),
         frozen_stages=2),
    dict(SMALL, qkv_bias=False, qk_scale=0.5, patch_norm=False, mlp_ratio=2,
         act_cfg=dict(type="ReLU")),
    dict(embed_dims=8, depths=(2, 3), num_heads=(2, 2), strides=(2, 2), patch_size=2,
         window_size=4, out_indices=(0, 1), frozen_stages=0),
], ids=["small", "abs-pos-frozen", "no-bias-scale-no-patchnorm", "two-stages-patch2"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    reference = _mmdet_swin(**args)
    ours = SwinTransformer(**args)
    assert _shapes(ours) == _shapes(reference)
    reference.train(), ours.train()  # frozen stages stay frozen
    assert _trainable(ours) == _trainable(reference)
    _randomize(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 61, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert ours.out_channels == [a.shape[1] for a in expected]


def test_swin_t_matches_mmdetection_and_options():
    with torch.device("meta"):  # ours builds on the meta device (MMDetection's does not)
        ours = SwinTransformer()
    reference = _mmdet_swin()
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    assert ours.out_channels == [96, 192, 384, 768]

    frozen = SwinTransformer(**dict(SMALL, frozen_stages=1)).train()
    assert not frozen.patch_embed.training and not frozen.stages[0].training
    assert all(not p.requires_grad for p in frozen.norm0.parameters())
    assert frozen.stages[1].training and all(p.requires_grad for p in frozen.norm1.parameters())

    checkpointed = SwinTransformer(**dict(SMALL, with_cp=True, drop_path_rate=0.3)).train()
    checkpointed(torch.randn(1, 3, 40, 40))[-1].sum().backward()
    assert checkpointed.stages[0].blocks[1].attn.w_msa.qkv.weight.grad is not None

    built = build_model(dict(type="SwinTransformer", **SMALL))
    assert isinstance(built, SwinTransformer) and built.feat_dim == 64


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="strides"):
        SwinTransformer(**dict(SMALL, strides=(4, 2, 2)))
    with pytest.raises(ConfigError, match="patch_size"):
        SwinTransformer(**dict(SMALL, patch_size=2))
    with pytest.raises(ConfigError, match="out_indices"):
        SwinTransformer(**dict(SMALL, out_indices=(4,)))
    with pytest.raises(ConfigError, match="LN"):
        SwinTransformer(**dict(SMALL, norm_cfg=dict(type="BN")))
    with pytest.raises(ConfigError, match="init_cfg or pretrained"):
        SwinTransformer(**SMALL, pretrained="x.pth",
                        init_cfg=dict(type="Pretrained", checkpoint="y.pth"))


def _original_swin_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the original Swin repository's names (what
    ``convert_weights`` reads), plus a classifier head it must drop."""
    names = {"stages.": "layers.", "attn.w_msa.": "attn.", "ffn.layers.0.0.": "mlp.fc1.",
             "ffn.layers.1.": "mlp.fc2.", "patch_embed.projection": "patch_embed.proj"}
    weights = {}
    for key, value in model.state_dict().items():
        for new, old in names.items():
            key = key.replace(new, old)
        weights[key] = value.clone()
    weights["head.weight"] = torch.zeros(10, 64)
    return weights


def test_convert_weights_is_mmdetections():
    import_mmdet()
    from mmdet.models.utils.ckpt_convert import swin_converter

    source = SwinTransformer(**SMALL)
    _randomize(source)
    original = _original_swin_weights(source)
    expected = swin_converter(original)
    got = convert_swin_weights(original)
    assert list(got) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)


@pytest.mark.parametrize("window_size", [3, 5], ids=["same-window", "resized-tables"])
def test_pretrained_original_weights_load_as_mmdetection(tmp_path, window_size):
    """An original-Swin checkpoint (``model`` entry) loads in ``init_weights`` through
    ``convert_weights`` as MMDetection loads it, also into larger windows (tables resized)."""
    source = SwinTransformer(**dict(SMALL, use_abs_pos_embed=True, pretrain_img_size=32))
    _randomize(source)
    original = _original_swin_weights(source)
    original["absolute_pos_embed"] = original["absolute_pos_embed"].flatten(2).transpose(1, 2)
    if window_size != 3:  # MMDetection fails on index buffers of another size; ours skips them
        original = {k: v for k, v in original.items() if "relative_position_index" not in k}
    path = tmp_path / "swin_original.pth"
    torch.save({"model": original}, path)
    args = dict(SMALL, window_size=window_size, use_abs_pos_embed=True, pretrain_img_size=32,
                convert_weights=True, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    from mmcv import ConfigDict  # MMDetection's Swin reads init_cfg.checkpoint

    reference = _mmdet_swin(**dict(args, init_cfg=ConfigDict(args["init_cfg"])))
    ours = SwinTransformer(**args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.init_weights()
        ours.init_weights()
    expected = reference.state_dict()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    torch.testing.assert_close(ours.norm3.weight, source.norm3.weight)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CONFIG)
    theirs = Config.fromfile(mmdet_config_dir() / CONFIG)
    assert mine.to_dict() == theirs.to_dict()


def test_mask_rcnn_swin_loads_mmdetections_weights_and_matches_its_features():
    """The shipped Mask R-CNN config with a narrow Swin (and 16-channel heads): MMDetection's
    detector weights load strictly and backbone + FPN give the same maps on a padded input."""
    import_mmdet()
    from mmdet.models import build_detector

    options = {"model.backbone.embed_dims": 8, "model.backbone.num_heads": [1, 2, 2, 4],
               "model.backbone.window_size": 3, "model.backbone.init_cfg": None,
               "model.neck.in_channels": [8, 16, 32, 64], "model.neck.out_channels": 16,
               "model.rpn_head.in_channels": 16, "model.rpn_head.feat_channels": 16,
               "model.roi_head.bbox_roi_extractor.out_channels": 16,
               "model.roi_head.bbox_head.in_channels": 16,
               "model.roi_head.bbox_head.fc_out_channels": 16,
               "model.roi_head.mask_roi_extractor.out_channels": 16,
               "model.roi_head.mask_head.in_channels": 16,
               "model.roi_head.mask_head.conv_out_channels": 16}
    mm_cfg = load_mmdet_config(CONFIG)
    mm_cfg.merge_from_dict(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize(reference)
    cfg = Config.fromfile(REPO / "configs" / CONFIG)
    cfg.merge_from_dict(options)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert _trainable(ours) == _trainable(reference)
    reference.eval(), ours.eval()
    images = torch.randn(1, 3, 100, 76, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = reference.extract_feat(images), ours.extract_feat(images)
    assert len(got) == len(expected) == 5
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_checkpoint_of_another_window_loads_without_its_index_buffers(tmp_path):
    """MMDetection's own checkpoints carry ``relative_position_index`` buffers; loading one of
    another window size resizes the tables and keeps this model's indices (MMDetection
    stops with a size mismatch there)."""
    source = SwinTransformer(**SMALL)
    _randomize(source)
    path = tmp_path / "swin_w3.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    model = SwinTransformer(**dict(SMALL, window_size=5,
                                   init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    index = model.stages[0].blocks[0].attn.w_msa.relative_position_index.clone()
    model.init_weights()
    attn = model.stages[0].blocks[0].attn.w_msa
    assert torch.equal(attn.relative_position_index, index)
    assert attn.relative_position_bias_table.shape == (81, 1)
    torch.testing.assert_close(model.norm3.weight, source.norm3.weight)
