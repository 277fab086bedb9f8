"""TridentNet's backbone (Li et al., 2019; MMDetection 2.28's ``TridentResNet``): a caffe- or
pytorch-style ResNet of three stages whose last stage runs as ``num_branch`` branches that
share every weight, the 3x3 convs of branch ``b`` dilated (and padded) by
``trident_dilations[b]`` -- one set of weights, several receptive fields.

The stage's first block copies its input to each branch; the last block stacks the branches'
outputs along the batch dimension, branch-major: ``(num_branch * B, C, H, W)``, the maps of
all images of branch 0 first. The detector repeats its metas and ground truth as many times
(:class:`~detlab.models.detectors.trident_faster_rcnn.TridentFasterRCNN`). At test time only
branch ``test_branch_idx`` runs (all of them with -1). Parameter names are ResNet's
(``layer3.0.conv2.weight`` is the shared 3x3 weight), so MMDetection's checkpoints load
strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision.models.resnet import Bottleneck

from detlab.config import ConfigError
from detlab.models.backbones.resnet import BN, ResNet, make_res_layer
from detlab.registry import MODELS


class TridentBottleneck(Bottleneck):
    """torchvision's Bottleneck run once per branch: a tensor in (the first block of the
    stage) is copied to every branch, a list of branch maps in gives one out per branch; the
    3x3 ``conv2`` weight is shared, branch ``b`` dilated by ``trident_dilations[b]``; with
    ``concat_output`` (the stage's last block) the branches come out stacked on the batch
    dimension."""

    trident_dilations: tuple[int, ...]
    test_branch_idx: int
    concat_output: bool

    @property
    def num_branch(self) -> int:
        return len(self.trident_dilations)

    def _branch_dilations(self) -> tuple[int, ...]:
        if self.training or self.test_branch_idx == -1:
            return self.trident_dilations
        return (self.trident_dilations[self.test_branch_idx],)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        dilations = self._branch_dilations()
        if isinstance(x, torch.Tensor):
            x = [x] * len(dilations)
            identity = x if self.downsample is None else [self.downsample(b) for b in x]
        else:
            if len(x) != len(dilations):
                raise ValueError(f"TridentBottleneck got {len(x)} branches, expected "
                                 f"{len(dilations)} (training={self.training}, "
                                 f"test_branch_idx={self.test_branch_idx})")
            identity = x
        out = [self.relu(self.bn1(self.conv1(b))) for b in x]
        conv = self.conv2
        out = [F.conv2d(b, conv.weight, conv.bias, conv.stride, d, d, conv.groups)
               for b, d in zip(out, dilations, strict=True)]
        out = [self.relu(self.bn2(b)) for b in out]
        out = [self.bn3(self.conv3(b)) + i for b, i in zip(out, identity, strict=True)]
        out = [self.relu(b) for b in out]
        return torch.cat(out, dim=0) if self.concat_output else out


@MODELS.register_module()
class TridentResNet(ResNet):
    """A three-stage ResNet whose last stage is trident (see the module docstring).

    Args:
        depth: 50, 101 or 152 (Bottleneck blocks).
        num_branch: branches of the last stage; ``len(trident_dilations)``.
        test_branch_idx: the branch run at test time, or -1 for all of them.
        trident_dilations: the dilation of each branch's 3x3 convs, e.g. ``(1, 2, 3)``.
        **kwargs: :class:`~detlab.models.backbones.resnet.ResNet`'s (``num_stages`` must be
            3; ``dcn`` / ``plugins`` in the last stage are not supported).
    """

    def __init__(self, depth: int, num_branch: int, test_branch_idx: int,
                 trident_dilations: Sequence[int], **kwargs) -> None:
        trident_dilations = tuple(int(d) for d in trident_dilations)
        if num_branch != len(trident_dilations):
            raise ConfigError(f"TridentResNet num_branch ({num_branch}) must equal the number "
                              f"of trident_dilations {trident_dilations}")
        if depth not in (50, 101, 152):
            raise ConfigError(f"TridentResNet depth must be 50, 101 or 152 (Bottleneck "
                              f"blocks), got {depth!r}")
        if not -1 <= test_branch_idx < num_branch:
            raise ConfigError(f"TridentResNet test_branch_idx must be -1 (all branches) or a "
                              f"branch index below {num_branch}, got {test_branch_idx!r}")
        super().__init__(depth, **kwargs)
        if self.num_stages != 3:
            raise ConfigError(f"TridentResNet needs num_stages=3 (its last stage is the "
                              f"trident one), got {self.num_stages}")
        last = self.num_stages - 1
        if self.dcn is not None and self.stage_with_dcn[last]:
            raise ConfigError("TridentResNet: dcn in the trident stage is not supported; set "
                              "stage_with_dcn's last entry to False")
        if self.plugins and any(p.get("stages") is None or p["stages"][last]
                                for p in self.plugins):
            raise ConfigError("TridentResNet: plugins in the trident stage are not supported; "
                              "give them stages= without the last stage")
        self.num_branch, self.test_branch_idx = num_branch, test_branch_idx
        self.trident_dilations = trident_dilations
        norm_cfg: Mapping = kwargs.get("norm_cfg", BN)
        strides = kwargs.get("strides", (1, 2, 2, 2))
        planes = 64 * 2 ** last
        blocks = getattr(self, f"layer{last + 1}")
        layer = make_res_layer(Bottleneck, self.stage_channels[last - 1], planes, len(blocks),
                               strides[last], 1, self.style, norm_cfg,
                               conv_cfg=self.conv_cfg)
        for index, block in enumerate(layer):
            block.__class__ = TridentBottleneck
            block.trident_dilations = trident_dilations
            block.test_branch_idx = test_branch_idx
            block.concat_output = index == len(layer) - 1
        self.add_module(f"layer{last + 1}", layer)
        self._default_init()
        self._freeze_stages()
