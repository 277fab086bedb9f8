"""Layers built from MMDetection-style configs: norm layers (``norm_cfg``), activations
(``act_cfg``), convolutions (``conv_cfg``) and :class:`ConvModule` (conv -> norm -> activation).

Module names follow mmcv's so that MMDetection checkpoints load by name: a ConvModule holds
``conv``, then ``bn`` / ``gn`` / ``in`` (the norm's abbreviation) and ``activate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError, did_you_mean
from detlab.models.ops.conv_ws import ConvWS2d
from detlab.models.ops.deform_conv import DeformConv2dPack, ModulatedDeformConv2dPack


def frozen(**kwargs: Any) -> Mapping[str, Any]:
    """A read-only config dict, for default arguments (a ``dict`` default would be shared)."""
    return MappingProxyType(dict(kwargs))


def thaw(cfg: Any) -> Any:
    """A plain, copyable version of a config: read-only or config dicts become ``dict``
    (recursively), so that a module keeping it can be deep-copied and pickled."""
    if isinstance(cfg, Mapping):
        return {key: thaw(value) for key, value in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(thaw(value) for value in cfg)
    return cfg


RELU = frozen(type="ReLU")

# norm type -> (abbreviation used in module names, factory(num_features, **kwargs))
_NORM_ABBR = {"BN": "bn", "BN2d": "bn", "SyncBN": "bn", "GN": "gn", "IN": "in"}
# activations whose constructor has no ``inplace`` argument
_NO_INPLACE = {"GELU", "Sigmoid", "Tanh", "PReLU", "Swish"}


class Swish(nn.Module):
    """mmcv's ``Swish``: ``x * sigmoid(x)``, SiLU's function computed as mmcv computes it (SiLU's
    fused kernel rounds differently, which moves near-equal detections of YOLOX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


_ACTIVATIONS = {"ReLU": nn.ReLU, "LeakyReLU": nn.LeakyReLU, "ReLU6": nn.ReLU6, "ELU": nn.ELU,
                "SiLU": nn.SiLU, "Swish": Swish, "GELU": nn.GELU, "Sigmoid": nn.Sigmoid,
                "Tanh": nn.Tanh, "PReLU": nn.PReLU}
NORM_TYPES = tuple(_NORM_ABBR)
ACTIVATION_TYPES = tuple(_ACTIVATIONS)


def _check_cfg(cfg: Any, what: str, choices: Sequence[str]) -> dict[str, Any]:
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConfigError(f"{what} must be dict(type=NAME, ...) with NAME one of "
                          f"{', '.join(choices)}; got {cfg!r}")
    if cfg["type"] not in choices:
        raise ConfigError(f"{what} type {cfg['type']!r} is not supported."
                          f"{did_you_mean(cfg['type'], choices)} Supported: {', '.join(choices)}.")
    return dict(cfg)


def _sync_or_plain_bn(num_features: int, **kwargs: Any) -> nn.Module:
    """SyncBN is only meaningful across processes; a single process uses plain BatchNorm."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return nn.SyncBatchNorm(num_features, **kwargs)
    return nn.BatchNorm2d(num_features, **kwargs)


def build_norm_layer(cfg: Mapping[str, Any], num_features: int,
                     postfix: int | str = "") -> tuple[str, nn.Module]:
    """A norm layer for ``num_features`` channels from ``norm_cfg`` and its module name.

    ``cfg`` is ``dict(type='BN' | 'BN2d' | 'SyncBN' | 'GN' | 'IN', requires_grad=True, ...)``;
    ``GN`` needs ``num_groups``; other keys (``eps``, ``momentum``, ``affine`` ...) go to the
    layer. ``requires_grad=False`` freezes the layer's weight and bias. The name is the type's
    abbreviation plus ``postfix`` (``'bn1'``, ``'gn'``), as mmcv names them.
    """
    args = _check_cfg(cfg, "norm_cfg", NORM_TYPES)
    layer_type = args.pop("type")
    requires_grad = bool(args.pop("requires_grad", True))
    try:
        if layer_type == "GN":
            if "num_groups" not in args:
                raise ConfigError("norm_cfg=dict(type='GN') needs num_groups, e.g. "
                                  "dict(type='GN', num_groups=32, requires_grad=True)")
            if num_features % args["num_groups"]:
                raise ConfigError(f"norm_cfg GN num_groups={args['num_groups']} does not divide "
                                  f"the {num_features} channels of the layer")
            layer = nn.GroupNorm(num_channels=num_features, **args)
        elif layer_type == "SyncBN":
            layer = _sync_or_plain_bn(num_features, **args)
        elif layer_type == "IN":
            layer = nn.InstanceNorm2d(num_features, **args)
        else:
            layer = nn.BatchNorm2d(num_features, **args)
    except TypeError as err:
        raise ConfigError(f"norm_cfg {dict(cfg)!r}: {err}") from err
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return f"{_NORM_ABBR[layer_type]}{postfix}", layer


def build_activation_layer(cfg: Mapping[str, Any], inplace: bool = True) -> nn.Module:
    """An activation from ``act_cfg`` (``dict(type='ReLU' | 'LeakyReLU' | ...)``)."""
    args = _check_cfg(cfg, "act_cfg", ACTIVATION_TYPES)
    layer_type = args.pop("type")
    if layer_type not in _NO_INPLACE:
        args.setdefault("inplace", inplace)
    try:
        return _ACTIVATIONS[layer_type](**args)
    except TypeError as err:
        raise ConfigError(f"act_cfg {dict(cfg)!r}: {err}") from err


class Conv2dAdaptivePadding(nn.Conv2d):
    """mmcv's ``Conv2dAdaptivePadding``: a conv with TensorFlow's ``padding='same'``, the input
    padded at run time (the extra pixel of an odd total on the bottom / right) so that the
    output has ``ceil(size / stride)`` cells; its ``padding`` argument is ignored, as mmcv
    ignores it. EfficientNet's weights were trained with this padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups,
                         bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, ceil(H / s), ceil(W / s))``."""
        pads = []
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                 reversed(self.stride), reversed(self.dilation), strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = nn.functional.pad(x, pads)
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation,
                                    self.groups)


class NormedConv2d(nn.Conv2d):
    """MMDetection's ``NormedConv2d``: a conv of L2-normalized inputs (over channels, scaled by
    ``tempearture``, MMDetection's spelling) and weights normalized per output channel (over
    input channels, or over the whole kernel with ``norm_over_kernel``): the Seesaw configs'
    normalized mask predictor (``predictor_cfg=dict(type='NormedConv2d', tempearture=20)``)."""

    def __init__(self, *args: Any, tempearture: float = 20, power: float = 1.0,
                 eps: float = 1e-6, norm_over_kernel: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tempearture, self.power, self.eps = tempearture, power, eps
        self.norm_over_kernel = norm_over_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_over_kernel:
            norm = self.weight.flatten(1).norm(dim=1, keepdim=True).pow(self.power)
            norm = norm[..., None, None]
        else:
            norm = self.weight.norm(dim=1, keepdim=True).pow(self.power)
        weight = self.weight / (norm + self.eps)
        x = x / (x.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        return self._conv_forward(x * self.tempearture, weight, self.bias)


# conv_cfg type -> the layer class; Conv2d / Conv are plain convolutions, DCN / DCNv2 the
# deformable ones under mmcv's registered names, Conv2dAdaptivePadding TensorFlow's 'same'
_CONV_LAYERS: dict[str, type[nn.Module]] = {
    "Conv2d": nn.Conv2d, "Conv": nn.Conv2d,
    "DCN": DeformConv2dPack, "DCNv2": ModulatedDeformConv2dPack,
    "Conv2dAdaptivePadding": Conv2dAdaptivePadding, "NormedConv2d": NormedConv2d,
    "ConvWS": ConvWS2d,  # weight standardization (the gn+ws configs)
}
CONV_TYPES = tuple(_CONV_LAYERS)


def build_conv_layer(cfg: Mapping[str, Any] | None, *args: Any, **kwargs: Any) -> nn.Module:
    """A 2D convolution from ``conv_cfg``: None or ``dict(type='Conv2d' | 'Conv')`` is a plain
    ``nn.Conv2d``; ``dict(type='DCN', deform_groups=1)`` a
    :class:`~detlab.models.ops.DeformConv2dPack` (no bias) and ``dict(type='DCNv2',
    deform_groups=1)`` a :class:`~detlab.models.ops.ModulatedDeformConv2dPack`, both computed by
    ``torchvision.ops.deform_conv2d``. The config's other keys go to the layer, over
    ``kwargs``."""
    layer_type = "Conv2d"
    if cfg is not None:
        _check_cfg(cfg, "conv_cfg", CONV_TYPES)
        layer_type = cfg["type"]
        extra = {k: v for k, v in cfg.items() if k != "type"}
        kwargs = {**kwargs, **extra}
    try:
        return _CONV_LAYERS[layer_type](*args, **kwargs)
    except TypeError as err:
        raise ConfigError(f"conv_cfg {dict(cfg or {})!r}: {err}") from err


def kaiming_init(module: nn.Module, a: float = 0.0, mode: str = "fan_out",
                 nonlinearity: str = "relu", bias: float = 0.0,
                 distribution: str = "normal") -> None:
    """He initialization of ``module.weight`` (mmcv's defaults), ``bias`` filled with a value."""
    if getattr(module, "weight", None) is not None:
        init = nn.init.kaiming_uniform_ if distribution == "uniform" else nn.init.kaiming_normal_
        init(module.weight, a=a, mode=mode, nonlinearity=nonlinearity)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


def constant_init(module: nn.Module, val: float, bias: float = 0.0) -> None:
    """Fill ``module.weight`` with ``val`` and ``module.bias`` with ``bias``."""
    if getattr(module, "weight", None) is not None:
        nn.init.constant_(module.weight, val)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


class ConvModule(nn.Module):
    """A convolution followed by an optional norm layer and activation (mmcv's ConvModule).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as Conv2d.
        bias: ``'auto'`` gives the conv a bias only when there is no norm layer.
        conv_cfg: None, ``dict(type='Conv2d')``, or a deformable conv ``dict(type='DCN' |
            'DCNv2', deform_groups=1)`` (see :func:`build_conv_layer`).
        norm_cfg: None or a norm config (see :func:`build_norm_layer`).
        act_cfg: an activation config, or None for no activation.
        inplace: whether the activation works in place.
        order: the order of ``'conv'``, ``'norm'``, ``'act'``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1,
                 bias: bool | str = "auto", conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, act_cfg: Mapping | None = RELU,
                 inplace: bool = True, order: tuple[str, str, str] = ("conv", "norm", "act")
                 ) -> None:
        super().__init__()
        if sorted(order) != ["act", "conv", "norm"]:
            raise ConfigError(f"ConvModule order must hold 'conv', 'norm' and 'act' once each, "
                              f"got {order!r}")
        self.order = tuple(order)
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        use_bias = not self.with_norm if bias == "auto" else bool(bias)
        self.conv = build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation,
                                     groups=groups, bias=use_bias)
        self.norm_name = None
        if self.with_norm:
            norm_channels = out_channels if order.index("norm") > order.index("conv") \
                else in_channels
            self.norm_name, norm = build_norm_layer(norm_cfg, norm_channels)
            self.add_module(self.norm_name, norm)
        self.activate = build_activation_layer(act_cfg, inplace) if self.with_activation \
            else None
        self.init_weights()

    @property
    def norm(self) -> nn.Module | None:
        """The norm layer (whatever its name), or None."""
        return getattr(self, self.norm_name) if self.norm_name else None

    def init_weights(self) -> None:
        """mmcv's default: He init for the conv (unless the conv has its own
        ``init_weights``, as DCNv2 has), weight 1 / bias 0 for the norm layer."""
        if not hasattr(self.conv, "init_weights"):
            leaky = self.with_activation and isinstance(self.activate, nn.LeakyReLU)
            kaiming_init(self.conv, a=self.activate.negative_slope if leaky else 0.0,
                         nonlinearity="leaky_relu" if leaky else "relu")
        if self.with_norm:
            constant_init(self.norm, 1.0, bias=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')``."""
        for step in self.order:
            if step == "conv":
                x = self.conv(x)
            elif step == "norm" and self.with_norm:
                x = self.norm(x)
            elif step == "act" and self.with_activation:
                x = self.activate(x)
        return x


