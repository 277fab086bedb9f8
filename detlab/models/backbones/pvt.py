"""Pyramid Vision Transformers (PVT, Wang et al. 2021; PVTv2, 2022) as MMDetection 2.28 builds them.

Each stage embeds its input into patches (a strided conv + LayerNorm), adds an absolute
position embedding (PVT only, resized bilinearly to the feature size), runs transformer
encoder layers whose attention looks at a spatially reduced copy of the tokens (a conv with
stride ``sr_ratio`` + LayerNorm for keys and values), and reshapes the tokens back into a map.
PVTv2 embeds with overlapping patches (7x7 / 3x3 convs with padding), drops the position
embedding, puts a 3x3 depth-wise conv inside the FFN and ends each stage with a LayerNorm.

Parameter names are MMDetection's (``layers.N.0`` patch embed, ``layers.N.1.M`` position
embedding / encoder layers with ``attn.attn.in_proj_weight`` ..., ``layers.N.2`` norm), so
MMDetection's PVT checkpoints load by name; the original repository's weights (the configs'
``init_cfg`` URLs) are renamed on load by :func:`convert_pvt_weights` (``convert_weights``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from detlab.config import ConfigError
from detlab.models.backbones.transformer_parts import (
    init_linears_and_layer_norms,
    layer_norm,
    pair,
)
from detlab.models.utils import build_activation_layer, frozen, thaw
from detlab.registry import MODELS


def _drop_path(rate: float) -> nn.Module:
    """mmcv's DropPath: a sample's whole residual branch dropped, kept ones scaled up."""
    return StochasticDepth(rate, "row") if rate > 0 else nn.Identity()


def tokens_to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C)`` tokens -> ``(B, C, H, W)`` map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw).contiguous()


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` map -> ``(B, H*W, C)`` tokens."""
    return x.flatten(2).transpose(1, 2).contiguous()


class PatchEmbed(nn.Module):
    """A conv that cuts the image (or map) into patches, then a LayerNorm over the tokens."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int,
                 padding: int, norm_cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding)
        self.norm = layer_norm(norm_cfg, embed_dims, "a PVT")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class AbsolutePositionEmbedding(nn.Module):
    """A learned embedding for the pretraining grid, resized bilinearly to each input."""

    def __init__(self, pos_shape: tuple[int, int], pos_dim: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pos_shape, self.pos_dim = pos_shape, pos_dim
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_shape[0] * pos_shape[1], pos_dim))
        self.drop = nn.Dropout(drop_rate)

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = self.pos_shape
        grid = self.pos_embed[:, -h * w:].reshape(1, h, w, self.pos_dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode="bilinear")
        return self.drop(x + grid.flatten(2).transpose(1, 2))


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from the tokens shrunk ``sr_ratio``
    times per side (a strided conv + LayerNorm); ``attn`` is a torch MultiheadAttention
    (mmcv's wrapper names: ``attn.in_proj_weight``, ``attn.out_proj``)."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, drop_path_rate: float = 0.0, qkv_bias: bool = True,
                 norm_cfg: Mapping[str, Any] = frozen(type="LN"), sr_ratio: int = 1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, attn_drop, bias=qkv_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = _drop_path(drop_path_rate)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, sr_ratio, sr_ratio)
            self.norm = layer_norm(norm_cfg, embed_dims, "a PVT")

    def forward(self, x: torch.Tensor, hw: tuple[int, int], identity: torch.Tensor
                ) -> torch.Tensor:
        kv = x
        if self.sr_ratio > 1:
            kv = self.norm(map_to_tokens(self.sr(tokens_to_map(x, hw))))
        # torch's attention takes (tokens, batch, channels)
        q, kv = x.transpose(0, 1), kv.transpose(0, 1)
        out = self.attn(query=q, key=kv, value=kv)[0].transpose(0, 1)
        return identity + self.dropout_layer(self.proj_drop(out))


class MixFFN(nn.Module):
    """The FFN as 1x1 convs on the token map (``layers.0`` / ``layers.3``), with a 3x3
    depth-wise conv after the first (``layers.1``, PVTv2's ``use_conv``); the fc2 index
    follows MMDetection's Sequential (``layers.4`` with the depth-wise conv)."""

    def __init__(self, embed_dims: int, feedforward_channels: int,
                 act_cfg: Mapping[str, Any] = frozen(type="GELU"), ffn_drop: float = 0.0,
                 drop_path_rate: float = 0.0, use_conv: bool = False) -> None:
        super().__init__()
        drop = nn.Dropout(ffn_drop)
        layers = [nn.Conv2d(embed_dims, feedforward_channels, 1),
                  build_activation_layer(act_cfg), drop,
                  nn.Conv2d(feedforward_channels, embed_dims, 1), drop]
        if use_conv:
            layers.insert(1, nn.Conv2d(feedforward_channels, feedforward_channels, 3,
                                       padding=1, groups=feedforward_channels))
        self.layers = nn.Sequential(*layers)
        self.dropout_layer = _drop_path(drop_path_rate)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], identity: torch.Tensor
                ) -> torch.Tensor:
        return identity + self.dropout_layer(map_to_tokens(self.layers(tokens_to_map(x, hw))))


