"""Config: MMDetection 2.x configuration files (``_base_``, ``_delete_``, overrides, provenance).

A config is a ``.py``, ``.json`` or ``.yaml`` file whose top-level names are the config keys. It may
name ``_base_`` files (a path or a list of paths, relative to itself) that are loaded first; its own
keys are then merged into theirs:

- a dict merges key by key into the base dict of the same name;
- ``_delete_=True`` inside a dict replaces the base dict instead of merging into it;
- a dict replaces a base value of ``None`` (MMDetection would want ``_delete_=True`` there);
- lists, tuples and scalars replace what the base had;
- a key defined by two files of one ``_base_`` list is an error.

Variables of a ``.py`` config are plain Python: a child that redefines ``train_pipeline`` does not
change the dicts its base built from the old value; it must pass the variable again. Imports,
functions, classes and private names (``_x``) do not become keys.

Every key of the result remembers the file (or override) that last set it: ``cfg.provenance(key)``.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import json
import keyword
import math
import os
import re
import sys
import types
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
CUSTOM_IMPORTS_KEY = "custom_imports"
SUFFIXES = (".py", ".json", ".yaml", ".yml")

_BASE_REF = re.compile(r"\{\{\s*_base_\.([\w.]+)\s*\}\}")
_PREDEFINED = re.compile(
    r"\{\{\s*(fileDirname|fileBasename|fileBasenameNoExtension|fileExtname)\s*\}\}")


class ConfigError(Exception):
    """A config that cannot be loaded, merged or built as written; the message says where, why."""


class ConfigKeyError(ConfigError, KeyError):
    """A missing or conflicting key. Prints its message without ``KeyError``'s quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file, or a ``_base_`` it names, does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def closest(name: str, candidates: Iterable[str], n: int = 3,
            cutoff: float = 0.6) -> list[str]:
    """The candidates that look most like ``name`` (case-insensitive), best first; ``cutoff``
    is the least similarity (0..1, :mod:`difflib`'s ratio) a candidate needs."""
    candidates = [str(c) for c in candidates]
    by_lower = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=cutoff)
    return [by_lower[h] for h in hits]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" Did you mean 'x' or 'y'?"`` for the closest candidates, or ``""`` when none is close."""
    hits = closest(name, candidates)
    if not hits:
        return ""
    return " Did you mean " + " or ".join(repr(h) for h in hits) + "?"


# --------------------------------------------------------------------------------------------
# ConfigDict: a dict with attribute access at any depth
# --------------------------------------------------------------------------------------------


class ConfigDict(dict):
    """A ``dict`` whose keys are also attributes (``cfg.model.backbone.depth``).

    Plain dicts stored in it, also inside lists and tuples, become ``ConfigDict`` too. A key that
    is also the name of a dict method (``keys``, ``items``, ``get``, ``update``...; ``Collect``
    has ``keys``) is read with ``cfg['keys']``: the attribute stays the method.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            hint = did_you_mean(name, [k for k in self if isinstance(k, str)])
            raise AttributeError(f"config has no key {name!r}.{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> list[str]:
        return list(super().__dir__()) + [k for k in self if isinstance(k, str)]

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self) -> ConfigDict:
        return ConfigDict(self)

    def to_dict(self) -> dict:
        """Plain nested ``dict``/``list``/``tuple`` values, no ``ConfigDict`` left."""
        return _to_plain(self)


