"""Swin Transformer backbone (Liu et al., 2021) with MMDetection 2.28's arguments and names.

A Swin Transformer cuts the image into ``patch_size`` patches (a strided conv,
``patch_embed.projection``), then runs stages of transformer blocks that attend inside
``window_size`` x ``window_size`` windows; every second block shifts the windows by half a
window (cyclic roll + a mask that keeps wrapped-around tokens apart). Between stages a patch
merging layer (``downsample``) gathers each 2x2 neighbourhood (4C channels), normalizes it
and projects it to 2C. Feature maps whose size is not a multiple of the window (or of the
merging stride) are padded at the bottom/right, exactly as MMDetection does, so outputs match
for any input size.

Parameter names are MMDetection's (``patch_embed.projection``, ``stages.N.blocks.M.attn.w_msa.qkv``,
``ffn.layers.0.0`` / ``ffn.layers.1``, ``stages.N.downsample.reduction``, ``normN``), so its
Swin checkpoints load by name; ``convert_weights=True`` maps the original Swin repository's
weights (``layers.N``, ``mlp.fc1`` ...) when ``init_weights`` loads them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.transformer_parts import (
    init_linears_and_layer_norms,
    layer_norm,
    pair,
)
from detlab.models.init import is_pretrained
from detlab.models.utils import build_activation_layer, freeze
from detlab.registry import MODELS


def _pad_to_multiple(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` at the bottom/right so H and W are multiples of ``stride``
    (MMDetection's ``AdaptivePadding`` with ``padding='corner'`` and kernel == stride)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    return F.pad(x, [0, pad_w, 0, pad_h]) if pad_h or pad_w else x


class DropPath(nn.Module):
    """Stochastic depth: while training, drop a whole sample's residual branch with
    probability ``drop_prob`` (the kept ones scaled by ``1 / (1 - drop_prob)``)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: pad to a multiple of ``patch_size``, a
    ``patch_size``-strided conv (``projection``), flatten, optional ``norm``."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int,
                 norm_cfg: Mapping[str, Any] | None):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = layer_norm(norm_cfg, embed_dims, "Swin") if norm_cfg else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(_pad_to_multiple(x, self.patch_size))
        hw_shape = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw_shape


class PatchMerging(nn.Module):
    """Tokens ``(B, H*W, C)`` -> ``(B, H/s*W/s, out_channels)``: each ``s x s`` neighbourhood
    is gathered channel-major (as ``nn.Unfold`` lays it out, which MMDetection uses), then
    ``norm`` and a bias-free linear ``reduction``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 norm_cfg: Mapping[str, Any] | None):
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels
        sample_dim = stride * stride * in_channels
        self.norm = layer_norm(norm_cfg, sample_dim, "Swin") if norm_cfg else None
        self.reduction = nn.Linear(sample_dim, out_channels, bias=False)

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        b, length, c = x.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f"PatchMerging got {length} tokens for a {h}x{w} map")
        s = self.stride
        x = _pad_to_multiple(x.view(b, h, w, c).permute(0, 3, 1, 2), s)
        out_h, out_w = x.shape[2] // s, x.shape[3] // s
        # (B, C, oh, s, ow, s) -> (B, oh*ow, C*s*s) with channel outermost, then the s x s offsets
        x = x.view(b, c, out_h, s, out_w, s).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(b, out_h * out_w, c * s * s)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x), (out_h, out_w)


class WindowMSA(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per relative
    position (``relative_position_bias_table`` indexed by ``relative_position_index``)."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, qkv_bias: bool,
                 qk_scale: float | None, attn_drop_rate: float, proj_drop_rate: float):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # index of (token i, token j) = (dy + ws - 1) * (2ws - 1) + (dx + ws - 1), d = i - j
        coords = torch.arange(window_size)
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[:, None] - ys[None, :] + window_size - 1
        dx = xs[:, None] - xs[None, :] + window_size - 1
        self.register_buffer("relative_position_index", dy * (2 * window_size - 1) + dx)
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(windows*B, N, C)``; ``mask``: ``(windows, N, N)`` of 0 / -100."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


def _windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * H/size * W/size, size*size, C)``, row-major windows."""
    b, h, w, c = x.shape
    x = x.view(b, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c)


