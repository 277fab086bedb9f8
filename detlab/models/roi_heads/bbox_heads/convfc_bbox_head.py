"""Box heads with shared convs / fcs and optional separate classification and regression
branches (MMDetection 2.28's ``ConvFCBBoxHead``, ``Shared2FCBBoxHead``,
``Shared4Conv1FCBBoxHead``)::

                                /-> cls convs -> cls fcs -> fc_cls
    shared convs -> shared fcs
                                \\-> reg convs -> reg fcs -> fc_reg
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.roi_heads.bbox_heads.bbox_head import BBoxHead, build_linear_layer
from detlab.models.utils import ConvModule
from detlab.registry import MODELS


@MODELS.register_module()
class ConvFCBBoxHead(BBoxHead):
    """A box head with ``num_shared_convs`` 3x3 convs and ``num_shared_fcs`` fcs shared by
    both branches, then per-branch convs and fcs (ReLU after every fc).

    Args:
        num_shared_convs, num_shared_fcs: the shared layers.
        num_cls_convs, num_cls_fcs, num_reg_convs, num_reg_fcs: each branch's layers (branch
            convs need ``num_shared_fcs == 0``).
        conv_out_channels: channels of every conv.
        fc_out_channels: width of every fc.
        conv_cfg, norm_cfg: the convs' layer and norm configs.
        init_cfg: default: BBoxHead's, plus Xavier (uniform) for every fc branch.
        **kwargs: :class:`BBoxHead`'s arguments.
    """

    def __init__(self, num_shared_convs: int = 0, num_shared_fcs: int = 0,
                 num_cls_convs: int = 0, num_cls_fcs: int = 0, num_reg_convs: int = 0,
                 num_reg_fcs: int = 0, conv_out_channels: int = 256,
                 fc_out_channels: int = 1024, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None, **kwargs: Any) -> None:
        super().__init__(init_cfg=init_cfg, **kwargs)
        counts = (num_shared_convs, num_shared_fcs, num_cls_convs, num_cls_fcs, num_reg_convs,
                  num_reg_fcs)
        if sum(counts) <= 0:
            raise ConfigError("ConvFCBBoxHead needs at least one conv or fc (num_shared_convs, "
                              "num_shared_fcs, num_cls_convs ...)")
        if (num_cls_convs > 0 or num_reg_convs > 0) and num_shared_fcs != 0:
            raise ConfigError("ConvFCBBoxHead: branch convs (num_cls_convs / num_reg_convs) "
                              "cannot follow shared fcs; set num_shared_fcs=0")
        if not self.with_cls and (num_cls_convs or num_cls_fcs):
            raise ConfigError("ConvFCBBoxHead with with_cls=False takes no cls convs / fcs")
        if not self.with_reg and (num_reg_convs or num_reg_fcs):
            raise ConfigError("ConvFCBBoxHead with with_reg=False takes no reg convs / fcs")
        (self.num_shared_convs, self.num_shared_fcs, self.num_cls_convs, self.num_cls_fcs,
         self.num_reg_convs, self.num_reg_fcs) = counts
        self.conv_out_channels, self.fc_out_channels = conv_out_channels, fc_out_channels
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg

        self.shared_convs, self.shared_fcs, last = self._add_conv_fc_branch(
            num_shared_convs, num_shared_fcs, self.in_channels, True)
        self.shared_out_channels = last
        self.cls_convs, self.cls_fcs, self.cls_last_dim = self._add_conv_fc_branch(
            num_cls_convs, num_cls_fcs, last)
        self.reg_convs, self.reg_fcs, self.reg_last_dim = self._add_conv_fc_branch(
            num_reg_convs, num_reg_fcs, last)
        if num_shared_fcs == 0 and not self.with_avg_pool:
            if num_cls_fcs == 0:
                self.cls_last_dim *= self.roi_feat_area
            if num_reg_fcs == 0:
                self.reg_last_dim *= self.roi_feat_area
        self.relu = nn.ReLU(inplace=True)
        # the predictors again, now on the branches' outputs
        if self.with_cls:
            self.fc_cls = build_linear_layer(self.cls_predictor_cfg, self.cls_last_dim,
                                             self.cls_channels, "cls_predictor_cfg")
        if self.with_reg:
            self.fc_reg = build_linear_layer(
                self.reg_predictor_cfg, self.reg_last_dim,
                4 if self.reg_class_agnostic else 4 * self.num_classes, "reg_predictor_cfg")
        if init_cfg is None:
            self.init_cfg = [*self.init_cfg, dict(
                type="Xavier", distribution="uniform",
                override=[dict(name="shared_fcs"), dict(name="cls_fcs"),
                          dict(name="reg_fcs")])]
        initialize(self, self.init_cfg, load_pretrained=False)

    def _add_conv_fc_branch(self, num_convs: int, num_fcs: int, in_channels: int,
                            is_shared: bool = False
                            ) -> tuple[nn.ModuleList, nn.ModuleList, int]:
        """convs -> (flatten) -> fcs of one branch, and its output width."""
        last = in_channels
        convs = nn.ModuleList()
        for i in range(num_convs):
            convs.append(ConvModule(last if i == 0 else self.conv_out_channels,
                                    self.conv_out_channels, 3, padding=1,
                                    conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg))
        if num_convs > 0:
            last = self.conv_out_channels
        fcs = nn.ModuleList()
        if num_fcs > 0:
            if (is_shared or self.num_shared_fcs == 0) and not self.with_avg_pool:
                last *= self.roi_feat_area
            for i in range(num_fcs):
                fcs.append(nn.Linear(last if i == 0 else self.fc_out_channels,
                                     self.fc_out_channels))
            last = self.fc_out_channels
        return convs, fcs, last

    def _branch(self, x: torch.Tensor, convs: nn.ModuleList, fcs: nn.ModuleList
                ) -> torch.Tensor:
        for conv in convs:
            x = conv(x)
        if x.dim() > 2:
            if self.with_avg_pool:
                x = self.avg_pool(x)
            x = x.flatten(1)
        for fc in fcs:
            x = self.relu(fc(x))
        return x

    def shared_features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared convs and fcs: the input of the class and box branches."""
        for conv in self.shared_convs:
            x = conv(x)
        if self.num_shared_fcs > 0:
            if self.with_avg_pool:
                x = self.avg_pool(x)
            x = x.flatten(1)
            for fc in self.shared_fcs:
                x = self.relu(fc(x))
        return x

    def predict_from_shared(self, x: torch.Tensor
                            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The class and box branches on the shared features -> logits and box deltas."""
        x_cls = self._branch(x, self.cls_convs, self.cls_fcs)
        x_reg = self._branch(x, self.reg_convs, self.reg_fcs)
        cls_score = self.fc_cls(x_cls) if self.with_cls else None
        bbox_pred = self.fc_reg(x_reg) if self.with_reg else None
        return cls_score, bbox_pred

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(K, in_channels, h, w)`` RoI features -> class logits and box deltas."""
        return self.predict_from_shared(self.shared_features(x))


@MODELS.register_module()
class Shared2FCBBoxHead(ConvFCBBoxHead):
    """Two shared fcs of ``fc_out_channels`` (Faster R-CNN's box head; torchvision's
    ``TwoMLPHead`` + ``FastRCNNPredictor``). Other arguments: :class:`ConvFCBBoxHead`'s."""

    def __init__(self, fc_out_channels: int = 1024, **kwargs: Any) -> None:
        super().__init__(num_shared_convs=0, num_shared_fcs=2, num_cls_convs=0, num_cls_fcs=0,
                         num_reg_convs=0, num_reg_fcs=0, fc_out_channels=fc_out_channels,
                         **kwargs)


@MODELS.register_module()
class Shared4Conv1FCBBoxHead(ConvFCBBoxHead):
    """Four shared 3x3 convs and one shared fc (the GN heads' box head). Other arguments:
    :class:`ConvFCBBoxHead`'s."""

    def __init__(self, fc_out_channels: int = 1024, **kwargs: Any) -> None:
        super().__init__(num_shared_convs=4, num_shared_fcs=1, num_cls_convs=0, num_cls_fcs=0,
                         num_reg_convs=0, num_reg_fcs=0, fc_out_channels=fc_out_channels,
                         **kwargs)
