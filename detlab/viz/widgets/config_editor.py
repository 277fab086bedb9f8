"""ConfigEditor: look at a resolved config, edit it, check it, save the edit as a child config.

Each key is shown with its value and the file that set it (``cfg.provenance(key)``). An edit
(a dotted key and a value, typed as ``--cfg-options`` values are, or set from code) is checked
at once against the constructor of the component that will receive it -- the dict holding the
key names a ``type``, looked up in the registry of its part of the config (``MODELS`` for
``model``, ``DATASETS`` for ``data.<split>``, ``TRANSFORMS`` for pipeline steps, ``HOOKS`` for
the runtime hooks, ``OPTIMIZERS`` for ``optimizer``) -- before anything is built: unknown keys
(with the closest accepted names), missing required ones, and values of an obviously wrong type
(from the parameter's annotation, or its default when it has none).

:meth:`ConfigEditor.save_as` writes a new config holding only the changes, inheriting from the
loaded file through ``_base_``; loading it gives the edited config.
"""

from __future__ import annotations

import ast
import copy
import html
import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from detlab.config import Config, ConfigDiff, ConfigError, closest, load_config, parse_value
from detlab.config import _to_plain as _plain
from detlab.viz.widgets.base import ControlsMixin, WidgetView, array_png, control_row, make_button

EDIT_SOURCE = "ConfigEditor"
_TOP_LEVEL = "(top-level values)"
_MAX_VALUE_CHARS = 90


# --------------------------------------------------------------------------------------------
# annotations: what kind of value a parameter takes
# --------------------------------------------------------------------------------------------

# kind of each annotation name; names missing here (Any, object, a class of the project) accept
# any value, so only obviously wrong values are reported
_KINDS = {
    "int": "int", "float": "float", "bool": "bool", "str": "str", "None": "None",
    "NoneType": "None", "dict": "dict", "Mapping": "dict", "MutableMapping": "dict",
    "ConfigDict": "dict", "list": "seq", "tuple": "seq", "Sequence": "seq",
    "MutableSequence": "seq", "Tensor": "tensor", "Module": "module", "Callable": "callable",
}


@dataclass(frozen=True)
class _Kind:
    """One alternative of an annotation: ``name`` from ``_KINDS`` or ``'literal'``; ``items``
    the alternatives of a sequence's items (None: any) or the values of a literal."""

    name: str
    items: tuple = ()
    any_items: bool = True


def parse_annotation(annotation: Any) -> list[_Kind] | None:
    """The alternatives an annotation (an object or its text) allows, or None when it cannot
    be judged (``Any``, an unknown class, a malformed string)."""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    return _kinds_of(node)


def _union(parts: Sequence[list[_Kind] | None]) -> list[_Kind] | None:
    if any(part is None for part in parts):
        return None
    return [kind for part in parts for kind in part]


def _kinds_of(node: ast.AST) -> list[_Kind] | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_kinds_of(node.left), _kinds_of(node.right)])
    if isinstance(node, ast.Constant):
        if node.value is None:
            return [_Kind("None")]
        return parse_annotation(node.value) if isinstance(node.value, str) else None
    head = node.value if isinstance(node, ast.Subscript) else node
    name = head.attr if isinstance(head, ast.Attribute) else getattr(head, "id", None)
    args = _subscript_args(node)
    if name in ("Optional", "Union"):
        return _union([_kinds_of(a) for a in args] + ([[_Kind("None")]] if name == "Optional"
                                                       else []))
    if name == "Literal":
        return [_Kind("literal", tuple(getattr(a, "value", None) for a in args))]
    kind = _KINDS.get(name or "")
    if kind is None:
        return None
    if kind == "seq" and args:
        items = _union([_kinds_of(a) for a in args
                        if not (isinstance(a, ast.Constant) and a.value is Ellipsis)])
        return [_Kind("seq", tuple(items or ()), items is None)]
    return [_Kind(kind)]


def _subscript_args(node: ast.AST) -> list[ast.AST]:
    if not isinstance(node, ast.Subscript):
        return []
    inner = node.slice
    return list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]