def _wrap(value: Any) -> Any:
    """Turn plain dicts (also inside lists and tuples) into ConfigDicts; keep identity otherwise."""
    if isinstance(value, ConfigDict):
        return value
    if isinstance(value, dict):
        return ConfigDict(value)
    if isinstance(value, (list, tuple)):
        items = [_wrap(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else type(value)(items)
    return value


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    return value


def _tree_copy(value: Any) -> Any:
    """Copy every dict/list/tuple node, so that no two keys share a mutable value.

    ``copy.deepcopy`` keeps shared objects shared; a ``.py`` config often puts one
    ``test_pipeline`` list under both ``data.val`` and ``data.test``, and an override of one must
    not change the other.
    """
    if isinstance(value, dict):
        return ConfigDict({k: _tree_copy(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_tree_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_tree_copy(v) for v in value)
    return value


def _strip_delete(value: Any) -> Any:
    """Remove every ``_delete_`` flag below ``value`` (it never reaches a constructor)."""
    if isinstance(value, dict):
        return ConfigDict({k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY})
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_strip_delete(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# Provenance: which file (or override) set each key
# --------------------------------------------------------------------------------------------


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


class Provenance:
    """Records ``dotted key -> source`` in the order the sources set them."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[int, str]] = {}
        self._seq = 0

    def copy(self) -> Provenance:
        new = Provenance()
        new._records = dict(self._records)
        new._seq = self._seq
        return new

    def set(self, path: str, source: str) -> None:
        """``path`` (and everything below it) was just set by ``source``."""
        self.drop(path)
        self._seq += 1
        self._records[path] = (self._seq, source)

    def drop(self, path: str) -> None:
        below = path + "."
        for key in [k for k in self._records if k == path or k.startswith(below)]:
            del self._records[key]

    def update(self, other: Provenance) -> None:
        for path, (_, source) in sorted(other._records.items(), key=lambda kv: kv[1][0]):
            self._seq += 1
            self._records[path] = (self._seq, source)

    def lookup(self, path: str) -> str | None:
        """The source that last set ``path`` or anything below it; else the nearest ancestor's."""
        below = path + "."
        inside = [rec for key, rec in self._records.items() if key == path or key.startswith(below)]
        if inside:
            return max(inside)[1]
        parts = path.split(".")
        while parts:
            parts.pop()
            rec = self._records.get(".".join(parts))
            if rec is not None:
                return rec[1]
        return None

    def as_dict(self) -> dict[str, str]:
        return {k: src for k, (_, src) in sorted(self._records.items(), key=lambda kv: kv[1][0])}


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def _is_index(key: Any) -> bool:
    return isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit())


def _merge(child: Mapping, base: Any, source: str, prov: Provenance, prefix: str = "",
           allow_list_keys: bool = False) -> Any:
    """Merge ``child`` into ``base`` with the ``_base_`` rules; return the merged copy.

    With ``allow_list_keys`` (overrides), a digit key indexes into a list of the base:
    ``{'pipeline': {'2': {'img_scale': (1, 2)}}}`` changes one step of a pipeline.
    """
    if allow_list_keys and isinstance(base, (list, tuple)):
        return _merge_into_list(child, base, source, prov, prefix)
    out = ConfigDict(base)
    for key, value in child.items():
        path = _join(prefix, key)
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop(DELETE_KEY, False)
            if not isinstance(delete, bool):
                raise ConfigError(f"{source}: '{path}.{DELETE_KEY}' must be True or False, "
                                  f"got {delete!r}")
            # A base value of None is "not set": a dict replaces it without _delete_ (MMDetection
            # demands _delete_ here, e.g. for optimizer_config.grad_clip=None in schedule_1x).
            if key in out and out[key] is not None and not delete:
                _check_mergeable(out[key], value, path, source, prov, allow_list_keys)
                out[key] = _merge(value, out[key], source, prov, path, allow_list_keys)
                continue
            value = _strip_delete(value)
        else:
            value = _strip_delete(value)
        out[key] = value
        prov.set(path, source)
    return out


def _check_mergeable(base_value: Any, value: dict, path: str, source: str, prov: Provenance,
                     allow_list_keys: bool) -> None:
    allowed = (dict, list, tuple) if allow_list_keys else (dict,)
    if isinstance(base_value, allowed):
        return
    origin = prov.lookup(path) or "the base config"
    raise ConfigError(
        f"{source}: '{path}' is a dict here but a {type(base_value).__name__} "
        f"({base_value!r}) in {origin}, so the two cannot be merged. Add {DELETE_KEY}=True "
        f"to '{path}' to replace the base value instead.")


def _merge_into_list(child: Mapping, base: list | tuple, source: str, prov: Provenance,
                     prefix: str) -> list | tuple:
    items = list(base)
    for key, value in child.items():
        path = _join(prefix, key)
        if not _is_index(key):
            raise ConfigKeyError(f"{source}: '{prefix}' is a list, so '{path}' must use an "
                                 f"integer index, not {key!r}")
        idx = int(key)
        if not -len(items) <= idx < len(items):
            raise ConfigKeyError(f"{source}: index {idx} in '{path}' is out of range: "
                                 f"'{prefix}' has {len(items)} items")
        if isinstance(value, dict) and isinstance(items[idx], (dict, list, tuple)) \
                and not value.get(DELETE_KEY, False):
            items[idx] = _merge(value, items[idx], source, prov, path, True)
        else:
            items[idx] = _strip_delete(_tree_copy(value))
            prov.set(path, source)
    return items if isinstance(base, list) else type(base)(items)


def _check_settable(full_key: str, parts: list[str], cfg: Mapping, source: str) -> None:
    """Fail if a dotted key walks through a scalar of ``cfg`` (``optimizer.lr.x``)."""
    node: Any = cfg
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, (list, tuple)) and _is_index(part) \
                and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return  # a new key, or an index out of range that the merge reports
        if node is not None and not isinstance(node, (dict, list, tuple)):
            where = ".".join(parts[:depth + 1])
            raise ConfigKeyError(f"{source}: cannot set '{full_key}': '{where}' is a "
                                 f"{type(node).__name__} ({node!r}), not a dict or list")


_ABSENT = object()  # a dotted key that does not exist yet
# leaf keys whose value may be a number or a word: mmcv's fp16 loss_scale=512. or 'dynamic'
NUMBER_OR_WORD_KEYS = frozenset({"loss_scale"})


def _value_at(cfg: Any, parts: list[str]) -> Any:
    """The value at the dotted key ``parts`` of ``cfg``, or ``_ABSENT``."""
    node = cfg
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and _is_index(part) \
                and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value_type(key: str, old: Any, new: Any, source: str, prov: Provenance) -> None:
    """Fail when ``new`` puts a string where the config holds a number (``optimizer.lr=1e-3x``
    over ``0.01``); a dict value is checked key by key against the dict it merges into."""
    if isinstance(new, Mapping):
        if new.get(DELETE_KEY, False):
            return  # replaces the whole dict: nothing of the old one constrains it
        for sub, value in new.items():
            below = _value_at(old, [str(sub)])
            if below is not _ABSENT:
                _check_value_type(f"{key}.{sub}", below, value, source, prov)
        return
    if not _is_number(old) or not isinstance(new, str) \
            or key.rsplit(".", 1)[-1] in NUMBER_OR_WORD_KEYS:
        return
    origin = prov.lookup(key) or "the config"
    try:
        float(new)
        fix = f"write the number without quotes: {key}={new}"
    except ValueError:
        fix = f"write a number, e.g. {key}={old!r}"
    raise ConfigError(f"{source}: {key}={new!r} is not a number, but the config holds a "
                      f"number there ({old!r}, set in {origin}); {fix}")


def check_override_types(options: Mapping[str, Any], cfg: Config | Mapping,
                         source: str = "cfg_options") -> None:
    """Raise :class:`ConfigError` naming the key when a dotted override (``{'optimizer.lr':
    '1e-3x'}``) gives a string where ``cfg`` holds a number; strings over strings, numbers
    over numbers (an int over a float too) and new keys pass. Keys named in
    :data:`NUMBER_OR_WORD_KEYS` take either."""
    data = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    prov = cfg._provenance if isinstance(cfg, Config) else Provenance()
    for full_key, value in options.items():
        old = _value_at(data, str(full_key).split("."))
        if old is not _ABSENT:
            _check_value_type(str(full_key), old, value, source, prov)


def _nest_dotted(options: Mapping[str, Any], source: str, cfg: Mapping) -> dict:
    """``{'a.b.0.c': v}`` -> ``{'a': {'b': {'0': {'c': v}}}}``, checking paths through scalars."""
    nested: dict = {}
    for full_key, value in options.items():
        parts = str(full_key).split(".")
        if any(p == "" for p in parts):
            raise ConfigKeyError(f"{source}: {full_key!r} is not a valid dotted key")
        _check_settable(str(full_key), parts, cfg, source)
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigKeyError(f"{source}: {full_key!r} conflicts with another option")
        target[parts[-1]] = value
    return nested


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------


def _substitute_predefined(text: str, path: str) -> str:
    dirname, basename = os.path.split(path)
    stem, ext = os.path.splitext(basename)
    values = {"fileDirname": dirname, "fileBasename": basename,
              "fileBasenameNoExtension": stem, "fileExtname": ext}
    # Inside a string literal the value is inserted as is; escape backslashes for Windows paths.
    return _PREDEFINED.sub(lambda m: values[m.group(1)].replace("\\", "/"), text)


_QUOTED_BASE_REF = re.compile(r"""['"]?""" + _BASE_REF.pattern + r"""['"]?""")


def _base_value(ref: str, base: Mapping, path: str) -> Any:
    """The value at dotted ``ref`` in the merged bases (a copy), for ``{{_base_.ref}}``."""
    node: Any = base
    for part in ref.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and _is_index(part) \
                and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            hint = did_you_mean(part, node) if isinstance(node, dict) else ""
            raise ConfigKeyError(f"{path}: '{{{{_base_.{ref}}}}}' names a key that its _base_ "
                                 f"files do not define.{hint}")
    return _tree_copy(node)


def _hide_base_refs(text: str) -> tuple[str, dict[str, str]]:
    """Replace ``{{_base_.a.b}}`` (with or without quotes around it) by a unique placeholder."""
    refs: dict[str, str] = {}

    def placeholder(match: re.Match) -> str:
        key = f"_detlab_base_ref_{uuid.uuid4().hex}"
        refs[key] = match.group(1)
        return f'"{key}"'

    return _QUOTED_BASE_REF.sub(placeholder, text), refs


def _resolve_base_refs(value: Any, refs: dict[str, str], base: Mapping, path: str) -> Any:
    """Swap the placeholders of :func:`_hide_base_refs` for the base values (json/yaml files)."""
    if isinstance(value, str) and value in refs:
        return _base_value(refs[value], base, path)
    if isinstance(value, dict):
        return ConfigDict({k: _resolve_base_refs(v, refs, base, path) for k, v in value.items()})
    if isinstance(value, list):
        return [_resolve_base_refs(v, refs, base, path) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve_base_refs(v, refs, base, path) for v in value)
    return value


def _is_config_value(name: str, value: Any) -> bool:
    if name.startswith("_"):
        return False
    return not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                                  type))


def _python_bases(text: str, path: str) -> Any:
    """The ``_base_`` of a ``.py`` config, read without running the file (a literal)."""
    try:
        tree = ast.parse(_QUOTED_BASE_REF.sub("None", text), path)
    except SyntaxError as err:
        raise ConfigError(f"{path}, line {err.lineno}: syntax error in config: {err.msg}") from err
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == BASE_KEY for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                raise ConfigError(f"{path}, line {node.lineno}: {BASE_KEY} must be a literal path "
                                  f"or list of paths") from None
    return []


def _read_python(text: str, path: str, base: Mapping) -> dict:
    """Run a ``.py`` config; ``{{_base_.x}}`` is replaced by the base value's Python literal first,
    so that it can take part in expressions (``lr = {{_base_.optimizer.lr}} * 2``)."""
    text = _QUOTED_BASE_REF.sub(lambda m: _inline(_base_value(m.group(1), base, path)), text)
    try:
        code = compile(text, path, "exec")
    except SyntaxError as err:
        raise ConfigError(f"{path}, line {err.lineno}: syntax error in config: {err.msg}") from err
    namespace: dict[str, Any] = {"__file__": path, "__name__": "__detlab_config__"}
    exec(code, namespace)  # a .py config is Python by design, as in MMDetection
    _reject_top_level_delete(namespace, path)
    return {k: v for k, v in namespace.items() if _is_config_value(k, v)}


def _reject_top_level_delete(raw: Mapping, path: str) -> None:
    if DELETE_KEY in raw:
        raise ConfigError(f"{path}: {DELETE_KEY} at the top level of a file has nothing to "
                          f"replace; put it inside the dict that should replace its base, e.g. "
                          f"optimizer = dict({DELETE_KEY}=True, type='AdamW', lr=1e-4)")


def _read_data_file(text: str, path: str) -> tuple[dict, dict[str, str]]:
    """The top-level mapping of a json/yaml config, and its ``{{_base_.x}}`` placeholders."""
    text, refs = _hide_base_refs(text)
    if path.lower().endswith(".json"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}, line {err.lineno}: invalid JSON: {err.msg}") from err
    else:
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys to values, "
                          f"not a {type(raw).__name__}")
    _reject_top_level_delete(raw, path)
    return raw, refs


