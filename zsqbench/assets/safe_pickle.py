"""Reading the CIFAR python pickles without letting them run code.

A pickle can name any importable callable and have it called while it loads (``os.system``, say),
and a data root may come from anywhere. The torchvision layout of the CIFAR test files needs only
dicts, lists, strings, bytes, numbers and NumPy arrays, so this unpickler resolves exactly the
globals that rebuild a NumPy array (and, in protocol-2 pickles written by Python 3, ``bytes``
through ``_codecs.encode``) and refuses every other one, naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: (module, name) pairs a CIFAR test file may import; both NumPy 1 and NumPy 2 module paths.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global outside :data:`ALLOWED_GLOBALS`."""


class DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(f"{module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        core = getattr(np, "_core", None) or np.core
        return getattr(core.multiarray if name == "_reconstruct" else core.numeric, name)


def load_data_pickle(fh: BinaryIO) -> Any:
    """The object in a CIFAR-style pickle (Python 2 strings read as latin-1, as torchvision does)."""
    return DataUnpickler(fh, encoding="latin1").load()


def load_data_pickle_file(path: Path) -> Any:
    with open(path, "rb") as fh:
        return load_data_pickle(fh)
