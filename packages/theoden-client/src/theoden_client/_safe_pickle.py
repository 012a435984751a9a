"""Read pickled NumPy arrays from files a site owns, refusing every global but array reconstruction.

Only for local files such as the official ``cifar-10-batches-py`` batches; never for network data.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Final

__all__ = ["load_array_pickle"]

#: The only globals an official CIFAR batch (or any pickle of plain NumPy arrays) needs.
_ALLOWED: Final = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"): pure data.
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` admits nothing but NumPy array and dtype reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data file")
        return super().find_class(module, name)


def load_array_pickle(path: Path) -> Any:
    """Return the object pickled in ``path`` (Python 2 strings as bytes), allowing only NumPy arrays.

    Raises:
        pickle.UnpicklingError: The file references any other global (it may be malicious).
    """
    with path.open("rb") as fh:
        return _ArrayUnpickler(fh, encoding="bytes").load()