def _base_paths(bases: Any, path: str) -> list[str]:
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    here = os.path.dirname(path)
    return [os.path.normpath(os.path.join(here, os.path.expanduser(b))) for b in bases]


def _load_bases(path: str, bases: Any, chain: tuple[str, ...]) -> tuple[ConfigDict, Provenance]:
    """Load and join the ``_base_`` files of ``path``; a key may come from one of them only."""
    merged = ConfigDict()
    prov = Provenance()
    owner: dict[str, str] = {}
    for base_path in _base_paths(bases, path):
        if not os.path.isfile(base_path):
            raise ConfigFileNotFoundError(
                f"{path}: _base_ file not found: {base_path} (paths in {BASE_KEY} are relative "
                f"to the file that names them)")
        base_cfg, base_prov = _load_tree(base_path, chain + (path,))
        for key in base_cfg:
            if key in merged:
                raise ConfigKeyError(
                    f"{path}: key '{key}' is defined in two _base_ files, {owner[key]} and "
                    f"{base_path}; a key may come from one base only (remove it from one of them,"
                    f" or set it in {os.path.basename(path)} itself)")
            owner[key] = base_path
        merged.update(base_cfg)
        prov.update(base_prov)
    return merged, prov


def _load_tree(path: str, chain: tuple[str, ...]) -> tuple[ConfigDict, Provenance]:
    """Load ``path`` with all its bases merged in; ``chain`` is the files that asked for it."""
    if path in chain:
        cycle = " -> ".join(chain[chain.index(path):] + (path,))
        raise ConfigError(f"cycle of _base_ files: {cycle}")
    if os.path.splitext(path)[1].lower() not in SUFFIXES:
        raise ConfigError(f"{path}: a config file must end in .py, .json, .yaml or .yml")
    with open(path, encoding="utf-8") as f:
        text = _substitute_predefined(f.read(), path)
    if path.lower().endswith(".py"):
        merged, prov = _load_bases(path, _python_bases(text, path), chain)
        raw = _read_python(text, path, merged)
    else:
        raw, refs = _read_data_file(text, path)
        merged, prov = _load_bases(path, raw.pop(BASE_KEY, []), chain)
        raw = _resolve_base_refs(raw, refs, merged, path)
    return _merge(raw, merged, path, prov), prov