def _kinds_from_default(default: Any) -> list[_Kind] | None:
    """What an unannotated parameter takes, guessed from its default (None always allowed)."""
    if isinstance(default, bool):
        return [_Kind("bool"), _Kind("None")]
    if isinstance(default, (int, float)):
        return [_Kind("float"), _Kind("None")]
    for kind, types in (("str", str), ("dict", Mapping), ("seq", (list, tuple))):
        if isinstance(default, types):
            return [_Kind(kind), _Kind("None")]
    return None


def _type_names(value: Any) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


def matches(kind: _Kind, value: Any) -> bool:
    """Whether ``value`` is of the kind (ints count as floats, 0 and 1 as bools, lists and
    tuples as any sequence)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {
        "None": lambda: value is None, "str": lambda: isinstance(value, str),
        "int": lambda: isinstance(value, int) and not isinstance(value, bool),
        "float": lambda: number,
        "bool": lambda: isinstance(value, bool) or (number and value in (0, 1)),
        "dict": lambda: isinstance(value, Mapping), "literal": lambda: value in kind.items,
        "tensor": lambda: "Tensor" in _type_names(value),
        "module": lambda: "Module" in _type_names(value), "callable": lambda: callable(value),
    }
    if kind.name != "seq":
        return checks[kind.name]()
    if not isinstance(value, (list, tuple)):
        return False
    return kind.any_items or all(any(matches(k, v) for k in kind.items) for v in value)


# --------------------------------------------------------------------------------------------
# components of a config: the dicts that become objects, and their registries
# --------------------------------------------------------------------------------------------


@dataclass
class Component:
    """A dict of the config that is built into an object.

    Attributes:
        path: its dotted key.
        cfg: the dict.
        registry: where its ``type`` is looked up.
        type_name: the registered name.
        ignore: keys the builder consumes itself (not constructor arguments).
        provided: arguments the builder passes itself.
        strict: an unregistered type is a problem (False for layer specs such as
            ``norm_cfg=dict(type='BN')``, which are not built through a registry).
    """

    path: str
    cfg: Mapping[str, Any]
    registry: Any
    type_name: str
    ignore: frozenset[str] = frozenset()
    provided: frozenset[str] = frozenset()
    strict: bool = True


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _typed(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("type"), str)


# arguments a part's builder passes itself, by the part's key: a ResNet plugin's (``plugins=
# [dict(cfg=dict(type='ContextBlock', ...), stages=...)]``) channels are its stage's, and a
# CombinedSampler gives its pos_sampler / neg_sampler its own sampling numbers
PROVIDED_BY_PARENT = {
    "cfg": frozenset({"in_channels"}),
    "pos_sampler": frozenset({"num", "pos_fraction", "neg_pos_ub", "add_gt_as_proposals"}),
    "neg_sampler": frozenset({"num", "pos_fraction", "neg_pos_ub", "add_gt_as_proposals"}),
}


def _model_parts(value: Any, path: str, key: str, in_init: bool = False) -> Iterator[Component]:
    from detlab.registry import MODELS

    if isinstance(value, Mapping):
        if _typed(value):
            # *_cfg dicts (norm_cfg, act_cfg ...), nms, RoI extractors' roi_layer, FPG's *_trans
            # transitions and everything in init_cfg are layer specs read by their owner, not
            # parts built through the registry
            spec = (in_init or key.endswith(("_cfg", "_trans"))
                    or key in ("nms", "roi_layer"))
            yield Component(path, value, MODELS, value["type"], strict=not spec,
                            provided=PROVIDED_BY_PARENT.get(key, frozenset()))
        for child, item in value.items():
            yield from _model_parts(item, _join(path, child), str(child),
                                    in_init or child == "init_cfg")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _model_parts(item, _join(path, i), key, in_init)


def _pipeline(steps: Any, path: str) -> Iterator[Component]:
    from detlab.registry import TRANSFORMS

    for i, step in enumerate(steps if isinstance(steps, (list, tuple)) else []):
        if not _typed(step):
            continue
        where = _join(path, i)
        yield Component(where, step, TRANSFORMS, step["type"])
        if step["type"] != "Albu":  # Albu's transforms are albumentations' own configs
            yield from _pipeline(step.get("transforms"), _join(where, "transforms"))


def _datasets(value: Any, path: str) -> Iterator[Component]:
    from detlab.registry import DATASETS

    if isinstance(value, (list, tuple)):  # a list of datasets is concatenated
        for i, item in enumerate(value):
            yield from _datasets(item, _join(path, i))
        return
    if not _typed(value):
        return
    yield Component(path, value, DATASETS, value["type"], ignore=frozenset({"separate_eval"}))
    yield from _datasets(value.get("dataset"), _join(path, "dataset"))
    yield from _datasets(value.get("datasets"), _join(path, "datasets"))
    yield from _pipeline(value.get("pipeline"), _join(path, "pipeline"))


def _runtime_parts(cfg: Mapping[str, Any]) -> Iterator[Component]:
    """The hooks and optimizer that ``train()`` builds from the runtime keys."""
    from detlab.engine.hooks import LR_POLICIES
    from detlab.registry import HOOKS, OPTIMIZERS

    lr = cfg.get("lr_config")
    if isinstance(lr, Mapping):
        policy = str(lr.get("policy", "fixed"))
        name = LR_POLICIES.get(policy.lower(), f"{policy}LrUpdaterHook")
        yield Component("lr_config", lr, HOOKS, name, ignore=frozenset({"policy"}))
    defaults = dict(optimizer_config="OptimizerHook", checkpoint_config="CheckpointHook")
    for key, default in defaults.items():
        if isinstance(cfg.get(key), Mapping):
            yield Component(key, cfg[key], HOOKS, str(cfg[key].get("type", default)))
    if isinstance(cfg.get("evaluation"), Mapping):
        # the options the hook does not take go to the validation dataset's evaluate()
        yield Component("evaluation", cfg["evaluation"], HOOKS, "EvalHook",
                        ignore=_evaluate_options(cfg) | {"type"},
                        provided=frozenset({"dataloader", "evaluate", "eval_options"}))
    if _typed(cfg.get("optimizer")):
        yield Component("optimizer", cfg["optimizer"], OPTIMIZERS, cfg["optimizer"]["type"],
                        ignore=frozenset({"paramwise_cfg", "constructor"}),
                        provided=frozenset({"params"}))
    log_hooks = (cfg.get("log_config") or {}).get("hooks") or []
    for i, hook in enumerate(log_hooks):
        if _typed(hook):
            yield Component(f"log_config.hooks.{i}", hook, HOOKS, hook["type"],
                            provided=frozenset({"interval"}))
    for i, hook in enumerate(cfg.get("custom_hooks") or []):
        if _typed(hook):
            yield Component(f"custom_hooks.{i}", hook, HOOKS, hook["type"],
                            ignore=frozenset({"priority"}))


def _evaluate_options(cfg: Mapping[str, Any]) -> frozenset[str]:
    """The keyword arguments of the validation dataset's ``evaluate``."""
    import inspect

    from detlab.registry import DATASETS

    val = (cfg.get("data") or {}).get("val")
    dataset_type = val.get("type") if isinstance(val, Mapping) else None
    dataset = DATASETS.get(dataset_type, None) if isinstance(dataset_type, str) else None
    if dataset is None or not hasattr(dataset, "evaluate"):
        return frozenset()
    return frozenset(inspect.signature(dataset.evaluate).parameters) - {"self", "results"}


