"""EfficientNet against MMDetection 2.28's: the same state_dict names, shapes and trainable
parameters, and with its weights loaded strictly the same feature maps (TensorFlow's 'same'
padding on an odd-sized input, EdgeTPU blocks, SE layers), frozen stages and norm_eval."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir, trainable_params
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models.backbones import EfficientNet
from detlab.models.backbones.efficientnet import (
    ARCH_SETTINGS,
    BLOCKS_B,
    BLOCKS_EDGE,
    make_divisible,
    scale_blocks,
)
from detlab.models.utils import Conv2dAdaptivePadding

REPO = Path(__file__).resolve().parents[2]
EFFB3 = "efficientnet/retinanet_effb3_fpn_crop896_8x4_1x_coco.py"


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / EFFB3)
    theirs = Config.fromfile(mmdet_config_dir() / EFFB3)
    assert mine.to_dict() == theirs.to_dict()


def _randomize_norms(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def _pair(**kwargs):
    import_mmdet()
    from mmdet.models.backbones import EfficientNet as MMEfficientNet

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = MMEfficientNet(**kwargs)
    _randomize_norms(reference)
    ours = EfficientNet(**kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("kwargs", [
    dict(arch="b0", out_indices=(4, 5, 6), drop_path_rate=0.2),
    dict(arch="b1", out_indices=(2, 3)),
    dict(arch="es", out_indices=(1, 2, 3)),
    dict(arch="em", out_indices=(2,)),
], ids=["b0-4-5-6", "b1-2-3", "es-1-2-3", "em-2"])
def test_feature_maps_are_mmdetections(kwargs):
    reference, ours = _pair(**kwargs)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in reference.state_dict().items()]
    assert trainable_params(ours) == trainable_params(reference)
    images = torch.randn(2, 3, 69, 47, generator=torch.Generator().manual_seed(1))
    reference.eval()  # MMDetection's train() returns None
    with torch.no_grad():
        expected, actual = reference(images), ours.eval()(images)
    assert len(actual) == len(expected) == len(kwargs["out_indices"])
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert [a.shape[1] for a in actual] == ours.out_channels


def test_training_mode_without_drop_path_is_mmdetections():
    reference, ours = _pair(arch="b0", out_indices=(3,))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reference.train()
    expected, actual = reference(images), ours.train()(images)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-4, atol=1e-4)


def test_layers_past_the_last_output_are_not_built():
    model = EfficientNet(arch="b0", out_indices=(2, 3))
    assert len(model.layers) == 4
    assert model.out_channels == [24, 40]
    assert isinstance(model.layers[2][0].depthwise_conv.conv, Conv2dAdaptivePadding)
    assert len(EfficientNet(arch="b0", out_indices=(6,)).layers) == 7


def test_frozen_stages_and_norm_eval():
    model = EfficientNet(arch="b0", out_indices=(2, 3), frozen_stages=2, norm_eval=True).train()
    for i, layer in enumerate(model.layers):
        assert all(p.requires_grad == (i >= 2) for p in layer.parameters())
        assert all(not m.training for m in layer.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(p.requires_grad for p in model.layers[3].parameters())


def test_drop_path_drops_residual_branches_in_training_only():
    model = EfficientNet(arch="b0", out_indices=(2,), drop_path_rate=0.5)
    rates = [block.drop_path.p for block in model.layers[2] if hasattr(block.drop_path, "p")]
    assert rates and all(0 < r <= 0.5 for r in rates)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(images)[0], model(images)[0])


def test_adaptive_padding_gives_ceil_sizes():
    conv = Conv2dAdaptivePadding(3, 4, 5, stride=2)
    assert conv(torch.randn(1, 3, 11, 8)).shape[-2:] == (6, 4)


@pytest.mark.parametrize("arch", sorted(ARCH_SETTINGS))
def test_block_tables_are_mmdetections(arch):
    import_mmdet()
    from mmdet.models.backbones.efficientnet import EfficientNet as MMEfficientNet
    from mmdet.models.backbones.efficientnet import model_scaling

    blocks = BLOCKS_B if arch.startswith("b") else BLOCKS_EDGE
    expected = model_scaling(MMEfficientNet.layer_settings[arch[0]],
                             MMEfficientNet.arch_settings[arch])
    assert scale_blocks(blocks, *ARCH_SETTINGS[arch][:2]) == expected
    assert make_divisible(32 * 1.2) == 40


def test_configuration_errors():
    with pytest.raises(ConfigError, match="arch"):
        EfficientNet(arch="b9")
    with pytest.raises(ConfigError, match="out_indices"):
        EfficientNet(out_indices=(7,))
    with pytest.raises(ConfigError, match="frozen_stages"):
        EfficientNet(frozen_stages=8)