class Scale(nn.Module):
    """A learnable scalar the input is multiplied by (mmcv's ``Scale``: parameter ``scale``, a
    0-dim tensor), one per level in FCOS-like heads."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` times the scale."""
        return x * self.scale


def freeze(modules: Iterable[nn.Module]) -> None:
    """Put ``modules`` in eval mode and stop their parameters' gradients (frozen stages)."""
    for module in modules:
        module.eval()
        for param in module.parameters():
            param.requires_grad = False


def batchnorms_to_eval(module: nn.Module) -> None:
    """Keep every BatchNorm of ``module`` on its running statistics (``norm_eval``)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class FrozenStagesMixin:
    """``frozen_stages`` and ``norm_eval`` as MMDetection's backbones have them: a backbone
    (an ``nn.Module``) that sets ``self.norm_eval`` and defines ``_freeze_stages()`` (which
    stages to :func:`freeze`) stays that way whatever ``train()`` / ``eval()`` is called, its
    BatchNorms on their running statistics while training with ``norm_eval``."""

    norm_eval: bool = False

    def _freeze_stages(self) -> None:
        raise NotImplementedError

    def train(self, mode: bool = True):
        """Switch mode, keeping frozen stages (and, with ``norm_eval``, BatchNorm) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            batchnorms_to_eval(self)
        return self