# --------------------------------------------------------------------------------------------
# Writing: pretty text (valid Python), json, yaml
# --------------------------------------------------------------------------------------------


def _is_identifier(key: Any) -> bool:
    return isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        if all(_is_identifier(k) for k in value):
            return "dict(" + ", ".join(f"{k}={_inline(v)}" for k, v in value.items()) + ")"
        return "{" + ", ".join(f"{_inline(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, tuple):
        if len(value) == 1:
            return f"({_inline(value[0])},)"
        return "(" + ", ".join(_inline(v) for v in value) + ")"
    if isinstance(value, float) and not math.isfinite(value):
        return f"float('{value}')"
    return repr(value)


def _format(value: Any, indent: int = 0, column: int = 0, width: int = 100) -> str:
    """Python source for ``value`` that starts at ``column`` of a line indented by ``indent``:
    one line when it fits, else one item per line."""
    line = _inline(value)
    if column + len(line) <= width or not isinstance(value, (dict, list, tuple)) or not value:
        return line
    inner = indent + 4
    pad = " " * inner
    if isinstance(value, dict) and all(_is_identifier(k) for k in value):
        opening, closing = "dict(", ")"
        items = [f"{pad}{k}={_format(v, inner, inner + len(k) + 1, width)}"
                 for k, v in value.items()]
    elif isinstance(value, dict):
        opening, closing = "{", "}"
        items = [f"{pad}{_inline(k)}: {_format(v, inner, inner + len(_inline(k)) + 2, width)}"
                 for k, v in value.items()]
    else:
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        items = [pad + _format(v, inner, inner, width) for v in value]
    return opening + "\n" + ",\n".join(items) + ",\n" + " " * indent + closing


def _lists_for_tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists_for_tuples(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists_for_tuples(v) for v in value]
    return value


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------


@dataclass
class ConfigDiff:
    """Keys (dotted) that ``other`` adds, removes or changes relative to ``self``."""

    added: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        lines = [f"+ {k} = {v!r}" for k, v in self.added.items()]
        lines += [f"- {k} = {v!r}" for k, v in self.removed.items()]
        lines += [f"~ {k}: {a!r} -> {b!r}" for k, (a, b) in self.changed.items()]
        return "\n".join(lines) if lines else "(no differences)"

    def rows(self) -> list[dict[str, Any]]:
        """One dict per difference: ``key``, ``change`` (added/removed/changed), ``old``,
        ``new``."""
        rows = [dict(key=k, change="added", old=None, new=v) for k, v in self.added.items()]
        rows += [dict(key=k, change="removed", old=v, new=None) for k, v in self.removed.items()]
        rows += [dict(key=k, change="changed", old=a, new=b) for k, (a, b) in self.changed.items()]
        return rows


def _diff(a: Any, b: Any, prefix: str, out: ConfigDiff) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            path = _join(prefix, key)
            if key not in b:
                out.removed[path] = _to_plain(a[key])
            else:
                _diff(a[key], b[key], path, out)
        for key in b:
            if key not in a:
                out.added[_join(prefix, key)] = _to_plain(b[key])
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) \
            and type(a) is type(b) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, _join(prefix, i), out)
    elif type(a) is not type(b) or a != b:
        out.changed[prefix] = (_to_plain(a), _to_plain(b))


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


