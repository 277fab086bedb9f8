"""Registries: a name -> class (or function) table per kind of component, built from config dicts.

>>> from detlab.registry import MODELS
>>> @MODELS.register_module()
... class MyNeck(torch.nn.Module):
...     def __init__(self, in_channels: list[int], out_channels: int = 256): ...
>>> neck = MODELS.build(dict(type='MyNeck', in_channels=[256, 512]))

A registry is a dict with a decorator, ``build`` and ``list``. The only import it does on its own is
of the modules named when it was made (``modules=``), which hold detlab's built-in components, the
first time a name is looked up -- so ``MODELS.build(dict(type='ResNet'))`` works straight after
``from detlab.registry import MODELS``.

Errors name the registry, the config path being built (``model.bbox_head.loss_cls``), the bad type
or key, and the closest registered names or accepted parameters.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from detlab.config import DELETE_KEY, Config, ConfigError, closest, did_you_mean

_ALL: list[Registry] = []
# (config path, the arguments its config sets) of each build in progress, outermost first; lets
# a nested build find the key its config came from (``model`` -> ``model.bbox_head``, or
# ``model.train_cfg.assigner`` for an assigner a head builds from the train_cfg it was handed)
# without being told.
_BUILDING: contextvars.ContextVar[tuple[tuple[str | None, dict], ...]] = contextvars.ContextVar(
    "detlab_building", default=())
_SEARCH_DEPTH = 6  # levels of nested dicts and lists searched for a nested build's config
_SEARCH_ITEMS = 1000  # items of one list searched (a long list holds data, not components)


class UnknownTypeError(ConfigError, KeyError):
    """A ``type`` that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BuildArgumentError(ConfigError, TypeError):
    """A config key that the component's constructor does not accept, or a required one missing."""