def find_components(cfg: Mapping[str, Any]) -> list[Component]:
    """Every dict of ``cfg`` that training builds through a registry, with its registry."""
    found = list(_model_parts(cfg.get("model"), "model", "model"))
    for split, value in (cfg.get("data") or {}).items():
        found += _datasets(value, f"data.{split}")
    for key, value in cfg.items():
        if str(key).endswith("pipeline"):  # train_pipeline, test_pipeline variables
            found += _pipeline(value, str(key))
    found += _runtime_parts(cfg)
    return found


# --------------------------------------------------------------------------------------------
# checking a component against its constructor
# --------------------------------------------------------------------------------------------


@dataclass
class ConfigProblem:
    """A problem found in a config: the dotted ``key`` it is about and what is wrong."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unknown_type(component: Component) -> list[ConfigProblem]:
    from detlab.registry import UnknownTypeError

    try:
        component.registry.get(component.type_name, _path=component.path)
    except UnknownTypeError as err:
        return [ConfigProblem(_join(component.path, "type"), str(err))]
    return []


def _per_file(component: Component) -> frozenset[str]:
    """Keys that may be lists because ``ann_file`` is a list (one dataset per file)."""
    if isinstance(component.cfg.get("ann_file"), (list, tuple)):
        return frozenset({"ann_file", "img_prefix", "seg_prefix", "proposal_file"})
    return frozenset()


def _value_problem(component: Component, name: str, param: inspect.Parameter,
                   value: Any) -> ConfigProblem | None:
    if param.annotation is not param.empty:
        kinds, wanted = parse_annotation(param.annotation), param.annotation
        wanted = wanted if isinstance(wanted, str) else inspect.formatannotation(wanted)
    elif param.default is not param.empty:
        kinds, wanted = _kinds_from_default(param.default), type(param.default).__name__
    else:
        return None
    if kinds is None or any(matches(kind, value) for kind in kinds):
        return None
    return ConfigProblem(_join(component.path, name),
                         f"{component.type_name} expects {name}: {wanted}, got "
                         f"{type(value).__name__} {_short(value)}")


def check_component(component: Component) -> list[ConfigProblem]:
    """The problems of one component: an unknown type, keys its constructor does not accept
    (with the closest names), required arguments not set, values of the wrong kind."""
    obj = component.registry.get(component.type_name, None)
    if obj is None:
        return _unknown_type(component) if component.strict else []
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return []
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                           p.KEYWORD_ONLY)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in component.cfg.items()
            if k not in ("type", "_delete_") and k not in component.ignore}
    problems = []
    for key, value in args.items():
        if key in named:
            if key not in _per_file(component):
                problems.append(_value_problem(component, key, named[key], value))
        elif not open_ended:
            hits = closest(key, named)
            hint = f" Did you mean {' or '.join(map(repr, hits))}?" if hits else ""
            problems.append(ConfigProblem(_join(component.path, key), (
                f"{component.type_name} does not accept {key!r}.{hint} It accepts: "
                f"{', '.join(named) or 'no arguments'}.")))
    missing = [n for n, p in named.items() if p.default is p.empty and n not in args
               and n not in component.provided]
    if missing:
        problems.append(ConfigProblem(component.path, (
            f"{component.type_name} needs {', '.join(map(repr, missing))}, which the config "
            f"does not set.")))
    return [p for p in problems if p is not None]


def check_config(cfg: Mapping[str, Any] | Config) -> list[ConfigProblem]:
    """The problems of every component of ``cfg`` (see :func:`check_component`)."""
    data = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    return [problem for component in find_components(data)
            for problem in check_component(component)]


# --------------------------------------------------------------------------------------------
# the child config that reproduces an edit
# --------------------------------------------------------------------------------------------


def same_value(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1`` is not ``1.0``, a list not a
    tuple), as a written config must reproduce them."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(
            same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def config_delta(base: Mapping[str, Any], edited: Mapping[str, Any]) -> dict[str, Any]:
    """What a child config must set so that merging it into ``base`` (the ``_base_`` rules)
    gives ``edited``: changed dicts as nested dicts, with ``_delete_=True`` where a key went
    away or a dict replaces something else; lists, tuples and scalars whole."""
    delta: dict[str, Any] = {}
    for key, new in edited.items():
        if key not in base:
            delta[key] = _plain(new)
            continue
        old = base[key]
        if isinstance(new, Mapping) and isinstance(old, Mapping):
            if any(k not in new for k in old):  # only _delete_ takes keys away
                delta[key] = {"_delete_": True, **_plain(new)}
            elif sub := config_delta(old, new):
                delta[key] = sub
        elif isinstance(new, Mapping) and old is not None:  # a dict over a scalar or a list
            delta[key] = {"_delete_": True, **_plain(new)}
        elif not same_value(old, new):
            delta[key] = _plain(new)
    return delta


def child_config_text(base_path: str, delta: Mapping[str, Any]) -> str:
    """The text of a ``.py`` config inheriting from ``base_path`` and setting ``delta``."""
    from detlab.config import _format  # the formatting Config.pretty_text uses

    lines = [f"_base_ = {base_path!r}"]
    for key, value in delta.items():
        if isinstance(key, str) and key.isidentifier():
            lines.append(f"{key} = {_format(value, 0, len(key) + 3)}")
        else:
            lines.append(f"globals()[{key!r}] = {_format(value, 0, 14 + len(repr(key)))}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# showing values
# --------------------------------------------------------------------------------------------


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf below ``value``: dicts are opened, and lists that
    hold dicts (pipelines); other lists are leaves."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from leaves(item, _join(prefix, key))
    elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
        for i, item in enumerate(value):
            yield from leaves(item, _join(prefix, i))
    else:
        yield prefix, value


def value_text(value: Any) -> str:
    """``value`` written so that :func:`detlab.config.parse_value` reads it back (for scalars,
    lists and tuples of them)."""
    if isinstance(value, list):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ",".join(value_text(v) for v in value) + ")"
    return repr(value) if isinstance(value, Mapping) else str(value)


def _shown(value: Any) -> str:
    text = repr(_plain(value))
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 3] + "..."


# --------------------------------------------------------------------------------------------
# the editor
# --------------------------------------------------------------------------------------------


@dataclass
class ConfigRow:
    """One leaf of the config as the editor shows it: dotted ``key``, ``value``, the file
    (or override) that set it, whether the edit changed it, its problems."""

    key: str
    value: Any
    source: str
    edited: bool
    problems: list[str] = field(default_factory=list)


class ConfigEditor(ControlsMixin, WidgetView):
    """Look at, edit and check a config, then save the edit as a config of its own.

    Args:
        config: a config path, :class:`~detlab.config.Config` or dict.

    The edit is ``self.cfg``; ``self.original`` is the config as it was handed over. With the
    file it came from, :meth:`diff` and :meth:`save_as` compare against that file as loaded
    afresh (so changes made in memory before the editor saw it are kept too).

    Widgets carry CSS classes for browser tests: ``detlab-config-tree`` (an Accordion of
    sections), ``detlab-key`` (a Combobox of keys), ``detlab-value``, ``detlab-apply``,
    ``detlab-reset``, ``detlab-save-path``, ``detlab-save``, ``detlab-problems``,
    ``detlab-diff``, ``detlab-status``, ``detlab-config-header``.
    """

    def __init__(self, config: str | os.PathLike | Mapping[str, Any] | Config) -> None:
        self.cfg = load_config(config)
        self.original = self.cfg.copy()
        self.filename = self.cfg.filename
        self.base = self._file_config()
        self.edits: dict[str, Any] = {}
        self._build_widgets()
        self._refresh()

    def _file_config(self) -> Config | None:
        if not self.filename or not os.path.isfile(self.filename):
            return None
        return Config.fromfile(self.filename, import_custom_modules=False)

    # ---- editing -------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value at dotted ``key`` of the edited config."""
        return self.cfg._lookup(key)

    def set(self, key: str, value: Any) -> list[str]:
        """Set dotted ``key`` (``'model.bbox_head.num_classes'``, digits index lists) to
        ``value`` as ``--cfg-options`` would (a dict merges into the dict it replaces); returns
        the problems of the component the key belongs to (the dict holding it, or the dict
        set), those nested in it included (see :meth:`problems`)."""
        self.cfg.merge_from_dict({key: value}, source=EDIT_SOURCE)
        self.edits.pop(key, None)
        self.edits[key] = copy.deepcopy(value)  # reset() applies it again, as it was
        self._refresh()
        # a dict is a component itself; a plain value belongs to the dict holding it
        scope = key if isinstance(self.get(key), Mapping) or "." not in key \
            else key.rsplit(".", 1)[0]
        return [str(p) for p in check_config(self.cfg)
                if p.key == scope or p.key.startswith(scope + ".")]

    def set_text(self, key: str, text: str) -> list[str]:
        """:meth:`set` with ``text`` read by :func:`detlab.config.parse_value` (``3``,
        ``0.01``, ``true``, ``[1,2]``, ``(640,480)``, anything else a string)."""
        return self.set(key, parse_value(text))

    def reset(self, key: str | None = None) -> None:
        """Undo the edits of ``key`` (and below it), or all edits."""
        kept = {} if key is None else {k: v for k, v in self.edits.items()
                                       if k != key and not k.startswith(key + ".")}
        self.cfg = self.original.copy()
        self.edits = {}
        for edited, value in kept.items():
            self.cfg.merge_from_dict({edited: value}, source=EDIT_SOURCE)
            self.edits[edited] = value
        self._refresh()

    # ---- checking and comparing ----------------------------------------------------------

    def problems(self) -> list[str]:
        """What would fail or be ignored when building the edited config: ``'key: message'``
        for unknown types and keys, missing required arguments and wrongly typed values."""
        return [str(problem) for problem in check_config(self.cfg)]

    def diff(self) -> ConfigDiff:
        """What the edit changes relative to the loaded file (or, for a config without a
        file, relative to the config handed over)."""
        reference = self.base if self.base is not None else self.original
        return reference.diff(self.cfg)

    def save_as(self, path: str | os.PathLike) -> str:
        """Write the edited config to a new ``.py`` file: ``_base_`` names the loaded file
        (relative to the new one) and only the changed keys follow. A config without a file is
        written whole. Loading the new file gives the edited config (checked); returns the
        path."""
        path = os.path.abspath(os.fspath(path))
        if not path.endswith(".py"):
            raise ValueError(f"save_as writes a .py config; {path!r} does not end in .py")
        if self.filename and os.path.abspath(self.filename) == path:
            raise ValueError(f"{path} is the loaded file itself; save the edit under a new name "
                             "(it inherits from this file)")
        if self.base is None:
            text = self.cfg.pretty_text
        else:
            gone = [k for k in self.base if k not in self.cfg]
            if gone:
                raise ConfigError(f"the edit removes top-level keys {gone}, which a child "
                                  f"config cannot do; set them to None instead")
            delta = config_delta(self.base._cfg_dict, self.cfg._cfg_dict)
            text = child_config_text(_relative(self.filename, path), delta)
        _write(path, text)
        loaded = Config.fromfile(path, import_custom_modules=False)
        if not same_value(loaded._cfg_dict, self.cfg._cfg_dict):
            raise ConfigError(f"{path} does not load back as the edited config:\n"
                              f"{self.cfg.diff(loaded)}")
        return path

    # ---- the view ------------------------------------------------------------------------

    def rows(self, section: str | None = None) -> list[ConfigRow]:
        """One row per leaf key (of one top-level ``section``, or all): its value, the file
        that set it, whether the edit changed it and its problems."""
        problems: dict[str, list[str]] = {}
        for problem in check_config(self.cfg):
            problems.setdefault(problem.key, []).append(problem.message)
        changed = {row["key"] for row in self.diff().rows()}
        out = []
        for key, value in leaves(self.cfg._cfg_dict):
            if section is not None and _section_of(self.cfg, key) != section:
                continue
            # a component's own problems (a missing argument) show on its type row
            found = problems.get(key, []) + (problems.get(key[:-5], [])
                                             if key.endswith(".type") else [])
            out.append(ConfigRow(key, value, self._source(key), _is_changed(key, changed), found))
        return out

    def sections(self) -> list[str]:
        """The top-level keys that hold dicts or lists, then one section for the others."""
        names = [str(k) for k, v in self.cfg.items() if isinstance(v, (Mapping, list, tuple))]
        return names + ([_TOP_LEVEL] if len(names) < len(self.cfg) else [])

    def _source(self, key: str) -> str:
        source = self.cfg.provenance(key) or "?"
        if self.filename and os.path.isabs(source) and os.path.exists(source):
            return os.path.relpath(source, os.path.dirname(self.filename))
        return source

    def render_png(self) -> bytes:
        """The edits, the problems and the open section as a picture (PIL text)."""
        lines = [(f"config: {self.filename or '(no file)'}", (0, 0, 0))]
        lines += [(line, (150, 90, 0)) for line in _diff_lines(self.diff())]
        lines += [(f"! {p}", (176, 0, 32)) for p in self.problems()]
        section = self._open_section()
        if section is None:
            lines.append((f"sections (open one to list its keys): {', '.join(self.sections())}",
                          (0, 0, 0)))
        else:
            lines.append((f"[{section}]", (0, 0, 0)))
            for row in self.rows(section):
                color = (176, 0, 32) if row.problems else (150, 90, 0) if row.edited \
                    else (40, 40, 40)
                lines.append((f"  {row.key} = {_shown(row.value)}    <- {row.source}", color))
        return array_png(_text_picture(lines))

    def summary(self) -> str:
        count = len(self.diff().rows())
        return (f"ConfigEditor: {os.path.basename(self.filename or 'config')}, "
                f"{count} changed key{'s' * (count != 1)}, {len(self.problems())} problems")

    # ---- widgets -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        import ipywidgets as w

        self._header, self._status = w.HTML(), w.HTML()
        self._problems, self._diff = w.HTML(), w.HTML()
        self._tree = w.Accordion()
        self._key = w.Combobox(placeholder="dotted key, e.g. model.bbox_head.num_classes",
                               description="key", ensure_option=False,
                               layout=w.Layout(flex="2 1 300px", width="auto"))
        self._value = w.Text(description="value", placeholder="3, 0.01, [1,2], (640,480)",
                             layout=w.Layout(flex="1 1 220px", width="auto"))
        self._apply = make_button(w, "set", "detlab-apply", "check")
        self._reset = make_button(w, "reset", "detlab-reset", "undo")
        self._path = w.Text(description="save as", placeholder="my_config.py",
                            layout=w.Layout(flex="2 1 300px", width="auto"))
        self._save = make_button(w, "save", "detlab-save", "save")
        for widget, css in ((self._header, "detlab-config-header"), (self._status, "detlab-status"),
                            (self._problems, "detlab-problems"), (self._diff, "detlab-diff"),
                            (self._tree, "detlab-config-tree"), (self._key, "detlab-key"),
                            (self._value, "detlab-value"), (self._path, "detlab-save-path")):
            widget.add_class(css)
        self._connect()
        self.widget = w.VBox([self._header,
                              control_row(w, [self._key, self._value, self._apply, self._reset]),
                              self._status, self._problems, self._diff, self._tree,
                              control_row(w, [self._path, self._save])])
        self.widget.add_class("detlab-config-editor")

    def _connect(self) -> None:
        self._apply.on_click(lambda _: self._safely(self.set_text, self._key.value.strip(),
                                                    self._value.value))
        self._reset.on_click(lambda _: self._safely(
            self.reset, self._key.value.strip() or None))
        self._save.on_click(lambda _: self._safely(self._save_clicked))
        self._key.observe(self._on_key, names="value")

    def _on_key(self, change: Mapping[str, Any]) -> None:
        try:
            value = self.get(str(change["new"]).strip())
        except (KeyError, ConfigError):
            return  # a key being typed, or a new one
        self._value.value = value_text(value)

    def _save_clicked(self) -> None:
        path = self._path.value.strip()
        if not path:
            raise ValueError("type the path of the new config first")
        written = self.save_as(path)
        self._status.value = f"saved <code>{html.escape(written)}</code>"

    def open(self, section: str | None) -> None:
        """Expand ``section`` of the tree (a top-level key such as ``'model'``, or
        ``'(top-level values)'``); ``None`` collapses it."""
        names = self.sections()
        if section is not None and section not in names:
            from detlab.config import did_you_mean

            raise KeyError(f"the config has no section {section!r}."
                           f"{did_you_mean(section, names)}")
        self._tree.selected_index = None if section is None else names.index(section)

    def _open_section(self) -> str | None:
        index = self._tree.selected_index if getattr(self, "_tree", None) else None
        names = self.sections()
        return names[index] if index is not None and index < len(names) else None

    def _refresh(self) -> None:
        import ipywidgets as w

        if getattr(self, "_tree", None) is None:
            return
        names = self.sections()
        selected = self._tree.selected_index
        by_section: dict[str, list[ConfigRow]] = {name: [] for name in names}
        for row in self.rows():
            by_section[_section_of(self.cfg, row.key)].append(row)
        self._tree.children = [w.HTML(_table_html(by_section[n])) for n in names]
        self._tree.titles = tuple(names)
        self._tree.selected_index = selected if selected is not None and \
            selected < len(names) else None
        self._key.options = tuple(key for key, _ in leaves(self.cfg._cfg_dict))
        problems = self.problems()
        self._problems.value = _list_html("problems", problems, "#b00020")
        self._diff.value = _list_html("changes", _diff_lines(self.diff()), "#965a00")
        self._header.value = f"<b>{html.escape(self.summary())}</b>"
        self._status.value = ""


