"""HRNet (Wang et al., "High-Resolution Representations for Labeling Pixels and Regions", 2019)
as MMDetection 2.28 builds it.

A stem of two stride-2 3x3 convs (``conv1``/``bn1``, ``conv2``/``bn2``) and a ResNet stage
(``layer1``) feed four stages; from stage 2 on, the network keeps parallel branches of
decreasing resolution (stride 4, 8, 16, 32). ``transition<i>`` adapts the previous stage's
branches to the next one (a 3x3 conv where the width changes, a chain of stride-2 3x3 convs for
a new branch, from the lowest-resolution one); each stage is a sequence of :class:`HRModule`
whose ``branches`` run residual blocks and whose ``fuse_layers`` exchange information between
every pair of resolutions (1x1 conv + nearest upsampling from lower resolutions, stride-2 3x3
convs from higher ones). Parameter names are MMDetection's, so ``open-mmlab://msra/hrnetv2_w32``
and MMDetection's HRNet checkpoints load strictly.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, Bottleneck

from detlab.config import ConfigError
from detlab.models.backbones.resnet import make_block, rename_norm_keys
from detlab.models.init import default_resnet_init, initialize, is_pretrained
from detlab.models.utils import (
    FrozenStagesMixin,
    build_conv_layer,
    build_norm_layer,
    frozen,
    thaw,
)
from detlab.registry import MODELS

BLOCKS: dict[str, type[nn.Module]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}
STAGE_KEYS = ("num_modules", "num_branches", "block", "num_blocks", "num_channels")


def _conv_norm(conv_cfg: Mapping | None, norm_cfg: Mapping, in_channels: int,
               out_channels: int, kernel_size: int, stride: int, relu: bool,
               upsample: int = 1) -> nn.Sequential:
    """conv (no bias) + norm [+ ReLU] [+ nearest upsampling]: indices 0, 1, 2 as MMDetection."""
    layers = [build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size=kernel_size,
                               stride=stride, padding=kernel_size // 2, bias=False),
              build_norm_layer(norm_cfg, out_channels)[1]]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="nearest"))
    return nn.Sequential(*layers)


def _res_layer(block: type[nn.Module], inplanes: int, planes: int, num_blocks: int,
               conv_cfg: Mapping | None, norm_cfg: Mapping) -> nn.Sequential:
    """``num_blocks`` residual blocks at stride 1; the first projects (1x1 conv + norm) when the
    width changes."""
    out_channels = planes * block.expansion
    downsample = None
    if inplanes != out_channels:
        downsample = nn.Sequential(
            build_conv_layer(conv_cfg, inplanes, out_channels, kernel_size=1, bias=False),
            build_norm_layer(norm_cfg, out_channels)[1])
    blocks = [make_block(block, inplanes, planes, 1, 1, "pytorch", norm_cfg, downsample,
                         conv_cfg=conv_cfg)]
    blocks += [make_block(block, out_channels, planes, 1, 1, "pytorch", norm_cfg, None,
                          conv_cfg=conv_cfg) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def _run_blocks(layer: nn.Sequential, x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    for block in layer:
        x = checkpoint(block, x, use_reentrant=False) if with_cp and x.requires_grad \
            else block(x)
    return x


class HRModule(nn.Module):
    """One multi-resolution module: ``branches[i]`` (residual blocks at resolution ``i``), then
    ``fuse_layers[i][j]`` bringing branch ``j`` to branch ``i``'s resolution and width (None on
    the diagonal); output ``i`` is ReLU of the sum over ``j``. With ``multiscale_output=False``
    only the highest-resolution output is fused (and returned)."""

    def __init__(self, block: type[nn.Module], num_blocks: Sequence[int],
                 in_channels: Sequence[int], num_channels: Sequence[int],
                 multiscale_output: bool, with_cp: bool, conv_cfg: Mapping | None,
                 norm_cfg: Mapping) -> None:
        super().__init__()
        self.num_branches, self.with_cp = len(num_channels), with_cp
        self.branches = nn.ModuleList(
            _res_layer(block, in_channels[i], num_channels[i], num_blocks[i], conv_cfg,
                       norm_cfg) for i in range(self.num_branches))
        self.out_channels = [c * block.expansion for c in num_channels]
        self.fuse_layers = None
        if self.num_branches > 1:
            ch = self.out_channels
            self.fuse_layers = nn.ModuleList()
            for i in range(self.num_branches if multiscale_output else 1):
                fuse = nn.ModuleList()
                for j in range(self.num_branches):
                    if j > i:
                        fuse.append(_conv_norm(conv_cfg, norm_cfg, ch[j], ch[i], 1, 1, False,
                                               upsample=2**(j - i)))
                    elif j == i:
                        fuse.append(None)
                    else:  # i - j stride-2 convs; the last one changes the width, no ReLU
                        fuse.append(nn.Sequential(*(
                            _conv_norm(conv_cfg, norm_cfg, ch[j], ch[i] if k == i - j - 1
                                       else ch[j], 3, 2, relu=k != i - j - 1)
                            for k in range(i - j))))
                self.fuse_layers.append(fuse)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """One map per branch -> one map per branch (or only the first)."""
        x = [_run_blocks(branch, xi, self.with_cp and self.training)
             for branch, xi in zip(self.branches, x, strict=True)]
        if self.fuse_layers is None:
            return x
        outs = []
        for i, fuse in enumerate(self.fuse_layers):
            y = 0  # summed in branch order, as MMDetection
            for j in range(self.num_branches):
                y = y + (x[j] if j == i else fuse[j](x[j]))
            outs.append(self.relu(y))
        return outs


def _check_extra(extra: Mapping) -> None:
    if not isinstance(extra, Mapping):
        raise ConfigError(f"backbone.extra must be dict(stage1=..., stage2=..., stage3=..., "
                          f"stage4=...), got {extra!r}")
    for s in range(1, 5):
        key = f"stage{s}"
        if key not in extra:
            raise ConfigError(f"backbone.extra.{key} is missing: HRNet needs stage1..stage4, "
                              f"each dict({', '.join(k + '=...' for k in STAGE_KEYS)})")
        cfg = extra[key]
        missing = [k for k in STAGE_KEYS if k not in cfg]
        if missing:
            raise ConfigError(f"backbone.extra.{key} lacks {', '.join(missing)}")
        if cfg["block"] not in BLOCKS:
            raise ConfigError(f"backbone.extra.{key}.block must be 'BASIC' or 'BOTTLENECK', "
                              f"got {cfg['block']!r}")
        n = cfg["num_branches"]
        if len(cfg["num_blocks"]) != n or len(cfg["num_channels"]) != n:
            raise ConfigError(f"backbone.extra.{key}: num_blocks {tuple(cfg['num_blocks'])} and "
                              f"num_channels {tuple(cfg['num_channels'])} need num_branches "
                              f"({n}) entries each")
    if extra["stage1"]["num_branches"] != 1:
        raise ConfigError("backbone.extra.stage1.num_branches must be 1 (stage 1 is a single "
                          "ResNet layer)")


@MODELS.register_module()
class HRNet(FrozenStagesMixin, nn.Module):
    """HRNet backbone (see the module docstring); returns one map per stage-4 branch, branch
    ``i`` at stride ``4 * 2**i`` with ``stage4.num_channels[i] * expansion`` channels.

    Args:
        extra: ``dict(stage1=..., stage2=..., stage3=..., stage4=...)``, each
            ``dict(num_modules, num_branches, block='BASIC' | 'BOTTLENECK', num_blocks,
            num_channels)`` (``num_blocks`` / ``num_channels`` one entry per branch); stage 1
            has one branch (``layer1``).
        in_channels: channels of the input image.
        conv_cfg, norm_cfg: every conv's and norm's config (MMDetection's default: BN).
        norm_eval: keep BatchNorm layers on their running statistics while training.
        with_cp: gradient checkpointing of the residual blocks (less memory, more compute).
        zero_init_residual: zero the last norm of every residual block in the default init
            (MMDetection 2.28 accepts the flag but its init never applies it).
        multiscale_output: False returns only the highest-resolution map of stage 4.
        init_cfg: e.g. ``dict(type='Pretrained', checkpoint='open-mmlab://msra/hrnetv2_w32')``;
            None is He init for convs, 1 / 0 for norms.
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    MMDetection 2.28's HRNet has no ``frozen_stages``; neither has this one.
    """

    def __init__(self, extra: Mapping, in_channels: int = 3, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = frozen(type="BN"), norm_eval: bool = True,
                 with_cp: bool = False, zero_init_residual: bool = False,
                 multiscale_output: bool = True,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        _check_extra(extra)
        if pretrained is not None:
            if init_cfg is not None:
                raise ConfigError("HRNet: set init_cfg or pretrained, not both (pretrained is "
                                  "deprecated: use init_cfg=dict(type='Pretrained', "
                                  "checkpoint=...))")
            warnings.warn("HRNet(pretrained=...) is deprecated, use init_cfg=dict("
                          "type='Pretrained', checkpoint=...)", DeprecationWarning, stacklevel=2)
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.extra, self.init_cfg = thaw(extra), thaw(init_cfg)
        self.conv_cfg, self.norm_cfg = thaw(conv_cfg), thaw(norm_cfg)
        self.norm_eval, self.with_cp = norm_eval, with_cp
        self.zero_init_residual, self.multiscale_output = zero_init_residual, multiscale_output
        self.conv1 = build_conv_layer(conv_cfg, in_channels, 64, kernel_size=3, stride=2,
                                      padding=1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, 64)[1]
        self.conv2 = build_conv_layer(conv_cfg, 64, 64, kernel_size=3, stride=2, padding=1,
                                      bias=False)
        self.bn2 = build_norm_layer(norm_cfg, 64)[1]
        self.relu = nn.ReLU(inplace=True)
        stage1 = self.extra["stage1"]
        block = BLOCKS[stage1["block"]]
        self.layer1 = _res_layer(block, 64, stage1["num_channels"][0],
                                 stage1["num_blocks"][0], conv_cfg, norm_cfg)
        channels = [stage1["num_channels"][0] * block.expansion]
        for s in (2, 3, 4):
            cfg = self.extra[f"stage{s}"]
            block = BLOCKS[cfg["block"]]
            wanted = [c * block.expansion for c in cfg["num_channels"]]
            self.add_module(f"transition{s - 1}", self._transition(channels, wanted))
            modules = []
            for m in range(cfg["num_modules"]):
                last = s == 4 and m == cfg["num_modules"] - 1
                module = HRModule(block, cfg["num_blocks"], wanted, cfg["num_channels"],
                                  multiscale_output or not last, with_cp, conv_cfg, norm_cfg)
                modules.append(module)
            self.add_module(f"stage{s}", nn.Sequential(*modules))
            # MMDetection passes the expanded widths on as the next stage's inputs
            channels = wanted
        self.out_channels = channels if multiscale_output else channels[:1]
        self._norm_prefix = build_norm_layer(norm_cfg, 64)[0]
        if self._norm_prefix != "bn":  # MMDetection's names (gn1 ...) in the state_dict
            self._register_state_dict_hook(self._state_dict_norm_names)
            self._register_load_state_dict_pre_hook(self._load_norm_names)
        self._default_init()

    def _transition(self, previous: list[int], wanted: list[int]) -> nn.ModuleList:
        """Existing branches: a 3x3 conv + norm + ReLU where the width changes (None
        otherwise); each new branch: stride-2 3x3 convs from the last previous branch."""
        layers = nn.ModuleList()
        for i, out in enumerate(wanted):
            if i < len(previous):
                layers.append(None if out == previous[i] else nn.Sequential(
                    *_conv_norm(self.conv_cfg, self.norm_cfg, previous[i], out, 3, 1, True)))
            else:
                steps = i + 1 - len(previous)
                layers.append(nn.Sequential(*(
                    _conv_norm(self.conv_cfg, self.norm_cfg, previous[-1],
                               out if k == steps - 1 else previous[-1], 3, 2, True)
                    for k in range(steps))))
        return layers

    def _default_init(self) -> None:
        default_resnet_init(self)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                    nn.init.zeros_(last.weight)
                    nn.init.zeros_(last.bias)

    def init_weights(self) -> None:
        """Apply ``init_cfg``: load pretrained weights, or the default He init when None."""
        if self.init_cfg is None:
            self._default_init()
        else:
            if is_pretrained(self.init_cfg):
                self._default_init()
            initialize(self, self.init_cfg)

    def _state_dict_norm_names(self, module: nn.Module, state_dict: dict, prefix: str,
                               local_metadata: dict) -> None:
        rename_norm_keys(state_dict, prefix, "bn", self._norm_prefix)

    def _load_norm_names(self, state_dict: dict, prefix: str, *args: object) -> None:
        rename_norm_keys(state_dict, prefix, self._norm_prefix, "bn")

    @property
    def norm1(self) -> nn.Module:
        """The first stem norm under MMDetection's attribute name."""
        return self.bn1

    @property
    def norm2(self) -> nn.Module:
        """The second stem norm under MMDetection's attribute name."""
        return self.bn2

    def _freeze_stages(self) -> None:
        """Nothing is frozen (MMDetection 2.28's HRNet has no ``frozen_stages``)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_channels, H, W)`` -> one map per stage-4 branch (only the first with
        ``multiscale_output=False``), branch ``i`` at ``H / 2**(i+2)``."""
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        xs = [_run_blocks(self.layer1, x, self.with_cp and self.training)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            # a new branch grows from the lowest-resolution output; MMDetection also feeds
            # that one to a width-changing transition of an existing branch (only stage 2's
            # single branch has one in its configs, where both readings agree)
            inputs = [xs[i] if layer is None else layer(xs[-1])
                      for i, layer in enumerate(transition)]
            xs = getattr(self, f"stage{s}")(inputs)
        return xs
