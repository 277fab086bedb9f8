"""Weight-standardized convolution (Qiao et al., 2019), mmcv's ``ConvWS2d``
(``conv_cfg=dict(type='ConvWS')``): the MMDetection ``gn+ws`` configs pair it with GroupNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvWS2d(nn.Conv2d):
    """A ``Conv2d`` whose kernel is standardized per output channel at every call: each
    filter has its mean subtracted and is divided by its (unbiased) standard deviation plus
    ``eps``. The stored ``weight`` stays raw, as in mmcv (checkpoints load unchanged)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True,
                 eps: float = 1e-5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The kernel the convolution uses: per filter, ``(w - mean) / (std + eps)``."""
        flat = self.weight.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).view(-1, 1, 1, 1)
        return (self.weight - mean) / (std + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"