class PVTEncoderLayer(nn.Module):
    """Pre-norm transformer layer: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 drop_rate: float, attn_drop_rate: float, drop_path_rate: float,
                 qkv_bias: bool, act_cfg: Mapping[str, Any], norm_cfg: Mapping[str, Any],
                 sr_ratio: int, use_conv_ffn: bool) -> None:
        super().__init__()
        self.norm1 = layer_norm(norm_cfg, embed_dims, "a PVT")
        self.attn = SpatialReductionAttention(embed_dims, num_heads, attn_drop_rate, drop_rate,
                                              drop_path_rate, qkv_bias, norm_cfg, sr_ratio)
        self.norm2 = layer_norm(norm_cfg, embed_dims, "a PVT")
        self.ffn = MixFFN(embed_dims, feedforward_channels, act_cfg, drop_rate, drop_path_rate,
                          use_conv_ffn)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = self.attn(self.norm1(x), hw, identity=x)
        return self.ffn(self.norm2(x), hw, identity=x)


def convert_pvt_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original PVT repository's weights (``patch_embed1``, ``block1.0.attn.q`` /
    ``kv``, ``mlp.fc1`` ...) to MMDetection's names: q and kv joined into ``in_proj``, the
    FFN's linears as 1x1 convs, the classifier (``head``, ``norm``, ``cls_token``) dropped and
    the class token taken out of a stage-4 position embedding."""
    keys = list(state_dict)
    has_pos = any(k.startswith("pos_embed") for k in keys)
    has_dwconv = any("dwconv" in k for k in keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("head", "norm.", "cls_token")):
            continue
        new = key
        if key.startswith("pos_embed"):
            stage = int(key.removeprefix("pos_embed"))
            new = f"layers.{stage - 1}.1.0.pos_embed"
            if stage == 4 and value.shape[1] == 50:  # class token + 7x7 grid
                value = value[:, 1:]
        elif key.startswith("patch_embed"):
            head, _, rest = key.partition(".")
            stage = int(head.removeprefix("patch_embed"))
            new = f"layers.{stage - 1}.0.{rest.replace('proj.', 'projection.')}"
        elif key.startswith("block"):
            head, index, rest = key.split(".", 2)
            stage = int(head.removeprefix("block"))
            new_prefix = f"layers.{stage - 1}.1.{int(index) + has_pos}."
            if rest.startswith("attn.kv."):
                continue
            if rest.startswith("attn.q."):
                kv = state_dict[f"{head}.{index}.attn.kv.{rest.removeprefix('attn.q.')}"]
                rest, value = f"attn.attn.in_proj_{rest.removeprefix('attn.q.')}", \
                    torch.cat([value, kv], dim=0)
            elif rest.startswith("attn.proj."):
                rest = rest.replace("attn.proj.", "attn.attn.out_proj.")
            elif rest.startswith("mlp."):
                if rest in ("mlp.fc1.weight", "mlp.fc2.weight"):
                    value = value.reshape(*value.shape, 1, 1)
                rest = (rest.replace("mlp.", "ffn.layers.").replace("fc1.", "0.")
                        .replace("dwconv.dwconv.", "1.")
                        .replace("fc2.", "4." if has_dwconv else "3."))
            new = new_prefix + rest
        elif key.startswith("norm"):
            new = f"layers.{int(key[4]) - 1}.2{key[5:]}"
        out[new] = value
    return out


