"""ResNet: torchvision equivalence, MMDetection's options, and pretrained weights (offline)."""

import logging
import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from detlab.config import ConfigError
from detlab.models import ResNet
from detlab.models.init import CheckpointLoadError, torchvision_weights_url
from detlab.registry import MODELS


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)


def _torchvision_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("depth", [18, 50])
def test_same_features_as_torchvision(depth):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")()
    _randomize_bn(reference)
    ours = ResNet(depth=depth)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert set(state) == set(ours.state_dict())  # torchvision's names, fc dropped
    ours.load_state_dict(state, strict=True)
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = _torchvision_features(reference, x), ours(x)
    assert len(got) == 4
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_out_channels_and_strides():
    model = ResNet(depth=50, out_indices=(1, 3)).eval()
    assert model.out_channels == [512, 2048]
    outs = model(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 8, 8), (1, 2048, 2, 2)]
    shallow = ResNet(depth=18, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                     out_indices=(2,)).eval()
    assert not hasattr(shallow, "layer4")
    assert shallow(torch.zeros(1, 3, 64, 64))[0].shape == (1, 256, 4, 4)


@pytest.mark.parametrize("depth", [18, 50])
def test_dilated_last_stage_keeps_resolution(depth):
    model = ResNet(depth=depth, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)).eval()
    outs = model(torch.zeros(1, 3, 64, 64))
    assert outs[3].shape[-2:] == outs[2].shape[-2:] == (4, 4)
    first = model.layer4[0]
    conv = first.conv2 if depth == 50 else first.conv1
    assert conv.dilation == (2, 2) and conv.padding == (2, 2)


def test_frozen_stages_and_norm_eval():
    model = ResNet(depth=18, frozen_stages=1, norm_eval=True)
    frozen = [model.conv1, model.bn1, model.layer1]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    model.train()
    assert all(not m.training for module in frozen for m in module.modules())
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.layer2[0].conv1.training  # convs of unfrozen stages train

    unfrozen = ResNet(depth=18, frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in unfrozen.parameters())
    assert all(m.training for m in unfrozen.modules() if isinstance(m, nn.BatchNorm2d))

    stem_only = ResNet(depth=18, frozen_stages=0).train()
    assert not stem_only.conv1.weight.requires_grad and not stem_only.conv1.training
    assert stem_only.layer1[0].conv1.weight.requires_grad


def test_norm_eval_keeps_running_stats():
    model = ResNet(depth=18, frozen_stages=-1, norm_eval=True).train()
    before = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.layer2[0].bn1.running_mean, before)


def test_group_norm_and_requires_grad():
    model = ResNet(depth=50, norm_cfg=dict(type="GN", num_groups=32, requires_grad=True))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.num_groups == 32 for m in norms)
    assert model(torch.randn(1, 3, 64, 64))[-1].shape == (1, 2048, 2, 2)

    fixed = ResNet(depth=18, norm_cfg=dict(type="BN", requires_grad=False))
    assert not fixed.layer3[0].bn1.weight.requires_grad
    assert fixed.layer3[0].conv1.weight.requires_grad
    sync = ResNet(depth=18, norm_cfg=dict(type="SyncBN"))
    assert type(sync.bn1) is nn.BatchNorm2d  # a single process has nothing to synchronize

    with pytest.raises(ConfigError, match="num_groups"):
        ResNet(depth=18, norm_cfg=dict(type="GN"))
    with pytest.raises(ConfigError, match="not supported"):
        ResNet(depth=18, norm_cfg=dict(type="BatchNorm"))


def test_caffe_style_puts_stride_on_first_conv():
    pytorch = ResNet(depth=50, style="pytorch")
    caffe = ResNet(depth=50, style="caffe")
    assert pytorch.layer2[0].conv1.stride == (1, 1) and pytorch.layer2[0].conv2.stride == (2, 2)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert caffe.layer2[0].downsample[0].stride == (2, 2)
    assert caffe.layer2[1].conv1.stride == (1, 1)
    x = torch.randn(1, 3, 32, 32)
    shapes = [o.shape for o in caffe.eval()(x)]
    assert shapes == [o.shape for o in pytorch.eval()(x)]


