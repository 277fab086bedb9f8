"""Plugin layers inserted into backbones and necks, as mmcv 1.7 builds them.

* :class:`NonLocal2d` -- the non-local block (Wang et al., 2018): each position gathers the
  features of every other one, weighted by a pairwise affinity (Libra R-CNN's BFP neck, ResNet
  plugins).
* :class:`ContextBlock` -- GCNet's global-context block (Cao et al., 2019): one attention-pooled
  context vector per image, transformed and added to (or multiplied into) every position.
* :class:`GeneralizedAttention` -- the attention of "An Empirical Study of Spatial Attention
  Mechanisms" (Zhu et al., 2019): query / key content and relative-position terms picked by
  ``attention_type``.
* :class:`DropBlock` -- MMDetection's structured dropout of square blocks (training only).

Parameter names and shapes are mmcv's, so MMDetection's checkpoints load strictly.
:func:`build_plugin_layer` names a plugin inside a block as mmcv does (``context_block``,
``gen_attention_block``, ``nonlocal_block`` plus an optional postfix): a ResNet with
``plugins=`` has MMDetection's state_dict keys (``layer2.0.context_block.conv_mask.weight``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.utils import ConvModule, constant_init, kaiming_init
from detlab.registry import MODELS

NONLOCAL_MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


@MODELS.register_module()
class NonLocal2d(nn.Module):
    """mmcv's 2D non-local block: ``x + conv_out(sum_j f(x_i, x_j) g(x_j))``.

    Args:
        in_channels: channels of the input (and output).
        reduction: the inner width is ``max(in_channels // reduction, 1)``.
        use_scale: divide the ``embedded_gaussian`` affinities by ``sqrt(inner width)``.
        conv_cfg: the 1x1 convs' conv config (None: plain conv).
        norm_cfg: an optional norm after ``conv_out`` (its other convs have none).
        mode: the affinity ``f``: ``'embedded_gaussian'`` (softmax of theta . phi),
            ``'gaussian'`` (softmax of x . x), ``'dot_product'`` (theta . phi / N) or
            ``'concatenation'`` (a ReLU'd 1x1 conv of [theta, phi], / N).
        sub_sample: max-pool (2x2) the keys and values (``g`` and ``phi``).
        std, zeros_init: the init: ``g`` / ``theta`` / ``phi`` from N(0, std); ``conv_out``
            (or its norm) zero, so that the block starts as the identity.
    """

    _abbr_ = "nonlocal_block"

    def __init__(self, in_channels: int, reduction: int = 2, use_scale: bool = True,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 mode: str = "embedded_gaussian", sub_sample: bool = False, std: float = 0.01,
                 zeros_init: bool = True) -> None:
        super().__init__()
        if mode not in NONLOCAL_MODES:
            raise ConfigError(f"NonLocal2d mode must be one of {', '.join(NONLOCAL_MODES)}; "
                              f"got {mode!r}")
        self.in_channels, self.reduction, self.use_scale = in_channels, reduction, use_scale
        self.inter_channels = max(in_channels // reduction, 1)
        self.mode, self.sub_sample = mode, sub_sample
        inner = self.inter_channels

        def one_by_one(cin: int, cout: int, norm: Mapping | None = None) -> ConvModule:
            return ConvModule(cin, cout, 1, conv_cfg=conv_cfg, norm_cfg=norm, act_cfg=None)

        self.g: nn.Module = one_by_one(in_channels, inner)
        self.conv_out = one_by_one(inner, in_channels, norm_cfg)
        if mode != "gaussian":
            self.theta = one_by_one(in_channels, inner)
            self.phi: nn.Module = one_by_one(in_channels, inner)
        if mode == "concatenation":
            self.concat_project = ConvModule(inner * 2, 1, 1, bias=False,
                                             act_cfg=dict(type="ReLU"))
        self.init_weights(std, zeros_init)
        if sub_sample:  # after the init, as mmcv wraps them: keys g.0.conv.weight ...
            pool = nn.MaxPool2d(kernel_size=(2, 2))
            self.g = nn.Sequential(self.g, pool)
            self.phi = nn.Sequential(self.phi, pool) if mode != "gaussian" else pool

    def init_weights(self, std: float = 0.01, zeros_init: bool = True) -> None:
        """N(0, std) for the 1x1 convs (bias 0); ``conv_out`` (its norm when it has one) zero
        with ``zeros_init``, else N(0, std) too."""
        def conv(m: nn.Module) -> nn.Module:
            return m[0].conv if isinstance(m, nn.Sequential) else m.conv

        for m in [self.g] + ([self.theta, self.phi] if self.mode != "gaussian" else []):
            _normal_init(conv(m), std)
        last = self.conv_out.norm if self.conv_out.with_norm else self.conv_out.conv
        if zeros_init:
            constant_init(last, 0.0)
        else:
            _normal_init(last, std)

    def _affinity(self, theta_x: torch.Tensor, phi_x: torch.Tensor) -> torch.Tensor:
        """``(N, HW, HW')`` pairwise weights from the queries and keys."""
        if self.mode == "concatenation":  # theta (N, C, HW, 1), phi (N, C, 1, HW')
            h, w = theta_x.shape[2], phi_x.shape[3]
            pair = torch.cat([theta_x.expand(-1, -1, -1, w), phi_x.expand(-1, -1, h, -1)], 1)
            weight = self.concat_project(pair).squeeze(1)
            return weight / weight.shape[-1]
        weight = torch.matmul(theta_x, phi_x)
        if self.mode == "dot_product":
            return weight / weight.shape[-1]
        if self.mode == "embedded_gaussian" and self.use_scale:
            weight = weight / theta_x.shape[-1] ** 0.5
        return weight.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> the same shape."""
        n, c = x.shape[:2]
        g_x = self.g(x).reshape(n, self.inter_channels, -1).transpose(1, 2)
        if self.mode == "gaussian":
            theta_x = x.reshape(n, c, -1).transpose(1, 2)
            phi_x = (self.phi(x) if self.sub_sample else x).reshape(n, c, -1)
        elif self.mode == "concatenation":
            theta_x = self.theta(x).reshape(n, self.inter_channels, -1, 1)
            phi_x = self.phi(x).reshape(n, self.inter_channels, 1, -1)
        else:
            theta_x = self.theta(x).reshape(n, self.inter_channels, -1).transpose(1, 2)
            phi_x = self.phi(x).reshape(n, self.inter_channels, -1)
        y = torch.matmul(self._affinity(theta_x, phi_x), g_x)
        y = y.transpose(1, 2).reshape(n, self.inter_channels, *x.shape[2:])
        return x + self.conv_out(y)


def _normal_init(module: nn.Module, std: float) -> None:
    nn.init.normal_(module.weight, 0.0, std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def _bottleneck(in_channels: int, planes: int) -> nn.Sequential:
    """GCNet's transform: 1x1 conv, LayerNorm, ReLU, 1x1 conv (mmcv's layout and names)."""
    return nn.Sequential(nn.Conv2d(in_channels, planes, 1), nn.LayerNorm([planes, 1, 1]),
                         nn.ReLU(inplace=True), nn.Conv2d(planes, in_channels, 1))


@MODELS.register_module()
class ContextBlock(nn.Module):
    """GCNet's global-context block (mmcv's ``ContextBlock``).

    Args:
        in_channels: channels of the input (and output).
        ratio: the transform's inner width is ``int(in_channels * ratio)`` (``1/16``, ``1/4``).
        pooling_type: ``'att'`` (softmax attention of a 1x1 conv over the positions) or
            ``'avg'`` (global average).
        fusion_types: ``'channel_add'`` (add the transformed context) and / or
            ``'channel_mul'`` (multiply by its sigmoid).
    """

    _abbr_ = "context_block"

    def __init__(self, in_channels: int, ratio: float, pooling_type: str = "att",
                 fusion_types: tuple[str, ...] | list[str] = ("channel_add",)) -> None:
        super().__init__()
        if pooling_type not in ("att", "avg"):
            raise ConfigError(f"ContextBlock pooling_type must be 'att' or 'avg', got "
                              f"{pooling_type!r}")
        fusion_types = tuple(fusion_types)
        if not fusion_types or not set(fusion_types) <= {"channel_add", "channel_mul"}:
            raise ConfigError(f"ContextBlock fusion_types must name 'channel_add' and / or "
                              f"'channel_mul', got {fusion_types!r}")
        self.in_channels, self.ratio = in_channels, ratio
        self.planes = int(in_channels * ratio)
        self.pooling_type, self.fusion_types = pooling_type, fusion_types
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.channel_add_conv = _bottleneck(in_channels, self.planes) \
            if "channel_add" in fusion_types else None
        self.channel_mul_conv = _bottleneck(in_channels, self.planes) \
            if "channel_mul" in fusion_types else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init (fan in) of the attention conv; the transforms' last conv zero, so that the
        block starts as the identity."""
        if self.pooling_type == "att":
            kaiming_init(self.conv_mask, mode="fan_in")
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                constant_init(transform[-1], 0.0)

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> the ``(N, C, 1, 1)`` context."""
        n, c = x.shape[:2]
        if self.pooling_type == "avg":
            return x.mean(dim=(2, 3), keepdim=True)
        mask = self.conv_mask(x).reshape(n, 1, -1).softmax(dim=2)  # (N, 1, HW)
        context = torch.matmul(x.reshape(n, 1, c, -1), mask.unsqueeze(-1))  # (N, 1, C, 1)
        return context.reshape(n, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> the same shape."""
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out


@MODELS.register_module()
class GeneralizedAttention(nn.Module):
    """mmcv's ``GeneralizedAttention``: multi-head attention over the (strided) positions whose
    energy sums the terms ``attention_type`` switches on, in this order:

    ``'1000'`` query and key content, ``'0100'`` query content and relative position,
    ``'0010'`` key content only (a learnt ``appr_bias`` query), ``'0001'`` relative position
    only (a learnt ``geom_bias`` query). The output ``x + gamma * proj_conv(attended values)``
    starts as ``x`` (``gamma`` 0).

    Args:
        in_channels: channels of the input (and output).
        spatial_range: -1 for none, else keys farther than this (in input cells) are masked;
            needs ``in_channels`` 256 or 512 (mmcv's precomputed map sizes).
        num_heads: heads; each has ``in_channels // num_heads`` channels.
        position_embedding_dim: the sinusoidal relative-position embedding's width
            (``in_channels`` when <= 0).
        position_magnitude: the coordinate differences' multiplier.
        kv_stride, q_stride: the keys' / values' and the queries' subsampling strides.
        attention_type: four ``'0'`` / ``'1'`` characters (above).

    Outputs equal mmcv's for every ``attention_type`` MMDetection's configs use (``'1111'``,
    ``'0010'``) and all others but one family: with the query-position term and without the
    geometry one (``'0100'``, ``'1100'``, ``'0110'``, ``'1110'``), mmcv's y-offset term reads
    the query grid transposed (and fails on non-square maps); detlab computes that term as the
    ``'1111'`` branch does.
    """

    _abbr_ = "gen_attention_block"

    def __init__(self, in_channels: int, spatial_range: int = -1, num_heads: int = 9,
                 position_embedding_dim: int = -1, position_magnitude: int = 1,
                 kv_stride: int = 2, q_stride: int = 1, attention_type: str = "1111") -> None:
        super().__init__()
        if len(attention_type) != 4 or set(attention_type) - {"0", "1"} \
                or "1" not in attention_type:
            raise ConfigError(f"GeneralizedAttention attention_type must be four '0' / '1' "
                              f"characters with at least one '1', e.g. '1111' or '0010'; got "
                              f"{attention_type!r}")
        self.position_embedding_dim = position_embedding_dim if position_embedding_dim > 0 \
            else in_channels
        self.position_magnitude, self.num_heads = position_magnitude, num_heads
        self.in_channels, self.spatial_range = in_channels, spatial_range
        self.kv_stride, self.q_stride = kv_stride, q_stride
        self.attention_type = [c == "1" for c in attention_type]
        content, position, key_only, geometry = self.attention_type
        self.qk_embed_dim = self.v_dim = in_channels // num_heads
        width = self.qk_embed_dim * num_heads
        if content or position:
            self.query_conv = nn.Conv2d(in_channels, width, 1, bias=False)
        if content or key_only:
            self.key_conv = nn.Conv2d(in_channels, width, 1, bias=False)
        self.value_conv = nn.Conv2d(in_channels, self.v_dim * num_heads, 1, bias=False)
        if position or geometry:
            self.appr_geom_fc_x = nn.Linear(self.position_embedding_dim // 2, width, bias=False)
            self.appr_geom_fc_y = nn.Linear(self.position_embedding_dim // 2, width, bias=False)
        bound = 1.0 / math.sqrt(self.qk_embed_dim * 2)
        if key_only:
            self.appr_bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        if geometry:
            self.geom_bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.proj_conv = nn.Conv2d(self.v_dim * num_heads, in_channels, 1, bias=True)
        self.gamma = nn.Parameter(torch.zeros(1))
        if spatial_range >= 0:
            self.local_constraint_map = nn.Parameter(self._constraint_map(), requires_grad=False)
        self.init_weights()

    def _constraint_map(self) -> torch.Tensor:
        """``(L, L, L_kv, L_kv)`` uint8, 1 where a key is out of ``spatial_range`` of a query
        (mmcv's precomputed map, L = 84 for 256 channels, 42 for 512)."""
        sizes = {256: 84, 512: 42}
        if self.in_channels not in sizes:
            raise ConfigError(f"GeneralizedAttention spatial_range={self.spatial_range} needs "
                              f"in_channels 256 or 512 (got {self.in_channels}); use "
                              f"spatial_range=-1")
        size = sizes[self.in_channels]
        size_kv = int((size - 1.0) / self.kv_stride + 1)
        far = np.ones((size, size, size_kv, size_kv), dtype=np.uint8)
        r, s = self.spatial_range, self.kv_stride
        for iy in range(size):
            ys = slice(max((iy - r) // s, 0), min((iy + r + 1) // s + 1, size))
            for ix in range(size):
                far[iy, ix, ys, max((ix - r) // s, 0):min((ix + r + 1) // s + 1, size)] = 0
        return torch.from_numpy(far)

    def init_weights(self) -> None:
        """mmcv's: uniform He init (fan in, a=1) of the convs and position projections."""
        for name in ("query_conv", "key_conv", "value_conv", "appr_geom_fc_x", "appr_geom_fc_y",
                     "proj_conv"):
            if hasattr(self, name):
                kaiming_init(getattr(self, name), a=1, mode="fan_in",
                             nonlinearity="leaky_relu", distribution="uniform")

    def _position_embedding(self, h: int, w: int, h_kv: int, w_kv: int, device: torch.device,
                            dtype: torch.dtype, wave_length: float = 1000.0
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinusoidal embeddings of the x and y offsets query - key: ``(w, w_kv, D/2)`` and
        ``(h, h_kv, D/2)`` with D the position embedding width."""
        def offsets(n_q: int, n_kv: int) -> torch.Tensor:
            q = torch.arange(n_q, device=device, dtype=dtype) * self.q_stride
            kv = torch.arange(n_kv, device=device, dtype=dtype) * self.kv_stride
            return (q[:, None, None] - kv[None, :, None]) * self.position_magnitude

        feat_dim = self.position_embedding_dim
        feat_range = torch.arange(0, feat_dim / 4, device=device, dtype=dtype)
        wave = torch.tensor([wave_length], device=device, dtype=dtype)
        dim_mat = (wave ** ((4.0 / feat_dim) * feat_range)).view(1, 1, -1)

        def embed(diff: torch.Tensor) -> torch.Tensor:
            return torch.cat([(diff / dim_mat).sin(), (diff / dim_mat).cos()], dim=2)

        return embed(offsets(w, w_kv)), embed(offsets(h, h_kv))

    def _energy(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``(N, heads, Q, K)`` attention logits and the query grid ``(h, w)`` they cover
        (``(1, 1)`` when only the key-content term is on: the same for every query)."""
        content, position, key_only, geometry = self.attention_type
        n, _, h, w = x_q.shape
        h_kv, w_kv = x_kv.shape[2:]
        heads, dim = self.num_heads, self.qk_embed_dim
        if content or position:
            query = self.query_conv(x_q).view(n, heads, dim, h * w).transpose(2, 3)
        if content or key_only:
            key = self.key_conv(x_kv).view(n, heads, dim, h_kv * w_kv)
        if key_only and not (content or position or geometry):
            energy = torch.matmul(self.appr_bias.view(1, heads, 1, dim).expand(n, -1, -1, -1),
                                  key)
            return energy, 1, 1
        energy = x_q.new_zeros(n, heads, h, w, h_kv, w_kv)
        if content:
            left = query + self.appr_bias.view(1, heads, 1, dim) if key_only else query
            energy = torch.matmul(left, key).view(n, heads, h, w, h_kv, w_kv)
        elif key_only:
            bias = self.appr_bias.view(1, heads, 1, dim).expand(n, -1, -1, -1)
            energy = energy + torch.matmul(bias, key).view(n, heads, 1, 1, h_kv, w_kv)
        if position or geometry:
            embed_x, embed_y = self._position_embedding(h, w, h_kv, w_kv, x_q.device, x_q.dtype)
            # (N, heads, w, w_kv, dim) and (N, heads, h, h_kv, dim)
            pos_x = self.appr_geom_fc_x(embed_x).view(1, w, w_kv, heads, dim) \
                .permute(0, 3, 1, 2, 4).expand(n, -1, -1, -1, -1) / math.sqrt(2)
            pos_y = self.appr_geom_fc_y(embed_y).view(1, h, h_kv, heads, dim) \
                .permute(0, 3, 1, 2, 4).expand(n, -1, -1, -1, -1) / math.sqrt(2)
            if position:
                left = query + self.geom_bias.view(1, heads, 1, dim) if geometry else query
                left = left.reshape(n, heads, h, w, dim)
                # x offsets: per query row, (w, dim) x (w, dim, w_kv) -> (w, w_kv)
                energy_x = torch.matmul(left.transpose(2, 3), pos_x.transpose(3, 4))
                energy_x = energy_x.transpose(2, 3).unsqueeze(4)  # (N, heads, h, w, 1, w_kv)
                energy_y = torch.matmul(left, pos_y.transpose(3, 4)).unsqueeze(5)
            else:
                bias = self.geom_bias.view(1, heads, dim, 1).expand(n, -1, -1, -1)
                energy_x = torch.matmul(pos_x.reshape(n, heads, w * w_kv, dim), bias)
                energy_x = energy_x.view(n, heads, 1, w, 1, w_kv)
                energy_y = torch.matmul(pos_y.reshape(n, heads, h * h_kv, dim), bias)
                energy_y = energy_y.view(n, heads, h, 1, h_kv, 1)
            energy = energy + (energy_x + energy_y)
        return energy.view(n, heads, h * w, h_kv * w_kv), h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> the same shape."""
        x_q = x[:, :, ::self.q_stride, ::self.q_stride] if self.q_stride > 1 else x
        x_kv = x[:, :, ::self.kv_stride, ::self.kv_stride] if self.kv_stride > 1 else x
        n = x.shape[0]
        h_kv, w_kv = x_kv.shape[2:]
        energy, h, w = self._energy(x_q, x_kv)
        if self.spatial_range >= 0:
            far = self.local_constraint_map[:h, :w, :h_kv, :w_kv].reshape(1, 1, h * w, -1)
            energy = energy.masked_fill(far.bool(), float("-inf"))
        attention = energy.softmax(dim=3)
        value = self.value_conv(x_kv).view(n, self.num_heads, self.v_dim, h_kv * w_kv)
        out = torch.matmul(attention, value.transpose(2, 3))  # (N, heads, hw, v_dim)
        out = out.transpose(2, 3).reshape(n, self.v_dim * self.num_heads, h, w)
        out = self.proj_conv(out)
        if self.q_stride > 1:
            out = F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.gamma * out + x


@MODELS.register_module()
class DropBlock(nn.Module):
    """MMDetection's ``DropBlock`` (Ghiasi et al., 2018): in training, zero random
    ``block_size`` x ``block_size`` squares of each channel and rescale the rest to keep the
    mean; the identity in eval mode. Block centres are drawn with probability ``gamma`` (the
    paper's, so that about ``drop_prob`` of the map drops), ramped linearly from 0 over the
    first ``warmup_iters`` training calls. Other keyword arguments (a plugin's
    ``in_channels``) are ignored, as in MMDetection."""

    def __init__(self, drop_prob: float, block_size: int, warmup_iters: int = 2000,
                 **kwargs: Any) -> None:
        super().__init__()
        if block_size % 2 != 1 or not 0 < drop_prob <= 1 or warmup_iters < 0:
            raise ConfigError(f"DropBlock needs an odd block_size, 0 < drop_prob <= 1 and "
                              f"warmup_iters >= 0; got block_size={block_size}, "
                              f"drop_prob={drop_prob}, warmup_iters={warmup_iters}")
        self.drop_prob, self.block_size, self.warmup_iters = drop_prob, block_size, warmup_iters
        self.iter_cnt = 0

    def _gamma(self, height: int, width: int) -> float:
        b = self.block_size
        gamma = self.drop_prob * height * width / ((height - b + 1) * (width - b + 1)) / b**2
        ramp = 1.0 if self.iter_cnt > self.warmup_iters else self.iter_cnt / self.warmup_iters
        return gamma * ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        self.iter_cnt += 1
        n, c, h, w = x.shape
        b, half = self.block_size, self.block_size // 2
        centres = torch.bernoulli(torch.full((n, c, h - b + 1, w - b + 1), self._gamma(h, w),
                                             device=x.device))
        dropped = F.max_pool2d(F.pad(centres, [half] * 4, value=0), kernel_size=(b, b),
                               stride=(1, 1), padding=half)
        keep = 1 - dropped
        return x * keep * keep.numel() / (1e-6 + keep.sum())

    def extra_repr(self) -> str:
        return (f"drop_prob={self.drop_prob}, block_size={self.block_size}, "
                f"warmup_iters={self.warmup_iters}")


PLUGIN_TYPES = ("ContextBlock", "DropBlock", "GeneralizedAttention", "NonLocal2d")


def plugin_abbreviation(cls: type) -> str:
    """mmcv's name stem of a plugin class: its ``_abbr_``, else its snake-cased name."""
    if hasattr(cls, "_abbr_"):
        return cls._abbr_
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", cls.__name__)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).replace("-", "_").lower()


def build_plugin_layer(cfg: Mapping[str, Any], where: str, postfix: int | str = "",
                       **kwargs: Any) -> tuple[str, nn.Module]:
    """A plugin from ``dict(type=..., ...)`` (any registered module type) and its mmcv name:
    the type's abbreviation plus ``postfix`` (``'context_block'``, ``'nonlocal_block1'``).
    ``kwargs`` (``in_channels``) go to the layer with the config's keys."""
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConfigError(f"{where} must be a dict with a type, e.g. dict(type='ContextBlock', "
                          f"ratio=1. / 16), got {cfg!r}")
    args = dict(cfg)
    cls = MODELS.get(args["type"], None)
    if cls is None:
        raise ConfigError(f"{where}: plugin type {args['type']!r} is not registered; known "
                          f"plugins: {', '.join(PLUGIN_TYPES)}")
    layer = MODELS.build({**args, **kwargs})
    return plugin_abbreviation(cls) + str(postfix), layer