@MODELS.register_module()
class PyramidVisionTransformer(nn.Module):
    """PVT with MMDetection 2.28's arguments; returns one map per ``out_indices`` stage.

    Stage ``i`` has ``embed_dims * num_heads[i]`` channels, ``num_layers[i]`` encoder layers
    with ``num_heads[i]`` heads, an FFN ``mlp_ratios[i]`` times wider and keys/values reduced
    ``sr_ratios[i]`` times per side; its patch embed is a ``patch_sizes[i]`` conv with
    ``strides[i]`` / ``paddings[i]``. ``drop_path_rate`` grows linearly over all layers.
    ``pretrained`` is the deprecated spelling of ``init_cfg=dict(checkpoint=...)``; with
    ``convert_weights`` the checkpoint is renamed from the original repository's names.
    """

    def __init__(self, pretrain_img_size: int | Sequence[int] = 224, in_channels: int = 3,
                 embed_dims: int = 64, num_stages: int = 4,
                 num_layers: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8),
                 patch_sizes: Sequence[int] = (4, 2, 2, 2),
                 strides: Sequence[int] = (4, 2, 2, 2),
                 paddings: Sequence[int] = (0, 0, 0, 0),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 mlp_ratios: Sequence[int] = (8, 8, 4, 4), qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, use_abs_pos_embed: bool = True,
                 norm_after_stage: bool = False, use_conv_ffn: bool = False,
                 act_cfg: Mapping[str, Any] = frozen(type="GELU"),
                 norm_cfg: Mapping[str, Any] = frozen(type="LN", eps=1e-6),
                 pretrained: str | None = None, convert_weights: bool = True,
                 init_cfg: Mapping | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if pretrained is not None:
            if init_cfg is not None:
                raise ConfigError(f"{name}: set init_cfg or pretrained, not both (pretrained is "
                                  "deprecated: use init_cfg=dict(type='Pretrained', "
                                  "checkpoint=...))")
            if not isinstance(pretrained, str):
                raise ConfigError(f"{name}: backbone.pretrained must be a checkpoint path or "
                                  f"URL; got {pretrained!r}")
            warnings.warn(f"{name}(pretrained=...) is deprecated, use init_cfg=dict("
                          "type='Pretrained', checkpoint=...)", DeprecationWarning, stacklevel=2)
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        if init_cfg is not None and (not isinstance(init_cfg, Mapping)
                                     or "checkpoint" not in init_cfg):
            raise ConfigError(f"{name}: backbone.init_cfg can only be dict(type='Pretrained', "
                              f"checkpoint=...); got {init_cfg!r}")
        lengths = {len(v) for v in (num_layers, num_heads, patch_sizes, strides, sr_ratios)}
        if lengths != {num_stages}:
            raise ConfigError(f"{name}: num_layers, num_heads, patch_sizes, strides and "
                              f"sr_ratios need one entry per stage (num_stages={num_stages})")
        out_indices = tuple(out_indices)
        if not out_indices or max(out_indices) >= num_stages:
            raise ConfigError(f"{name}: backbone.out_indices {out_indices} must name stages "
                              f"0..{num_stages - 1}")
        self.init_cfg, self.convert_weights = thaw(init_cfg), convert_weights
        self.embed_dims, self.num_stages, self.out_indices = embed_dims, num_stages, out_indices
        img_h, img_w = pair(pretrain_img_size, "pretrain_img_size")
        rates = torch.linspace(0, drop_path_rate, sum(num_layers), device="cpu").tolist()
        self.layers = nn.ModuleList()
        channels, first, reduction = [], 0, 1
        for i, count in enumerate(num_layers):
            dims = embed_dims * num_heads[i]
            reduction *= patch_sizes[i]
            embed = PatchEmbed(in_channels, dims, patch_sizes[i], strides[i], paddings[i],
                               norm_cfg)
            blocks = nn.ModuleList()
            if use_abs_pos_embed:
                blocks.append(AbsolutePositionEmbedding((img_h // reduction, img_w // reduction),
                                                        dims, drop_rate))
            blocks.extend(PVTEncoderLayer(dims, num_heads[i], mlp_ratios[i] * dims, drop_rate,
                                          attn_drop_rate, rates[first + j], qkv_bias, act_cfg,
                                          norm_cfg, sr_ratios[i], use_conv_ffn)
                          for j in range(count))
            norm = layer_norm(norm_cfg, dims, "a PVT") if norm_after_stage else nn.Identity()
            self.layers.append(nn.ModuleList([embed, blocks, norm]))
            in_channels, first = dims, first + count
            channels.append(dims)
        self.out_channels = [channels[i] for i in out_indices]
        self._default_init()

    def _default_init(self) -> None:
        """MMDetection's init from scratch: truncated-normal linears, He-style normal convs
        (fan-out over groups), unit LayerNorms, truncated-normal position embeddings."""
        def convs_and_positions(m: nn.Module) -> None:
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, AbsolutePositionEmbedding):
                m.init_weights()

        init_linears_and_layer_norms(self, convs_and_positions)

    def init_weights(self) -> None:
        """From scratch without ``init_cfg``; else load its ``checkpoint`` (any ``type``, as
        MMDetection reads only the path), renamed first when ``convert_weights``."""
        self._default_init()
        if self.init_cfg is None:
            return
        from detlab.checkpoint import load_weights, log_report, read_checkpoint

        source = self.init_cfg["checkpoint"]
        state = read_checkpoint(source)["state_dict"]
        if self.convert_weights:
            state = convert_pvt_weights(state)
        log_report(self, load_weights(self, state, source=str(source)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> the maps of the ``out_indices`` stages (strides 4, 8, 16, 32
        with the default patch sizes)."""
        outs = []
        for i, (embed, blocks, norm) in enumerate(self.layers):
            x, hw = embed(x)
            for block in blocks:
                x = block(x, hw)
            x = tokens_to_map(norm(x), hw)
            if i in self.out_indices:
                outs.append(x)
        return outs


@MODELS.register_module()
class PyramidVisionTransformerV2(PyramidVisionTransformer):
    """PVTv2: overlapping patch embeds (7x7 then 3x3 convs, padded), no position embedding,
    a depth-wise conv in the FFN and a LayerNorm after each stage; other arguments as PVT."""

    def __init__(self, **kwargs: Any) -> None:
        fixed = ("patch_sizes", "paddings", "use_abs_pos_embed", "norm_after_stage",
                 "use_conv_ffn")
        given = [k for k in fixed if k in kwargs]
        if given:
            raise ConfigError(f"PyramidVisionTransformerV2 fixes {', '.join(given)}; remove "
                              "them from backbone (or use PyramidVisionTransformer)")
        super().__init__(patch_sizes=(7, 3, 3, 3), paddings=(3, 1, 1, 1),
                         use_abs_pos_embed=False, norm_after_stage=True, use_conv_ffn=True,
                         **kwargs)
