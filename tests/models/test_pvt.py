"""PVT / PVTv2: MMDetection's state_dict, parameter count and outputs with copied weights, the
original repository's checkpoints renamed as MMDetection renames them, and shipped configs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones import PyramidVisionTransformer, PyramidVisionTransformerV2
from detlab.models.backbones.pvt import convert_pvt_weights

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["pvt/retinanet_pvt-t_fpn_1x_coco.py", "pvt/retinanet_pvtv2-b0_fpn_1x_coco.py"]
SMALL = dict(embed_dims=8, num_layers=[1, 2, 1, 1], num_heads=[1, 2, 2, 4],
             mlp_ratios=[2, 2, 2, 2], pretrain_img_size=64, drop_path_rate=0.0)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _reference(name: str, **args) -> nn.Module:
    import_mmdet()
    from mmdet.models import backbones

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(backbones, name)(**args)


def _randomize(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("cls,args", [
    (PyramidVisionTransformer, SMALL),
    (PyramidVisionTransformer, dict(SMALL, out_indices=(1, 3), qkv_bias=False,
                                    norm_after_stage=True, use_conv_ffn=True)),
    (PyramidVisionTransformer, dict(SMALL, use_abs_pos_embed=False, sr_ratios=[4, 2, 1, 1],
                                    act_cfg=dict(type="ReLU"))),
    (PyramidVisionTransformerV2, SMALL),
], ids=["pvt", "pvt-options", "pvt-nopos-relu", "pvtv2"])
def test_same_state_dict_and_outputs_as_mmdetection(cls, args):
    reference = _reference(cls.__name__, **args)
    ours = cls(**args)
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    _randomize(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 72, 56, generator=torch.Generator().manual_seed(2))  # not 64x64
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert ours.out_channels == [a.shape[1] for a in expected]


def _original_checkpoint(v2: bool) -> dict[str, torch.Tensor]:
    """A checkpoint under the original PVT repository's names for SMALL (with a classifier)."""
    gen = torch.Generator().manual_seed(3)
    shapes: dict[str, tuple[int, ...]] = {"head.weight": (10, 32), "head.bias": (10,),
                                          "norm.weight": (32,), "norm.bias": (32,)}
    if not v2:
        shapes["cls_token"] = (1, 1, 32)
    prev, size = 3, 64
    pairs = zip(SMALL["num_heads"], SMALL["num_layers"], strict=True)
    for s, (heads, layers) in enumerate(pairs, 1):
        dims, kernel = 8 * heads, (7 if s == 1 else 3) if v2 else (4 if s == 1 else 2)
        size //= 4 if s == 1 else 2  # the patch embeds' strides
        shapes.update({f"patch_embed{s}.proj.weight": (dims, prev, kernel, kernel),
                       f"patch_embed{s}.proj.bias": (dims,),
                       f"patch_embed{s}.norm.weight": (dims,),
                       f"patch_embed{s}.norm.bias": (dims,)})
        if v2:
            shapes.update({f"norm{s}.weight": (dims,), f"norm{s}.bias": (dims,)})
        else:
            shapes[f"pos_embed{s}"] = (1, size * size, dims)
        sr = [8, 4, 2, 1][s - 1]
        for j in range(layers):
            b = f"block{s}.{j}."
            for n in ("norm1", "norm2"):
                shapes.update({f"{b}{n}.weight": (dims,), f"{b}{n}.bias": (dims,)})
            shapes.update({f"{b}attn.q.weight": (dims, dims), f"{b}attn.q.bias": (dims,),
                           f"{b}attn.kv.weight": (2 * dims, dims),
                           f"{b}attn.kv.bias": (2 * dims,),
                           f"{b}attn.proj.weight": (dims, dims), f"{b}attn.proj.bias": (dims,),
                           f"{b}mlp.fc1.weight": (2 * dims, dims), f"{b}mlp.fc1.bias": (2 * dims,),
                           f"{b}mlp.fc2.weight": (dims, 2 * dims), f"{b}mlp.fc2.bias": (dims,)})
            if sr > 1:
                shapes.update({f"{b}attn.sr.weight": (dims, dims, sr, sr),
                               f"{b}attn.sr.bias": (dims,), f"{b}attn.norm.weight": (dims,),
                               f"{b}attn.norm.bias": (dims,)})
            if v2:
                shapes.update({f"{b}mlp.dwconv.dwconv.weight": (2 * dims, 1, 3, 3),
                               f"{b}mlp.dwconv.dwconv.bias": (2 * dims,)})
        prev = dims
    return {k: torch.randn(v, generator=gen) * 0.2 for k, v in shapes.items()}


@pytest.mark.parametrize("cls", [PyramidVisionTransformer, PyramidVisionTransformerV2])
def test_original_weights_convert_and_load_as_in_mmdetection(cls, tmp_path):
    import_mmdet()
    from mmdet.models.utils import pvt_convert

    original = _original_checkpoint(v2=cls is PyramidVisionTransformerV2)
    converted = convert_pvt_weights(original)
    expected = pvt_convert(original)
    # a 224 model's stage-4 embedding carries the class token's position (1 + 7x7)
    original_224 = dict(original, pos_embed4=torch.randn(1, 50, 32))
    assert list(converted) == list(expected)
    if cls is PyramidVisionTransformer:
        torch.testing.assert_close(convert_pvt_weights(original_224)["layers.3.1.0.pos_embed"],
                                   original_224["pos_embed4"][:, 1:])
    for key, value in expected.items():
        torch.testing.assert_close(converted[key], value, msg=key)

    path = tmp_path / "pvt_original.pth"
    torch.save(original, path)
    from mmcv import ConfigDict  # MMDetection reads init_cfg.checkpoint as an attribute

    cfg = dict(SMALL, init_cfg=dict(checkpoint=str(path)))
    reference = _reference(cls.__name__, **dict(cfg, init_cfg=ConfigDict(cfg["init_cfg"])))
    ours = cls(**cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.init_weights()
    ours.init_weights()
    theirs = reference.state_dict()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs[key], msg=key)
    assert set(converted) == set(theirs)  # every parameter came from the checkpoint


def test_options_and_errors():
    with pytest.warns(DeprecationWarning):
        model = PyramidVisionTransformer(**SMALL, pretrained="pvt.pth")
    assert model.init_cfg == dict(type="Pretrained", checkpoint="pvt.pth")
    with pytest.raises(ConfigError, match="not both"):
        PyramidVisionTransformer(pretrained="a.pth", init_cfg=dict(checkpoint="b.pth"))
    with pytest.raises(ConfigError, match="norm_cfg"):
        PyramidVisionTransformer(**SMALL, norm_cfg=dict(type="BN"))
    with pytest.raises(ConfigError, match="one entry per stage"):
        PyramidVisionTransformer(num_layers=[2, 2, 2])
    with pytest.raises(ConfigError, match="out_indices"):
        PyramidVisionTransformer(out_indices=(4,))
    with pytest.raises(ConfigError, match="patch_sizes"):
        PyramidVisionTransformerV2(patch_sizes=[4, 2, 2, 2])

    built = build_model(dict(type="PyramidVisionTransformerV2", **SMALL)).train()
    built(torch.randn(1, 3, 32, 32))[-1].sum().backward()
    assert all(p.grad is not None for p in built.parameters())


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_matches_mmdetection(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()