class RegistrationError(ConfigError, KeyError):
    """A name registered twice without ``force=True``, or something that cannot be registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _object_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _is_notebook_redefinition(old: Any, new: Any) -> bool:
    """A class or function re-run in a notebook cell (or a script) replaces its older self."""
    return (getattr(new, "__module__", None) == "__main__"
            and getattr(old, "__module__", None) == "__main__"
            and getattr(old, "__qualname__", None) == getattr(new, "__qualname__", None))


def _where(path: str | None) -> str:
    return f" (at {path})" if path else ""


class Registry:
    """A table of components of one kind, built by name from config dicts.

    Args:
        name: what the registry holds, e.g. ``'model'``; used in messages.
        modules: detlab modules whose import registers the built-in components; imported the first
            time a name is looked up or listed.
    """

    def __init__(self, name: str, modules: Sequence[str] = ()) -> None:
        self.name = name
        self._modules: dict[str, Callable] = {}
        self._populate = tuple(modules)
        self._populated = not self._populate
        _ALL.append(self)

    # ---- contents ------------------------------------------------------------------------

    def _load_builtins(self) -> None:
        if self._populated:
            return
        self._populated = True  # set first: the modules register into this very registry
        try:
            for module in self._populate:
                importlib.import_module(module)
        except BaseException:
            self._populated = False
            raise

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._modules

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def list(self) -> list[str]:
        """The registered names, sorted."""
        self._load_builtins()
        return sorted(self._modules)

    @property
    def module_dict(self) -> dict[str, Callable]:
        """A copy of the ``name -> class or function`` table."""
        self._load_builtins()
        return dict(self._modules)

    def __repr__(self) -> str:
        return f"Registry(name={self.name!r}, items={self.list()})"

    _MISSING = object()

    def get(self, name: str, default: Any = _MISSING, *, _path: str | None = None) -> Callable:
        """The class or function registered as ``name``.

        Raises :class:`UnknownTypeError` (a ``KeyError``) naming the closest names, unless a
        ``default`` is given.
        """
        self._load_builtins()
        if name in self._modules:
            return self._modules[name]
        if default is not Registry._MISSING:
            return default
        raise UnknownTypeError(self._unknown_message(name, _path))

    def _unknown_message(self, name: str, path: str | None) -> str:
        message = f"{name!r} is not in the {self.name} registry{_where(path)}."
        hint = did_you_mean(name, self._modules)
        elsewhere = [r.name for r in _ALL if r is not self and name in r._modules]
        if elsewhere:
            message += f" It is registered as a {elsewhere[0]}, not a {self.name}."
        elif hint:
            message += hint
        else:
            message += (f" Registered {self.name}s: {', '.join(sorted(self._modules)) or 'none'}."
                        " A component of your own must be registered (decorate it with "
                        f"@REGISTRY.register_module()) and imported first, e.g. through "
                        "custom_imports=dict(imports=['my_module']) in the config.")
        return message

    # ---- registration --------------------------------------------------------------------

    def register_module(self, name: str | Sequence[str] | None = None, force: bool = False,
                        module: Callable | None = None) -> Callable:
        """Register a class or function, as a decorator or with ``module=``.

        A name already taken needs ``force=True``, except when the same class or function is
        defined again in ``__main__`` (a notebook cell run twice): it then replaces the old one
        with a warning.
        """
        if not isinstance(force, bool):
            raise TypeError(f"force must be a bool, got {type(force).__name__}")
        if name is not None and not isinstance(name, str) and not (
                isinstance(name, Sequence) and all(isinstance(n, str) for n in name)):
            raise TypeError(f"name must be a str or a list of str, got {name!r}")
        if module is not None:
            self._register(module, name, force)
            return module

        def decorator(obj: Callable) -> Callable:
            self._register(obj, name, force)
            return obj

        return decorator

    def _register(self, obj: Callable, name: str | Sequence[str] | None, force: bool) -> None:
        if not callable(obj):
            raise RegistrationError(f"only classes and functions can be registered in "
                                    f"{self.name}, got {obj!r}")
        if name is None and not hasattr(obj, "__name__"):
            raise RegistrationError(f"{obj!r} has no __name__; register it with name=...")
        # Built-ins first, so that a clash with one of them is reported here, not later.
        self._load_builtins()
        names = [obj.__name__] if name is None else [name] if isinstance(name, str) else name
        for key in names:
            old = self._modules.get(key)
            if old is not None and old is not obj and not force:
                if _is_notebook_redefinition(old, obj):
                    warnings.warn(f"{key!r} is defined again in __main__; the {self.name} "
                                  f"registry now holds the new definition", stacklevel=4)
                else:
                    raise RegistrationError(
                        f"{key!r} is already registered in the {self.name} registry (by "
                        f"{_object_name(old)}); pass force=True to replace it, or register "
                        f"{_object_name(obj)} under another name")
            self._modules[key] = obj

    # ---- building ------------------------------------------------------------------------

    def build(self, cfg: Any, /, *, _path: str | None = None, **default_args: Any) -> Any:
        """Build ``cfg`` -- ``dict(type=NAME, **kwargs)`` or a :class:`Config` -- into an object.

        ``default_args`` fill keys the config does not set. ``None`` is returned as it is, and
        so is an object that is not a dict (already built), as mmcv does -- but the defaults
        cannot reach an object built already, so one that disagrees with them is an error
        rather than silently ignored: when the object has an attribute named like a default
        whose (plain: number, string, list, dict ...) value differs from it, a
        :class:`~detlab.config.ConfigError` names the path and both values (e.g. a head built
        with ``num_classes=80`` handed to a build whose default is ``num_classes=3``).
        Defaults of ``None``, and attributes that are modules or other objects, are not
        compared. ``_path`` names the config key being built, for messages; nested builds find
        theirs from the enclosing builds.
        """
        if isinstance(cfg, Config):
            cfg = cfg._cfg_dict
        if not isinstance(cfg, Mapping):
            if cfg is not None and default_args:
                _check_built(cfg, default_args, _path if _path is not None else _infer_path(cfg))
            return cfg
        path = _path if _path is not None else _infer_path(cfg)
        args = {k: v for k, v in cfg.items() if k != DELETE_KEY}
        own = {k: v for k, v in args.items() if k != "type"}  # what the config itself sets
        for key, value in default_args.items():
            args.setdefault(key, value)
        if "type" not in args:
            raise UnknownTypeError(
                f"the {self.name} config{_where(path)} has no 'type' key: {dict(cfg)!r}. Write "
                f"dict(type=NAME, ...) with NAME one of the {self.name} registry "
                f"(e.g. {', '.join(self.list()[:5]) or 'none registered yet'})")
        obj_type = args.pop("type")
        if isinstance(obj_type, str):
            obj = self.get(obj_type, _path=path)
            type_name = obj_type
        elif callable(obj_type):
            obj, type_name = obj_type, getattr(obj_type, "__name__", repr(obj_type))
        else:
            raise UnknownTypeError(f"'type'{_where(path)} must be a registered name or a class, "
                                   f"got {obj_type!r}")
        check_arguments(obj, args, type_name, path)
        token = _BUILDING.set(_BUILDING.get() + ((path, own),))
        try:
            return obj(**args)
        except Exception as err:
            if not getattr(err, "_detlab_noted", False):
                err.add_note(f"detlab: raised while building {type_name}{_where(path)}")
                err._detlab_noted = True  # the innermost build names the most precise path
            raise
        finally:
            _BUILDING.reset(token)


def _infer_path(cfg: Any) -> str | None:
    """The dotted key of ``cfg`` inside the configs of the enclosing builds, innermost first.

    The config is looked for through the nested dicts and lists of their arguments: first as
    the very object, then, for a dict, as an equal one -- a component may build from a copy
    (a head keeps a plain copy of the ``train_cfg`` it is handed and builds its assigner from
    that, at ``model.train_cfg.assigner``).
    """
    stack = _BUILDING.get()
    matchers = [_is_same] + ([_is_equal] if isinstance(cfg, Mapping) else [])
    for same in matchers:
        for parent_path, parent_args in reversed(stack):
            found = _find(cfg, parent_args, parent_path, same, 0)
            if found is not None:
                return found
    return None


def _is_same(a: Any, b: Any) -> bool:
    return a is b


def _is_equal(a: Any, b: Any) -> bool:
    if not isinstance(a, Mapping):
        return False
    try:
        return bool(a == b)
    except Exception:  # values that compare element-wise (arrays, tensors)
        return False


def _find(target: Any, node: Any, path: str | None, same: Callable[[Any, Any], bool],
          depth: int) -> str | None:
    """The dotted key below ``node`` (itself at ``path``) of the value ``same`` as
    ``target``, searched depth first, at most :data:`_SEARCH_DEPTH` levels down."""
    if isinstance(node, Mapping):
        children = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        children = [(str(i), v) for i, v in enumerate(node[:_SEARCH_ITEMS])]
    else:
        return None
    for key, child in children:
        child_path = _join(path, key)
        if same(child, target):
            return child_path
        if depth < _SEARCH_DEPTH and isinstance(child, (Mapping, list, tuple)):
            found = _find(target, child, child_path, same, depth + 1)
            if found is not None:
                return found
    return None


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` with tuples as lists and mappings as dicts, when it is made of numbers,
    strings, None and containers of them; else ``_NOT_PLAIN``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth < _SEARCH_DEPTH and isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return _NOT_PLAIN if any(i is _NOT_PLAIN for i in items) else items
    if depth < _SEARCH_DEPTH and isinstance(value, Mapping):
        items = {k: _plain(v, depth + 1) for k, v in value.items()}
        return _NOT_PLAIN if any(i is _NOT_PLAIN for i in items.values()) else items
    return _NOT_PLAIN


_NOT_PLAIN = object()


def _check_built(obj: Any, defaults: Mapping[str, Any], path: str | None) -> None:
    """Raise when an already built ``obj`` holds a plain attribute that differs from the
    default of the same name (which it can no longer receive)."""
    for key, default in defaults.items():
        wanted = _plain(default)
        if default is None or wanted is _NOT_PLAIN:
            continue
        try:
            value = getattr(obj, key)
        except Exception:  # no such attribute, or a property that cannot be read
            continue
        held = _plain(value)
        if held is _NOT_PLAIN or held == wanted:
            continue
        raise ConfigError(
            f"{type(obj).__name__}{_where(path)} is already built with {key}={value!r}, but "
            f"{key}={default!r} is given for it here, and a built object cannot take it. "
            f"Build it with {key}={default!r}, or pass its config dict instead of the object.")


def check_arguments(obj: Callable, args: Mapping[str, Any], type_name: str,
                    path: str | None = None) -> None:
    """Raise :class:`BuildArgumentError` if ``obj(**args)`` would be rejected for its keys:
    a key it does not accept (with the closest accepted names), or a required one missing."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # some builtins have no signature; let the call decide
        return
    kinds = {p.kind for p in params.values()}
    named = [n for n, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        for key in args:
            if key not in named:
                hits = closest(key, named)
                hint = f" Did you mean {' or '.join(map(repr, hits))}?" if hits else ""
                raise BuildArgumentError(
                    f"{type_name} does not accept {key!r}{_where(_join(path, key))}.{hint} "
                    f"It accepts: {', '.join(named) or 'no arguments'}.")
    missing = [n for n, p in params.items()
               if p.default is p.empty and n not in args
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise BuildArgumentError(
            f"{type_name}{_where(path)} needs {', '.join(map(repr, missing))}, which the config "
            f"does not set.")


def _join(path: str | None, key: str) -> str:
    return f"{path}.{key}" if path else key


def build_from_cfg(cfg: Any, registry: Registry, default_args: Mapping | None = None) -> Any:
    """MMDetection's spelling of :meth:`Registry.build`."""
    return registry.build(cfg, **dict(default_args or {}))


def all_registries() -> list[Registry]:
    """Every registry made so far (detlab's and any a user made)."""
    return list(_ALL)


MODELS = Registry("model", modules=("detlab.models",))
BACKBONES = NECKS = HEADS = LOSSES = DETECTORS = MODELS  # MMDetection 2.x names, one table
DATASETS = Registry("dataset", modules=("detlab.data",))
TRANSFORMS = Registry("transform", modules=("detlab.data",))
PIPELINES = TRANSFORMS
HOOKS = Registry("hook", modules=("detlab.engine.hooks",))
OPTIMIZERS = Registry("optimizer", modules=("detlab.engine.optim",))
OPTIMIZER_BUILDERS = Registry("optimizer builder", modules=("detlab.engine.optim",))

__all__ = [
    "Registry", "UnknownTypeError", "BuildArgumentError", "RegistrationError", "build_from_cfg",
    "check_arguments", "all_registries", "MODELS", "BACKBONES", "NECKS", "HEADS", "LOSSES",
    "DETECTORS", "DATASETS", "TRANSFORMS", "PIPELINES", "HOOKS", "OPTIMIZERS",
    "OPTIMIZER_BUILDERS",
]