def test_default_init_zeroes_last_norm_of_each_block():
    model = ResNet(depth=50)
    assert torch.all(model.layer1[0].bn3.weight == 0)
    assert torch.all(model.layer1[0].bn1.weight == 1)
    basic = ResNet(depth=18, zero_init_residual=False)
    assert torch.all(basic.layer1[0].bn2.weight == 1)
    model.layer1[0].bn3.weight.data.fill_(3.0)
    model.init_weights()
    assert torch.all(model.layer1[0].bn3.weight == 0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = ResNet(depth=18, frozen_stages=-1)
    checkpointed = ResNet(depth=18, frozen_stages=-1, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 32, 32)
    for model in (plain, checkpointed):
        model.train()
        sum(o.sum() for o in model(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=42), "depth must be one of"),
    (dict(depth=18, out_indices=(4,)), "out_indices"),
    (dict(depth=18, style="keras"), "style"),
    (dict(depth=18, strides=(1, 2)), "one entry per stage"),
    (dict(depth=18, frozen_stages=5), "frozen_stages"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ResNet(**kwargs)


def test_build_from_config_names_unknown_keys():
    with pytest.raises(ConfigError, match="norm_evall"):
        MODELS.build(dict(type="ResNet", depth=18, norm_evall=True))


# ---- pretrained weights, offline -----------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A private torch.hub cache, and downloads that fail instead of reaching the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # let TORCH_HOME decide

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_torchvision_url_resolution():
    assert torchvision_weights_url("resnet50") == \
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert torchvision_weights_url("resnet50.imagenet1k_v2") == \
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    assert torchvision_weights_url("ResNet18_Weights.IMAGENET1K_V1") == \
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    with pytest.raises(ConfigError, match="resnet50"):
        torchvision_weights_url("resnet05")


def test_torchvision_weights_load_from_cache_in_init_weights(offline_hub, caplog):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    url = torchvision_weights_url("resnet18")
    offline_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), offline_hub / os.path.basename(url))

    model = ResNet(depth=18, init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet18"))
    assert not torch.equal(model.conv1.weight, reference.conv1.weight)  # nothing loaded yet
    with caplog.at_level(logging.INFO, logger="detlab"):
        model.init_weights()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], msg=name)
    assert "fc.weight" in caplog.text and "expected" in caplog.text


def test_failed_download_names_url_and_local_file_option(offline_hub):
    model = ResNet(depth=18, init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet18"))
    with pytest.raises(CheckpointLoadError) as info:
        model.init_weights()
    message = str(info.value)
    assert torchvision_weights_url("resnet18") in message
    assert "init_cfg.checkpoint=" in message


def test_local_checkpoint_with_prefix_and_missing_keys(tmp_path):
    torch.manual_seed(0)
    source = ResNet(depth=18)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items() if "layer4" not in k}
    path = tmp_path / "detector.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    model = ResNet(depth=18, init_cfg=dict(type="Pretrained", checkpoint=str(path),
                                           prefix="backbone."))
    with pytest.warns(UserWarning, match="missing in the checkpoint.*layer4"):
        model.init_weights()
    torch.testing.assert_close(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    with pytest.raises(CheckpointLoadError, match="does not exist"):
        ResNet(depth=18, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "x.pth"))
               ).init_weights()


def test_deprecated_pretrained_argument():
    with pytest.warns(DeprecationWarning):
        model = ResNet(depth=18, pretrained="torchvision://resnet18")
    assert model.init_cfg == dict(type="Pretrained", checkpoint="torchvision://resnet18")
    with pytest.raises(ConfigError, match="not both"):
        ResNet(depth=18, pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b"))
