"""Reading pickles without running what they name: a restricted unpickler.

A pickle is a little program: it names functions and classes (``module.name``) that
``pickle.load`` imports and calls, so a crafted ``results.pkl`` can name ``os.system`` and run a
command the moment it is opened. :func:`load` imports only what detection results and
annotation files are made of -- Python's containers and scalars, numpy arrays, dtypes and
scalars, ``collections.OrderedDict`` and detlab's :class:`~detlab.structures.DetResult` (with
its tensors) -- and refuses any other name *before* calling anything, with a
:class:`UnsafePickleError` that names the file and the refused ``module.name``. A file from a
trusted source loads as it is with ``trust=True`` (``--trust-pickle`` on the command line).

>>> from detlab import safe_pickle
>>> results = safe_pickle.load("results.pkl")                # arrays and lists: fine
>>> anything = safe_pickle.load("mine.pkl", trust=True)     # plain pickle.load
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import re
from typing import IO, Any

from detlab.config import ConfigError

# module -> names a pickle may use: what lists of per-class (n, 5) arrays (MMDetection's
# results, written with protocol 2 by mmcv, 4 or 5 by pickle), annotation lists and DetResults
# need; nothing here runs code of the file's choosing
ALLOWED: dict[str, frozenset[str]] = {
    "builtins": frozenset({"bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset",
                           "int", "list", "range", "set", "slice", "str", "tuple"}),
    "collections": frozenset({"OrderedDict"}),
    "_codecs": frozenset({"encode"}),  # protocol 2 writes bytes as _codecs.encode(text, latin1)
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),  # numpy 1
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),  # numpy 2
    "numpy.core.numeric": frozenset({"_frombuffer"}),  # protocol 5 arrays, numpy 1
    "numpy._core.numeric": frozenset({"_frombuffer"}),  # protocol 5 arrays, numpy 2
    "detlab.structures": frozenset({"DetResult"}),
    "torch._utils": frozenset({"_rebuild_tensor_v2"}),  # the tensors of a DetResult
    "torch.storage": frozenset({"_load_from_bytes"}),  # replaced by _storage_from_bytes
}

TRUST_ADVICE = ("If the file comes from a trusted source, pass --trust-pickle (command line) "
                "or trust_pickle=True (Python) to load it as it is.")


class UnsafePickleError(ConfigError, pickle.UnpicklingError):
    """A pickle that names a function or class outside :data:`ALLOWED`; nothing was run."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], name: str, advice: str) -> None:
        super().__init__(file)
        self._name = name
        self._advice = advice

    def find_class(self, module: str, name: str) -> Any:
        # protocols 0-2 spell some names as Python 2 did (__builtin__.set): read them as 3
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if name not in ALLOWED.get(module, ()):
            raise UnsafePickleError(
                f"{self._name}: refusing to load this pickle: it names {module}.{name}, and a "
                "pickle runs what it names while it loads. Only lists, dicts, numbers, strings, "
                f"numpy arrays and detlab results are read without trust. {self._advice}")
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._storage_from_bytes
        return super().find_class(module, name)

    def _storage_from_bytes(self, data: bytes) -> Any:
        """``torch.storage._load_from_bytes`` (how a pickled tensor carries its numbers) with
        torch's own restricted loader: the original unpickles the bytes without limits."""
        import torch

        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except pickle.UnpicklingError as err:
            named = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f"names {named.group(1)}" if named else "holds more than numbers"
            raise UnsafePickleError(f"{self._name}: refusing to load this pickle: the data of a "
                                    f"tensor in it {what}. {self._advice}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._name}: refusing to load this pickle: it refers to "
                                f"objects stored outside it (persistent id {pid!r}). "
                                f"{self._advice}")


def load(path_or_file: str | os.PathLike | IO[bytes], trust: bool = False, *,
         advice: str = TRUST_ADVICE) -> Any:
    """The object pickled in ``path_or_file`` (a path, or a binary file open for reading).

    Without ``trust``, only the names in :data:`ALLOWED` may be used; any other raises
    :class:`UnsafePickleError` (a :class:`~detlab.config.ConfigError` and a
    ``pickle.UnpicklingError``) naming the file and the refused ``module.name``, followed by
    ``advice`` (how the caller lets a trusted file through), before anything the file names
    has run. With ``trust``, this is ``pickle.load``.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return load(f, trust, advice=advice)
    if trust:
        return pickle.load(path_or_file)  # noqa: S301 -- the caller vouches for the file
    name = str(getattr(path_or_file, "name", "<pickle>"))
    return _RestrictedUnpickler(path_or_file, name, advice).load()


__all__ = ["ALLOWED", "TRUST_ADVICE", "UnsafePickleError", "load"]
