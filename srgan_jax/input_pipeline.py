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

Photographs (``config.data.hr_crop > 0``, or a 'folder' / 'skimage' source) come as a
``PhotoSplit``: images of different sizes, held in memory as a list of uint8 arrays (the
skimage set, small folders) or read from their files (or tfds records) when a batch needs them
(``config.data.in_memory = False``), so a dataset larger than memory trains in bounded memory.
``photo_batch`` draws a training batch as random HR crops of ``hr_crop`` pixels with random
flips and 90-degree rotations (BasicSR's ``use_hflip`` / ``use_rot``), all from
``np.random.default_rng([seed, step])``, and makes LR from each crop by the same antialiased
bicubic as MNIST: still a pure function of (seed, step). ``eval_pair`` gives a whole test image
cut to a multiple of the scale (the SR literature's convention) and its LR.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator, Optional

import jax
import numpy as np

from srgan_jax import image_ops
from srgan_jax import sources
from srgan_jax import validation
from srgan_jax.errors import ConfigError
from srgan_jax.errors import ImageDataError


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


@dataclasses.dataclass(frozen=True)
class PhotoSplit:
  """One split of images of any size.

  names: one name per image (its file path, skimage name or tfds record), in order.
  read: i -> uint8 (H, W, C) image i, with the config's channels (from memory, or its file).
  sizes: (height, width) per image when known without decoding (files' headers), else None.
  in_memory: whether `read` only indexes arrays already decoded (cheap to call again).
  labels: always None (photographs have no class labels here).
  """
  names: tuple
  read: Callable[[int], np.ndarray]
  sizes: Optional[tuple] = None
  in_memory: bool = True
  labels: None = None

  @property
  def num_examples(self) -> int:
    return len(self.names)


def photo_split_from_arrays(names, images) -> PhotoSplit:
  """A PhotoSplit of uint8 (H, W, C) arrays held in memory."""
  images = list(images)
  for name, image in zip(names, images):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
      raise ValueError(f'image {name!r} must be a uint8 (H, W, C) np.ndarray, got '
                       f'{getattr(image, "dtype", None)} {getattr(image, "shape", None)}')
  return PhotoSplit(names=tuple(names), read=images.__getitem__,
                    sizes=tuple(image.shape[:2] for image in images), in_memory=True)


def head(split, n: int):
  """The first `n` examples of a split (0, or n >= its size: the whole split)."""
  if n <= 0 or n >= split.num_examples:
    return split
  if isinstance(split, PhotoSplit):
    return dataclasses.replace(split, names=split.names[:n],
                               sizes=None if split.sizes is None else split.sizes[:n])
  return Split(split.hr[:n], split.lr[:n], None if split.labels is None else split.labels[:n])


# ----------------------------------------------------------------------------- loading


def _limit(images, labels, limit: int, what: str):
  if limit == 0:
    return images, labels
  if limit > images.shape[0]:
    raise ConfigError(f'config.data.{what}={limit} but the split has only {images.shape[0]} '
                     'examples')
  return images[:limit], (None if labels is None else labels[:limit])


def load_split(config, split: str):
  """The 'train' or 'test' split of config.data as HR/LR uint8 pairs and labels, or, for
  photographs (validation.uses_crops), as a PhotoSplit.

  'train' keeps the first config.data.train_examples (0: all); 'test' the first
  config.data.eval_examples (0: all).
  """
  data_config = config.data
  validation.validate_data_config(data_config)
  if split not in sources.SPLITS:
    raise ValueError(f'split={split!r} is not one of {sources.SPLITS}')
  if validation.uses_crops(data_config):
    return load_photo_split(data_config, split)
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


def _check_crop_fits(name, size, hr_crop: int, field: str):
  h, w = size
  if min(h, w) < hr_crop:
    raise ImageDataError(
        f'The image {name!r} is {h}x{w}, smaller than config.data.hr_crop = {hr_crop}: '
        f'remove it from {field} or lower hr_crop (a multiple of the scale).')


def load_photo_split(data_config, split: str) -> PhotoSplit:
  """Photographs of any size from config.data's source; every image checked (readable, and at
  least hr_crop on each side in 'train') before training starts, where that needs no decoding
  (in memory, or file headers); tfds records read lazily are checked when a batch reads them.
  """
  channels, hr_crop = data_config.channels, data_config.hr_crop
  source = sources.resolve_source(data_config)
  field = 'data.train_dir' if split == 'train' else 'data.test_dir'
  in_memory = data_config.get('in_memory', True)
  if source == 'skimage':
    names, images = sources.load_skimage_photos(split, channels)
    photos = photo_split_from_arrays(names, images)
    field = f'sources.SKIMAGE_{split.upper()}'
  elif source == 'folder':
    paths = sources.list_image_files(data_config[split + '_dir'], field)
    if in_memory:
      photos = photo_split_from_arrays(paths, [sources.read_image(p, channels) for p in paths])
    else:
      photos = PhotoSplit(names=tuple(paths), read=lambda i: sources.read_image(paths[i], channels),
                          sizes=tuple(sources.image_size(p) for p in paths), in_memory=False)
  else:  # A tfds dataset of images of any size, read record by record.
    names, read = sources.open_tfds_photos(data_config.name, split, channels)
    photos = (photo_split_from_arrays(names, [read(i) for i in range(len(names))]) if in_memory
              else PhotoSplit(names=names, read=read, sizes=None, in_memory=False))
  limit, what = ((data_config.train_examples, 'train_examples') if split == 'train' else
                 (data_config.eval_examples, 'eval_examples'))
  if limit > photos.num_examples:
    raise ConfigError(f'config.data.{what}={limit} but the split has only '
                      f'{photos.num_examples} images')
  photos = head(photos, limit)
  if photos.sizes is not None:
    for name, size in zip(photos.names, photos.sizes):
      if split == 'train':
        _check_crop_fits(name, size, hr_crop, field)
      elif min(size) < data_config.scale:
        raise ImageDataError(f'The test image {name!r} is {size[0]}x{size[1]}, smaller than '
                             f'the scale {data_config.scale}.')
  return photos


# ----------------------------------------------------------------------------- photographs


def photo_crop_params(seed: int, step: int, batch_size: int) -> dict:
  """The random choices of training step `step`, for the whole global batch: a pure function
  of (seed, step). 'image' is drawn later as an index (uniform over the images), 'y' and 'x'
  are offsets as fractions in [0, 1) of the free room, 'hflip' 0/1 and 'rot' quarter turns
  0..3. Every choice is drawn whether or not its augmentation is on, so switching one off
  leaves the crops the same."""
  if step < 0 or seed < 0:
    raise ValueError(f'step={step} and seed={seed} must be >= 0')
  rng = np.random.default_rng([int(seed), int(step)])
  return {'image': rng.random(batch_size), 'y': rng.random(batch_size),
          'x': rng.random(batch_size), 'hflip': rng.integers(0, 2, batch_size),
          'rot': rng.integers(0, 4, batch_size)}


def random_crop(image: np.ndarray, hr_crop: int, y: float, x: float, hflip: bool,
                rot: int) -> np.ndarray:
  """An hr_crop x hr_crop crop of `image` at fractional offsets (y, x) of the free room, then
  a horizontal flip and `rot` counter-clockwise quarter turns (with both: all 8 symmetries
  of the square)."""
  h, w = image.shape[:2]
  top = min(int(y * (h - hr_crop + 1)), h - hr_crop)
  left = min(int(x * (w - hr_crop + 1)), w - hr_crop)
  crop = image[top:top + hr_crop, left:left + hr_crop]
  if hflip:
    crop = crop[:, ::-1]
  return np.ascontiguousarray(np.rot90(crop, int(rot)))


def photo_batch(split: PhotoSplit, seed: int, step: int, batch_size: int, hr_crop: int,
                scale: int, use_hflip: bool = True, use_rot: bool = True,
                process_index: int = 0, process_count: int = 1) -> dict:
  """This process's shard of training step `step`'s batch of photographs: {'hr': uint8 (n,
  hr_crop, hr_crop, C), 'lr': uint8 (n, hr_crop/scale, hr_crop/scale, C)}, n = batch_size /
  process_count. Images uniform with replacement, random crops and augmentations from
  photo_crop_params(seed, step), LR = antialiased bicubic of each crop (image_ops)."""
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, process_count={process_count})')
  if batch_size % process_count:
    raise ValueError(f'global batch_size={batch_size} is not divisible by '
                     f'process_count={process_count}')
  params = photo_crop_params(seed, step, batch_size)
  per_process = batch_size // process_count
  crops = []
  for j in range(process_index * per_process, (process_index + 1) * per_process):
    i = min(int(params['image'][j] * split.num_examples), split.num_examples - 1)
    image = split.read(i)
    _check_crop_fits(split.names[i], image.shape[:2], hr_crop, 'the training images')
    crops.append(random_crop(image, hr_crop, params['y'][j], params['x'][j],
                             use_hflip and params['hflip'][j], params['rot'][j] if use_rot else 0))
  hr = np.stack(crops)
  return {'hr': hr, 'lr': image_ops.downsample_bicubic(hr, scale)}


def crop_to_scale(image: np.ndarray, scale: int) -> np.ndarray:
  """The image cut (bottom and right) to a multiple of the scale, as SR test sets are."""
  h, w = image.shape[:2]
  return image[:h - h % scale, :w - w % scale]


def eval_pair(split: PhotoSplit, i: int, scale: int) -> tuple:
  """(hr, lr) of test image i: uint8 (H, W, C) cut to a multiple of the scale and its
  antialiased bicubic downsample (H/scale, W/scale, C)."""
  hr = crop_to_scale(split.read(i), scale)
  return hr, image_ops.downsample_bicubic(hr[None], scale)[0]


def train_batch(config, split, step: int, process_index: int = 0, process_count: int = 1
                ) -> dict:
  """This process's shard of the training batch of step `step` for either kind of split."""
  if isinstance(split, PhotoSplit):
    data = config.data
    return photo_batch(split, config.seed, step, config.batch_size, data.hr_crop, data.scale,
                       data.use_hflip, data.use_rot, process_index, process_count)
  idx = batch_indices(config.seed, step, config.batch_size, split.num_examples, process_index,
                      process_count)
  return get_batch(split, idx)


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