def _section_of(cfg: Config, key: str) -> str:
    head = key.split(".", 1)[0]
    return head if isinstance(cfg.get(head), (Mapping, list, tuple)) else _TOP_LEVEL


def _is_changed(key: str, changed: set[str]) -> bool:
    """A leaf changed when the diff names it, a key above it or a key below it."""
    return any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in changed)


def _relative(target: str, new_file: str) -> str:
    try:
        return os.path.relpath(target, os.path.dirname(new_file))
    except ValueError:  # another drive (Windows): an absolute path still works in _base_
        return os.path.abspath(target)


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _diff_lines(diff: ConfigDiff) -> list[str]:
    return [] if not diff else str(diff).splitlines()


def _list_html(title: str, items: Sequence[str], color: str) -> str:
    if not items:
        return ""
    body = "".join(f"<li>{html.escape(item)}</li>" for item in items)
    return f"<b>{title}</b><ul style='color:{color};margin:0'>{body}</ul>"


def _table_html(rows: Sequence[ConfigRow]) -> str:
    """A table of key, value and source; edited rows shaded, rows with problems in red."""
    cells = []
    for row in rows:
        style = "background:#fff3c4;" if row.edited else ""
        if row.problems:
            style += "color:#b00020;"
        title = html.escape(" | ".join(row.problems), quote=True)
        cells.append(f"<tr style='{style}' title='{title}'><td><code>{html.escape(row.key)}"
                     f"</code></td><td><code>{html.escape(_shown(row.value))}</code></td>"
                     f"<td style='color:#777'>{html.escape(row.source)}</td></tr>")
    return ("<table class='detlab-config-table'><tr><th>key</th><th>value</th><th>set in</th>"
            "</tr>" + "".join(cells) + "</table>")


def _text_picture(lines: Sequence[tuple[str, tuple[int, int, int]]],
                  max_lines: int = 60) -> Any:
    """Coloured lines of text on white, as an ``H x W x 3`` uint8 array."""
    import textwrap

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    lines = [(part, color) for text, color in lines
             for part in textwrap.wrap(text, 170, subsequent_indent="      ") or [""]]
    if len(lines) > max_lines:
        lines = [*lines[:max_lines - 1], (f"... {len(lines) - max_lines + 1} more lines",
                                          (120, 120, 120))]
    font = ImageFont.load_default(size=13)
    step = 17
    width = min(1400, 20 + max(int(font.getlength(text)) for text, _ in lines))
    canvas = Image.new("RGB", (max(width, 200), 12 + step * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (text, color) in enumerate(lines):
        draw.text((10, 6 + i * step), text, fill=color, font=font)
    return np.asarray(canvas).copy()


__all__ = ["ConfigEditor", "ConfigProblem", "ConfigRow", "Component", "check_config",
           "check_component", "find_components", "config_delta", "child_config_text",
           "parse_annotation", "matches", "leaves", "value_text", "same_value", "EDIT_SOURCE"]