class Config:
    """A resolved configuration: nested keys with attribute access, plus where each came from.

    >>> cfg = Config(dict(model=dict(type='RetinaNet', backbone=dict(depth=50))))
    >>> cfg.model.backbone.depth
    50
    """

    def __init__(self, cfg_dict: Mapping | Config | None = None, filename: str | None = None,
                 provenance: Provenance | None = None) -> None:
        if isinstance(cfg_dict, Config):
            provenance = provenance or cfg_dict._provenance.copy()
            filename = filename or cfg_dict.filename
            cfg_dict = cfg_dict._cfg_dict
        if cfg_dict is None:
            cfg_dict = {}
        if not isinstance(cfg_dict, Mapping):
            raise TypeError(f"Config expects a dict, got {type(cfg_dict).__name__}")
        data = _strip_delete(_tree_copy(dict(cfg_dict)))
        object.__setattr__(self, "_cfg_dict", data)
        object.__setattr__(self, "_filename", filename)
        if provenance is None:
            provenance = Provenance()
            for key in data:
                provenance.set(str(key), filename or "<dict>")
        object.__setattr__(self, "_provenance", provenance)

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def fromfile(cls, filename: str | os.PathLike, import_custom_modules: bool = True) -> Config:
        """Load a ``.py``/``.json``/``.yaml`` config with its whole ``_base_`` chain."""
        path = os.path.abspath(os.path.expanduser(os.fspath(filename)))
        if not os.path.isfile(path):
            raise ConfigFileNotFoundError(f"config file not found: {path}")
        if os.path.splitext(path)[1].lower() not in SUFFIXES:
            raise ConfigError(f"{path}: a config file must end in .py, .json, .yaml or .yml")
        cfg_dict, prov = _load_tree(path, ())
        cfg = cls(ConfigDict(), filename=path, provenance=prov)
        object.__setattr__(cfg, "_cfg_dict", cfg_dict)
        if import_custom_modules and CUSTOM_IMPORTS_KEY in cfg_dict:
            import_custom(cfg_dict[CUSTOM_IMPORTS_KEY], source=prov.lookup(CUSTOM_IMPORTS_KEY))
        return cfg

    @classmethod
    def fromstring(cls, text: str, file_format: str = ".py") -> Config:
        """Load a config from its text (``file_format`` is ``.py``, ``.json`` or ``.yaml``)."""
        import tempfile

        suffix = file_format if file_format.startswith(".") else "." + file_format
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "config" + suffix)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            cfg = cls.fromfile(path)
        object.__setattr__(cfg, "_filename", None)
        return cfg

    # ---- mapping behaviour ---------------------------------------------------------------

    @property
    def filename(self) -> str | None:
        """The file this config was loaded from (``None`` when built from a dict)."""
        return self._filename

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._cfg_dict, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._cfg_dict[name] = value

    def __delattr__(self, name: str) -> None:
        delattr(self._cfg_dict, name)

    def __getitem__(self, key: Any) -> Any:
        return self._cfg_dict[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._cfg_dict[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._cfg_dict[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._cfg_dict

    def __iter__(self) -> Iterator:
        return iter(self._cfg_dict)

    def __len__(self) -> int:
        return len(self._cfg_dict)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self._cfg_dict == other._cfg_dict
        if isinstance(other, Mapping):
            return self._cfg_dict == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._cfg_dict.get(key, default)

    def keys(self):
        return self._cfg_dict.keys()

    def values(self):
        return self._cfg_dict.values()

    def items(self):
        return self._cfg_dict.items()

    def to_dict(self) -> dict:
        """The config as plain nested dicts, lists and tuples."""
        return _to_plain(self._cfg_dict)

    def copy(self) -> Config:
        """An independent copy (values are copied too, as with ``deepcopy``)."""
        return Config(self._cfg_dict, self._filename, self._provenance.copy())

    def __copy__(self) -> Config:
        return self.copy()

    def __deepcopy__(self, memo: dict) -> Config:
        import copy

        new = Config(ConfigDict(), self._filename, self._provenance.copy())
        object.__setattr__(new, "_cfg_dict", copy.deepcopy(self._cfg_dict, memo))
        return new

    def __getstate__(self) -> dict:
        return {"cfg_dict": self._cfg_dict, "filename": self._filename,
                "provenance": self._provenance}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "_cfg_dict", state["cfg_dict"])
        object.__setattr__(self, "_filename", state["filename"])
        object.__setattr__(self, "_provenance", state["provenance"])

    def __repr__(self) -> str:
        return f"Config (path: {self._filename}): {self.to_dict()!r}"

    # ---- overrides -----------------------------------------------------------------------

    def merge_from_dict(self, options: Mapping[str, Any], allow_list_keys: bool = True,
                        source: str = "merge_from_dict", check_types: bool = False) -> Config:
        """Set values by dotted key: ``{'model.bbox_head.num_classes': 3}``; returns ``self``.

        A digit in the key indexes a list (``'data.train.pipeline.2.img_scale'``); keys that do not
        exist yet are created; a dict value merges into the dict it replaces (``_delete_`` works).
        With ``check_types`` (what ``--cfg-options`` get), a string where the config holds a
        number is an error naming the key (:func:`check_override_types`); without it the value
        is set as given (the config editor shows such a value as a problem of its component).
        """
        if check_types:
            check_override_types(options, self, source)
        nested = _nest_dotted(options, source, self._cfg_dict)
        merged = _merge(nested, self._cfg_dict, source, self._provenance,
                        allow_list_keys=allow_list_keys)
        object.__setattr__(self, "_cfg_dict", merged)
        return self

    def provenance(self, key: str | None = None) -> str | dict[str, str] | None:
        """The file (or override source) that last set ``key`` (dotted), or, without a key, the
        whole ``{dotted key: source}`` record."""
        if key is None:
            return self._provenance.as_dict()
        self._lookup(key)
        return self._provenance.lookup(key)

    def _lookup(self, key: str) -> Any:
        node: Any = self._cfg_dict
        walked: list[str] = []
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, (list, tuple)) and _is_index(part) \
                    and -len(node) <= int(part) < len(node):
                node = node[int(part)]
            else:
                options = list(node) if isinstance(node, dict) else []
                where = ".".join(walked) or "the config"
                raise ConfigKeyError(f"{where} has no key {part!r}."
                                     f"{did_you_mean(part, [str(o) for o in options])}")
            walked.append(part)
        return node

    # ---- output --------------------------------------------------------------------------

    @property
    def pretty_text(self) -> str:
        """The config as Python source that :meth:`fromstring` loads back to an equal config."""
        lines = []
        for key, value in self._cfg_dict.items():
            if _is_identifier(key) and not key.startswith("_"):
                lines.append(f"{key} = {_format(value, 0, len(key) + 3)}")
            else:
                lines.append(f"globals()[{key!r}] = {_format(value, 0, 14 + len(repr(key)))}")
        return "\n".join(lines) + "\n"

    @property
    def text(self) -> str:
        """The source of the file this config was loaded from (with its path on the first line)."""
        if not self._filename:
            return self.pretty_text
        with open(self._filename, encoding="utf-8") as f:
            return f"{self._filename}\n{f.read()}"

    def dump(self, file: str | os.PathLike | None = None, file_format: str | None = None) -> str:
        """Write the config to ``file`` in the format its suffix names; return the text.

        Without ``file``, only return the text, in ``file_format`` (``'py'``, ``'json'``,
        ``'yaml'``; default py). ``.py`` keeps every value as it is; ``.json`` and ``.yaml`` write
        tuples as lists. The file is written to a temporary name and renamed.
        """
        if file is not None:
            suffix = os.path.splitext(os.fspath(file))[1].lower()
        else:
            suffix = "." + (file_format or "py").lstrip(".").lower()
        if suffix == ".py":
            text = self.pretty_text
        elif suffix == ".json":
            text = json.dumps(_lists_for_tuples(self.to_dict()), indent=2) + "\n"
        elif suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(_lists_for_tuples(self.to_dict()), sort_keys=False,
                                  default_flow_style=None)
        else:
            raise ConfigError(f"cannot dump a config as {file or file_format}: use .py, .json or "
                              f".yaml")
        if file is not None:
            _write_atomic(os.fspath(file), text)
        return text

    def diff(self, other: Config | Mapping) -> ConfigDiff:
        """What ``other`` adds, removes and changes relative to this config (dotted keys)."""
        other_dict = other._cfg_dict if isinstance(other, Config) else other
        out = ConfigDiff()
        _diff(self._cfg_dict, other_dict, "", out)
        return out


# --------------------------------------------------------------------------------------------
# Top-level keys
# --------------------------------------------------------------------------------------------

# the top-level keys that MMDetection 2.x (and detlab) read from a config
RUNTIME_KEYS = (
    "model", "data", "optimizer", "optimizer_config", "lr_config", "momentum_config", "runner",
    "total_epochs", "checkpoint_config", "log_config", "evaluation", "custom_hooks",
    "custom_imports", "load_from", "resume_from", "auto_resume", "work_dir", "workflow",
    "dist_params", "log_level", "gpu_ids", "seed", "device", "fp16", "auto_scale_lr",
    "cudnn_benchmark", "mp_start_method", "opencv_num_threads", "find_unused_parameters",
    "train_cfg", "test_cfg",
)
# variables MMDetection's own config files define at the top level to build the keys above
CONFIG_VARIABLES = (
    "dataset_type", "data_root", "img_norm_cfg", "train_pipeline", "test_pipeline",
    "val_pipeline", "classes", "img_scale", "img_scales", "image_size", "norm_cfg", "conv_cfg",
    "file_client_args", "albu_train_transforms", "pretrained", "checkpoint", "max_epochs",
    "num_last_epochs", "interval", "train_dataset", "num_classes", "num_stages",
    "num_proposals", "batch_size",
)
# an unknown key this similar (difflib's ratio) to a runtime key is taken for a typo of it
TYPO_SIMILARITY = 0.8


def check_top_level_keys(cfg: Config | Mapping) -> list[str]:
    """One warning per top-level key of ``cfg`` that looks like a misspelt config key
    (``optimzer``, ``total_epoch``, ``lr_confg``), which would otherwise be silently ignored.

    A key is fine when it is one of :data:`RUNTIME_KEYS` or :data:`CONFIG_VARIABLES`, or when
    it resembles no runtime key: a config's own variables (``my_pipeline``, ``img_size``) are
    legitimate. Each message names the file that set the key and the key it resembles.
    """
    data = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    known = set(RUNTIME_KEYS) | set(CONFIG_VARIABLES) | {BASE_KEY}
    messages = []
    for key in data:
        if not isinstance(key, str) or key in known or key.startswith("_"):
            continue
        hits = closest(key, RUNTIME_KEYS, cutoff=TYPO_SIMILARITY)
        if not hits:
            continue
        origin = (cfg.provenance(key) if isinstance(cfg, Config) else None) or "the config"
        messages.append(f"{origin}: top-level key {key!r} is not a config key, so it is "
                        f"ignored.{did_you_mean(key, hits)} (If it is a variable of your own, "
                        "a name less like a config key silences this warning.)")
    return messages


# --------------------------------------------------------------------------------------------
# Custom imports, command-line options
# --------------------------------------------------------------------------------------------


def import_custom(spec: Mapping, source: str | None = None) -> list[types.ModuleType]:
    """Import the modules of a ``custom_imports=dict(imports=[...], allow_failed_imports=False)``.

    The current directory is searched too, so a module beside the notebook or the config's project
    is found. A module that fails to import is an ``ImportError`` naming it, or a warning when
    ``allow_failed_imports=True``.
    """
    where = source or "config"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: custom_imports must be dict(imports=[...]), got {spec!r}")
    imports = spec.get("imports", [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    allow_failed = bool(spec.get("allow_failed_imports", False))
    modules = []
    added_cwd = os.getcwd() not in sys.path
    if added_cwd:
        sys.path.append(os.getcwd())
    try:
        for name in imports:
            if not isinstance(name, str):
                raise ConfigError(f"{where}: custom_imports.imports must list module names, "
                                  f"got {name!r}")
            try:
                modules.append(importlib.import_module(name))
            except ImportError as err:
                message = (f"{where}: custom_imports could not import module '{name}': {err}")
                if not allow_failed:
                    raise ImportError(message + ". Make sure the module is on sys.path (installed,"
                                      " or in the current directory), or set "
                                      "allow_failed_imports=True to go on without it.",
                                      name=name) from err
                warnings.warn(message + "; going on without it (allow_failed_imports=True)",
                              stacklevel=2)
    finally:
        if added_cwd and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())
    return modules


def _unquoted(text: str) -> Iterator[tuple[int, str]]:
    """``(position, character)`` of the characters of ``text`` outside quoted strings; a quote
    opens a string only where a value starts (first, or after ``(``, ``[``, ``,`` or ``=``), so
    an apostrophe inside a word is a character."""
    quote = None
    for i, char in enumerate(text):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"" and (i == 0 or text[i - 1] in "([,="):
            quote = char
        else:
            yield i, char


def _balanced(text: str) -> bool:
    chars = [c for _, c in _unquoted(text)]
    return chars.count("(") == chars.count(")") and chars.count("[") == chars.count("]")


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside brackets or quotes."""
    parts, depth, start = [], 0, 0
    for i, char in _unquoted(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _closes_at_end(text: str, start: int = 0) -> bool:
    """Whether the bracket opening at ``text[start]`` closes at the last character (``(1,2)``
    does; ``(1,2),(3,4)`` does not)."""
    depth = 0
    for i, char in _unquoted(text):
        if i < start:
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth == 0:
                return i == len(text) - 1
    return False


def _is_quoted(text: str) -> bool:
    """Whether ``text`` is one quoted string (``'a,b'``), quotes included."""
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0]:
        return False
    return text.find(text[0], 1) == len(text) - 1


def parse_value(text: str) -> Any:
    """One ``--cfg-options`` value, with MMDetection's rules.

    ``1`` -> int, ``0.1`` -> float, ``true``/``false``/``none`` (any case) -> bool/None, ``a,b`` and
    ``[a,b]`` -> list, ``(a,b)`` -> tuple, nested as in ``[(a,b),(c,d)]``; anything else a string.
    Spaces are dropped and outer quotes stripped, as MMDetection's ``DictAction`` does.
    ``dict(type='Pretrained', checkpoint='x.pth')`` gives a dict, as in a config file: its keys
    are names, its values follow these same rules (nested dicts, lists and tuples included).
    Beyond MMDetection, a quoted value is one string (``'a,b'`` is not a list; ``'1'`` is still
    read as a number), and a Python dict literal (``{'optimizer.lr': 0.01}``) gives a dict: the
    form notebook parameters such as ``cfg_options`` take on the command line.
    """
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        return _parse_dict(text)
    text = text.replace(" ", "")
    if _is_quoted(text):
        return _parse_scalar(text[1:-1])
    text = text.strip("'\"")
    if not _balanced(text):
        raise ValueError(f"unbalanced brackets in option value {text!r}")
    if text.startswith("dict(") and _closes_at_end(text, len("dict")):
        return _parse_dict_call(text)
    if text.startswith("(") and _closes_at_end(text):
        return tuple(_parse_items(text[1:-1]))
    if text.startswith("[") and _closes_at_end(text):
        return _parse_items(text[1:-1])
    if len(_split_top_level(text)) > 1:  # a,b is a list; a comma inside brackets makes none
        return _parse_items(text)
    return _parse_scalar(text)


def _parse_items(text: str) -> list:
    return [parse_value(part) for part in _split_top_level(text) if part != ""]


def _parse_dict_call(text: str) -> dict:
    """``dict(a=1,b=[1,2])`` (spaces dropped) -> ``{'a': 1, 'b': [1, 2]}``."""
    out: dict[str, Any] = {}
    for item in _split_top_level(text[len("dict("):-1]):
        if item == "":
            continue
        key, sep, value = item.partition("=")
        if not sep or not _is_identifier(key):
            raise ValueError(f"{item!r} in option value {text!r} is not KEY=VALUE with KEY a "
                             f"name; write e.g. dict(type='Pretrained',checkpoint='x.pth')")
        if key in out:
            raise ValueError(f"key {key!r} is given twice in option value {text!r}")
        out[key] = parse_value(value)
    return out


def _parse_dict(text: str) -> dict:
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"option value {text!r} is not a Python dict literal "
                         f"(e.g. {{'optimizer.lr': 0.01}}): {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"option value {text!r} is not a dict")
    return value


def _parse_scalar(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    return text


def parse_cfg_options(options: Iterable[str] | None) -> dict[str, Any]:
    """``['a.b=1', 'c=[1,2]']`` -> ``{'a.b': 1, 'c': [1, 2]}``, for
    :meth:`Config.merge_from_dict`."""
    parsed: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ValueError(f"config option {item!r} is not KEY=VALUE (e.g. optimizer.lr=0.01)")
        parsed[key.strip()] = parse_value(value)
    return parsed


def load_config(config: str | os.PathLike | Mapping | Config,
                cfg_options: Mapping[str, Any] | Iterable[str] | None = None) -> Config:
    """A Config from a path, a dict or a Config (copied), with dotted overrides applied.

    ``cfg_options`` is a dict ``{'a.b': value}`` or a list of ``'a.b=value'`` strings; a string
    where the config holds a number is an error naming the key (:func:`check_override_types`).
    """
    if isinstance(config, Config):
        cfg = config.copy()
    elif isinstance(config, Mapping):
        cfg = Config(config)
    else:
        cfg = Config.fromfile(config)
    if cfg_options:
        if not isinstance(cfg_options, Mapping):
            cfg_options = parse_cfg_options(cfg_options)
        cfg.merge_from_dict(cfg_options, source="cfg_options", check_types=True)
    return cfg


__all__ = [
    "Config", "ConfigDict", "ConfigDiff", "ConfigError", "ConfigKeyError",
    "ConfigFileNotFoundError", "parse_cfg_options", "parse_value", "load_config", "import_custom",
    "closest", "did_you_mean", "check_top_level_keys", "check_override_types", "RUNTIME_KEYS",
    "CONFIG_VARIABLES",
]