def _unwindows(x: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_windows`: ``(B * windows, size*size, C)`` -> ``(B, H, W, C)``."""
    c = x.shape[-1]
    x = x.view(-1, h // size, w // size, size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention over a token map: pad to whole windows, roll by
    ``shift_size`` (masking pairs of tokens from different regions), attend, undo."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int,
                 qkv_bias: bool, qk_scale: float | None, attn_drop_rate: float,
                 proj_drop_rate: float, drop_path_rate: float):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ConfigError(f"backbone.window_size: the shift {shift_size} must be smaller "
                              f"than the window {window_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias, qk_scale,
                               attn_drop_rate, proj_drop_rate)
        self.drop = DropPath(drop_path_rate)

    def _shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """``(windows, N, N)``: 0 where two tokens of a shifted window came from the same
        region of the padded map, -100 where the roll brought them together."""
        ws, shift = self.window_size, self.shift_size
        region = torch.zeros((1, h, w, 1), device=device)
        bounds = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
        for i, hs in enumerate(bounds):
            for j, wsl in enumerate(bounds):
                region[:, hs, wsl, :] = i * 3 + j
        ids = _windows(region, ws).squeeze(-1)
        diff = ids[:, None, :] - ids[:, :, None]
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        b, length, c = x.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f"window attention got {length} tokens for a {h}x{w} map")
        ws = self.window_size
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
        hp, wp = x.shape[1], x.shape[2]
        mask = None
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = self._shift_mask(hp, wp, x.device)
        x = _unwindows(self.w_msa(_windows(x, ws), mask=mask), ws, hp, wp)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        return self.drop(x)


class FFN(nn.Module):
    """Two linear layers with an activation, dropout and a residual, under mmcv's names
    (``layers.0.0`` the first linear, ``layers.1`` the second)."""

    def __init__(self, embed_dims: int, hidden: int, act_cfg: Mapping[str, Any],
                 drop_rate: float, drop_path_rate: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden), build_activation_layer(act_cfg),
                          nn.Dropout(drop_rate)),
            nn.Linear(hidden, embed_dims), nn.Dropout(drop_rate))
        self.dropout_layer = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 window_size: int, shift: bool, qkv_bias: bool, qk_scale: float | None,
                 drop_rate: float, attn_drop_rate: float, drop_path_rate: float,
                 act_cfg: Mapping[str, Any], norm_cfg: Mapping[str, Any], with_cp: bool):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = layer_norm(norm_cfg, embed_dims, "Swin")
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size,
                                   window_size // 2 if shift else 0, qkv_bias, qk_scale,
                                   attn_drop_rate, drop_rate, drop_path_rate)
        self.norm2 = layer_norm(norm_cfg, embed_dims, "Swin")
        self.ffn = FFN(embed_dims, feedforward_channels, act_cfg, drop_rate, drop_path_rate)

    def _forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, hw_shape, use_reentrant=False)
        return self._forward(x, hw_shape)


class SwinBlockSequence(nn.Module):
    """One stage: ``blocks`` (alternately plain and shifted windows), then ``downsample``."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]):
        """-> ``(next stage's tokens, their size, this stage's tokens, their size)``."""
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        down, down_shape = self.downsample(x, hw_shape)
        return down, down_shape, x, hw_shape


def convert_swin_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original Swin repository's weights under MMDetection's names (``backbone.``
    prefixed): ``layers`` -> ``stages``, ``attn`` -> ``attn.w_msa``, ``mlp.fc1/fc2`` ->
    ``ffn.layers.0.0/1``, ``patch_embed.proj`` -> ``projection``, and the patch-merging
    weights reordered from the (x0, x1, x2, x3) concatenation to the unfold layout."""
    def reorder_reduction(w: torch.Tensor) -> torch.Tensor:
        out, inp = w.shape
        return w.reshape(out, 4, inp // 4)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out, inp)

    def reorder_norm(w: torch.Tensor) -> torch.Tensor:
        return w.reshape(4, -1)[[0, 2, 1, 3], :].transpose(0, 1).reshape(-1)

    converted = {}
    for key, value in state_dict.items():
        if key.startswith("head"):
            continue
        new = key
        if key.startswith("layers"):
            if "attn." in key:
                new = key.replace("attn.", "attn.w_msa.")
            elif "mlp.fc1." in key:
                new = key.replace("mlp.fc1.", "ffn.layers.0.0.")
            elif "mlp.fc2." in key:
                new = key.replace("mlp.fc2.", "ffn.layers.1.")
            elif "mlp." in key:
                new = key.replace("mlp.", "ffn.")
            elif "downsample" in key and "reduction." in key:
                value = reorder_reduction(value)
            elif "downsample" in key and "norm." in key:
                value = reorder_norm(value)
            new = new.replace("layers", "stages", 1)
        elif key.startswith("patch_embed") and "proj" in key:
            new = key.replace("proj", "projection")
        converted["backbone." + new] = value
    return converted


@MODELS.register_module()
class SwinTransformer(nn.Module):
    """Swin Transformer backbone: ``(B, 3, H, W)`` -> one normed map per ``out_indices``
    stage, stage ``i`` with ``embed_dims * 2**i`` channels at stride ``patch_size * 2**i``.

    Arguments are MMDetection 2.28's (see the module docstring); ``drop_path_rate`` grows
    linearly from 0 over all blocks; ``frozen_stages=k`` freezes the patch embedding and
    the first ``k`` stages (with their output norms).
    """

    def __init__(self, pretrain_img_size: int | Sequence[int] = 224, in_channels: int = 3,
                 embed_dims: int = 96, patch_size: int = 4, window_size: int = 7,
                 mlp_ratio: float = 4, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24),
                 strides: Sequence[int] = (4, 2, 2, 2),
                 out_indices: Sequence[int] = (0, 1, 2, 3), qkv_bias: bool = True,
                 qk_scale: float | None = None, patch_norm: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, use_abs_pos_embed: bool = False,
                 act_cfg: Mapping[str, Any] | None = None,
                 norm_cfg: Mapping[str, Any] | None = None, with_cp: bool = False,
                 pretrained: str | None = None, convert_weights: bool = False,
                 frozen_stages: int = -1, init_cfg: Any = None):
        super().__init__()
        act_cfg = dict(act_cfg or dict(type="GELU"))
        norm_cfg = dict(norm_cfg or dict(type="LN"))
        if init_cfg is not None and pretrained is not None:
            raise ConfigError("backbone: give init_cfg or pretrained, not both (pretrained is "
                              "deprecated: use init_cfg=dict(type='Pretrained', checkpoint=...))")
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise ConfigError(f"backbone.pretrained must be a checkpoint path or URL; got "
                                  f"{pretrained!r}")
            warnings.warn("backbone.pretrained is deprecated, use init_cfg=dict(type="
                          "'Pretrained', checkpoint=...)", DeprecationWarning, stacklevel=2)
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        num_stages = len(depths)
        for key, value in (("num_heads", num_heads), ("strides", strides)):
            if len(value) != num_stages:
                raise ConfigError(f"backbone.{key} needs one entry per stage ({num_stages}, "
                                  f"as depths); got {tuple(value)}")
        if strides[0] != patch_size:
            raise ConfigError(f"backbone.strides[0] ({strides[0]}) must equal patch_size "
                              f"({patch_size}): the patch embedding does not overlap")
        bad = [i for i in out_indices if not 0 <= i < num_stages]
        if bad:
            raise ConfigError(f"backbone.out_indices {bad} are not stages 0..{num_stages - 1}")
        self.init_cfg = init_cfg
        self.convert_weights = convert_weights
        self.frozen_stages = frozen_stages
        self.out_indices = tuple(out_indices)
        self.use_abs_pos_embed = use_abs_pos_embed
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size,
                                      norm_cfg if patch_norm else None)
        if use_abs_pos_embed:
            rows, cols = pair(pretrain_img_size, "pretrain_img_size")
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, embed_dims, rows // patch_size, cols // patch_size))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        total = sum(depths)
        rates = torch.linspace(0, drop_path_rate, total, device="cpu").tolist()  # float32 steps
        self.stages = nn.ModuleList()
        channels, first = embed_dims, 0
        for i, depth in enumerate(depths):
            downsample = None
            if i < num_stages - 1:
                downsample = PatchMerging(channels, 2 * channels, strides[i + 1],
                                          norm_cfg if patch_norm else None)
            blocks = [SwinBlock(channels, num_heads[i], int(mlp_ratio * channels), window_size,
                                j % 2 == 1, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                                rates[first + j], act_cfg, norm_cfg, with_cp)
                      for j in range(depth)]
            self.stages.append(SwinBlockSequence(blocks, downsample))
            first += depth
            if downsample is not None:
                channels = downsample.out_channels
        self.num_features = [int(embed_dims * 2**i) for i in range(num_stages)]
        for i in self.out_indices:
            self.add_module(f"norm{i}", layer_norm(norm_cfg, self.num_features[i], "Swin"))
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        self.feat_dim = self.num_features[-1]
        self._default_init()
        self._freeze_stages()

    def _default_init(self) -> None:
        """MMDetection's from-scratch init: truncated normal (std 0.02) linears with zero bias,
        unit LayerNorms, truncated-normal position tables."""
        if self.use_abs_pos_embed:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        def position_tables(m: nn.Module) -> None:
            if isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

        init_linears_and_layer_norms(self, position_tables)

    def init_weights(self) -> None:
        """Load ``init_cfg``'s ``Pretrained`` checkpoint the way MMDetection's Swin does: keys
        under ``backbone.`` (after ``convert_weights``' renaming of original Swin weights),
        the absolute position embedding reshaped, relative position tables resized bicubically
        when the window differs; anything else keeps the default init."""
        self._default_init()
        if not is_pretrained(self.init_cfg):
            return
        from detlab.checkpoint import load_weights, read_checkpoint

        cfgs = [self.init_cfg] if isinstance(self.init_cfg, Mapping) else list(self.init_cfg)
        source = next(c for c in cfgs if c.get("type") == "Pretrained").get("checkpoint")
        if not source:
            raise ConfigError("backbone.init_cfg: dict(type='Pretrained') needs checkpoint=")
        raw = read_checkpoint(source)["state_dict"]
        if self.convert_weights:
            raw = convert_swin_weights(raw)
        state = {k.removeprefix("backbone."): v for k, v in raw.items()
                 if k.startswith("backbone.")}
        own = self.state_dict()
        pos = state.get("absolute_pos_embed")
        if pos is not None and self.use_abs_pos_embed and pos.dim() == 3:
            n, length, c = pos.shape
            n2, c2, h, w = own["absolute_pos_embed"].shape
            if (n, c, length) == (n2, c2, h * w):
                state["absolute_pos_embed"] = pos.view(n2, h, w, c2).permute(0, 3, 1, 2)
            else:
                warnings.warn("absolute_pos_embed of the checkpoint does not fit; left out",
                              stacklevel=2)
                del state["absolute_pos_embed"]
        for key in [k for k in state if "relative_position_bias_table" in k and k in own]:
            table, current = state[key], own[key]
            (l1, h1), (l2, h2) = table.shape, current.shape
            if h1 != h2:
                warnings.warn(f"{key}: {h1} heads in the checkpoint, {h2} here; left out",
                              stacklevel=2)
                del state[key]
            elif l1 != l2:
                s1, s2 = math.isqrt(l1), math.isqrt(l2)
                resized = F.interpolate(table.permute(1, 0).reshape(1, h1, s1, s1),
                                        size=(s2, s2), mode="bicubic")
                state[key] = resized.view(h2, l2).permute(1, 0).contiguous()
        load_weights(self, state, source=str(source))

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            freeze([self.patch_embed, self.drop_after_pos])
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
        for i in range(self.frozen_stages):
            modules = [self.stages[i]]
            if i in self.out_indices:
                modules.append(getattr(self, f"norm{i}"))
            freeze(modules)

    def train(self, mode: bool = True):
        """Switch mode, keeping frozen stages in eval."""
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            pos = self.absolute_pos_embed
            # MMDetection compares the token map with the table's (channels, rows), so it
            # resizes (bicubic) in practice whenever they differ
            if (hw_shape[0], hw_shape[1]) != tuple(pos.shape[1:3]):
                pos = F.interpolate(pos, size=hw_shape, mode="bicubic", align_corners=False)
            x = x + pos.flatten(2).transpose(1, 2)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw_shape, out, out_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(-1, *out_shape, self.num_features[i])
                            .permute(0, 3, 1, 2).contiguous())
        return outs
