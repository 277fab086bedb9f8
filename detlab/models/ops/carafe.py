"""CARAFE: content-aware reassembly of features (Wang et al., 2019), the upsampler of
``FPN_CARAFE``, in plain PyTorch (mmcv computes it with a compiled op; the parameter names
here are mmcv's ``CARAFEPack``'s so its checkpoints load).

Every output pixel ``(h, w)`` of the ``scale_factor`` times larger map is a weighted sum of the
``up_kernel x up_kernel`` input neighbourhood around its source pixel ``(h // s, w // s)``
(zero outside the map), with weights predicted per output pixel (and per channel group) from
the input's content and softmax-normalized over the neighbourhood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError


def carafe(features: torch.Tensor, masks: torch.Tensor, kernel_size: int, group_size: int,
           scale_factor: int) -> torch.Tensor:
    """Reassemble ``features (N, C, H, W)`` with ``masks (N, G * k * k, s H, s W)`` into
    ``(N, C, s H, s W)``; channel group ``g`` (``C / G`` channels each) uses mask channels
    ``g * k * k + ky * k + kx``.

    The neighbourhoods come from one ``unfold`` at the input's size; the weighted sum is one
    batched contraction over the ``k * k`` neighbours per input pixel and sub-pixel position,
    so the upsampled neighbourhoods are never materialized.
    """
    n, c, h, w = features.shape
    k, s, g = kernel_size, scale_factor, group_size
    if k % 2 == 0:
        raise ConfigError(f"CARAFE: up_kernel must be odd, got {k}")
    if c % g:
        raise ConfigError(f"CARAFE: up_group={g} must divide the {c} channels")
    if masks.shape != (n, g * k * k, s * h, s * w):
        raise ValueError(f"CARAFE: masks of shape {tuple(masks.shape)} do not fit features "
                         f"{tuple(features.shape)} (expected {(n, g * k * k, s * h, s * w)})")
    patches = F.unfold(features, k, padding=(k - 1) // 2).view(n, g, c // g, k * k, h, w)
    weights = masks.view(n, g, k * k, h, s, w, s)
    out = torch.einsum("ngckhw,ngkhiwj->ngchiwj", patches, weights)
    return out.reshape(n, c, s * h, s * w)


class CARAFEPack(nn.Module):
    """CARAFE's upsampler: a 1x1 ``channel_compressor`` to ``compressed_channels``, a
    ``content_encoder`` conv predicting ``up_group * up_kernel^2`` weights for each of the
    ``scale_factor^2`` sub-pixels, pixel-shuffled and softmax-normalized per neighbourhood
    (the kernel normalizer), then :func:`carafe`.

    Args: ``channels`` (in and out), ``scale_factor``, ``up_kernel``, ``up_group``,
    ``encoder_kernel``, ``encoder_dilation``, ``compressed_channels`` -- mmcv's.
    """

    def __init__(self, channels: int, scale_factor: int, up_kernel: int = 5,
                 up_group: int = 1, encoder_kernel: int = 3, encoder_dilation: int = 1,
                 compressed_channels: int = 64) -> None:
        super().__init__()
        self.channels, self.scale_factor = channels, scale_factor
        self.up_kernel, self.up_group = up_kernel, up_group
        self.encoder_kernel, self.encoder_dilation = encoder_kernel, encoder_dilation
        self.compressed_channels = compressed_channels
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels, up_kernel * up_kernel * up_group * scale_factor * scale_factor,
            encoder_kernel, padding=int((encoder_kernel - 1) * encoder_dilation / 2),
            dilation=encoder_dilation)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's: Xavier-uniform convs with zero bias, then the encoder ``N(0, 0.001)``."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.content_encoder.weight, 0.0, 0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def kernel_normalizer(self, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output -> per-output-pixel weights, each neighbourhood summing to 1."""
        mask = F.pixel_shuffle(mask, self.scale_factor)
        n, channels, h, w = mask.shape
        mask = F.softmax(mask.view(n, channels // self.up_kernel ** 2, -1, h, w), dim=2)
        return mask.view(n, channels, h, w).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, channels, H, W)`` -> ``(B, channels, s H, s W)``."""
        mask = self.kernel_normalizer(self.content_encoder(self.channel_compressor(x)))
        return carafe(x, mask, self.up_kernel, self.up_group, self.scale_factor)


__all__ = ["CARAFEPack", "carafe"]
