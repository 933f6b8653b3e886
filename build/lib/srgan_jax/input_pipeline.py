"""HR/LR image pairs in memory, training batches as a pure function of (seed, step), and
padded evaluation batches.

``load_split`` returns a ``Split`` of uint8 high-resolution images (from ``sources``), their
antialiased bicubic LR versions (``image_ops``) and the labels, all as NumPy arrays. Training
draws batches with ``batch_indices`` + ``get_batch``; evaluation walks a split with
``eval_batches``.

Why this shape:
* MNIST-sized datasets fit in memory many times over, so everything is loaded once into
  arrays; a batch is a fancy index, with no input-pipeline framework and no TensorFlow.
* Batches are a pure function of (seed, step): a job resumed from a checkpoint at step ``s``
  sees exactly the batches an uninterrupted run would, with no iterator state to save, and
  each process of a multi-host run takes its own shard of the same global batch.
* Evaluation pads its last batch to the full batch size (with a ``mask``) so a jitted eval
  step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import jax
import numpy as np

from srgan_jax import image_ops
from srgan_jax import sources
from srgan_jax import validation
from srgan_jax.errors import ConfigError


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


# ----------------------------------------------------------------------------- loading


def _limit(images, labels, limit: int, what: str):
  if limit == 0:
    return images, labels
  if limit > images.shape[0]:
    raise ConfigError(f'config.data.{what}={limit} but the split has only {images.shape[0]} '
                     'examples')
  return images[:limit], (None if labels is None else labels[:limit])


def load_split(config, split: str) -> Split:
  """The 'train' or 'test' split of config.data as HR/LR uint8 pairs and labels.

  'train' keeps the first config.data.train_examples (0: all); 'test' the first
  config.data.eval_examples (0: all).
  """
  data_config = config.data
  validation.validate_data_config(data_config)
  if split not in sources.SPLITS:
    raise ValueError(f'split={split!r} is not one of {sources.SPLITS}')
  if sources.resolve_source(data_config) == 'offline':
    images, labels = sources.load_offline_mnist(split)
  else:
    images, labels = sources.load_tfds(data_config.name, split)
  if images.ndim == 3:
    images = images[..., None]
  limit, what = ((data_config.train_examples, 'train_examples') if split == 'train' else
                 (data_config.eval_examples, 'eval_examples'))
  images, labels = _limit(images, labels, limit, what)
  scale = data_config.scale
  h, w = images.shape[1:3]
  if h % scale or w % scale:
    raise ConfigError(f'{data_config.name} images are {h}x{w}, not divisible by '
                      f'config.data.scale={scale}.')
  hr = np.ascontiguousarray(image_ops.to_channels(images, data_config.channels))
  lr = image_ops.downsample_bicubic(hr, scale)
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
