"""Photographs of any size: the folder and skimage sources, random HR crops and their
augmentations, whole-image evaluation, the user errors, and the real training loop on a folder
of tiny photographs written by the tests themselves (several sizes, RGB and grey, non-square)."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import div2k_srgan
from configs import photos
from srgan_jax import config_utils
from srgan_jax import errors
from srgan_jax import evaluate
from srgan_jax import image_ops
from srgan_jax import input_pipeline as ip
from srgan_jax import metrics
from srgan_jax import models
from srgan_jax import sources
from srgan_jax import train
from srgan_jax import validation

from tests import conftest

# (relative path, height, width, grey): non-square, RGB and grey, every format, nested.
TRAIN_FILES = (
    ('a.png', 40, 52, False),
    ('b_grey.png', 52, 40, True),
    ('sub/c.jpg', 48, 48, False),
    ('sub/d.bmp', 44, 60, False),
    ('sub/deeper/e.webp', 56, 44, False),
    ('sub/deeper/f_grey.JPEG', 40, 41, True),
)
# Odd sizes, not multiples of the scale.
TEST_FILES = (('t1.png', 37, 45, False), ('t2_grey.png', 50, 33, True), ('t3.png', 41, 41, False))


def _photo(h, w, grey, seed):
  """A smooth, photograph-like uint8 image: colour gradients plus blurred noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w] / max(h, w)
  noise = rng.uniform(0, 1, (h // 4 + 2, w // 4 + 2, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
  image = np.stack([yy, xx, (yy + xx) / 2], -1) * 0.6 + noise * 0.4
  image = np.round(image * 255).astype(np.uint8)
  return image[..., 0] if grey else image


def _write(root, files, seed=0):
  for k, (rel, h, w, grey) in enumerate(files):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(h, w, grey, seed + k)).save(path, quality=95)
  return str(root)


@pytest.fixture(scope='module')
def photo_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('photos')
  train_dir = _write(root / 'train', TRAIN_FILES)
  (root / 'train' / 'notes.txt').write_text('not an image')
  test_dir = _write(root / 'test', TEST_FILES, seed=100)
  return train_dir, test_dir


def _photo_config(train_dir, test_dir, **overrides):
  """configs/photos.py on a folder, shrunk to seconds: x2, 16-pixel crops, tiny networks."""
  config = photos.get_config()
  config.data.source = 'folder'
  config.data.name = 'tiny_folder'
  config.data.train_dir = train_dir
  config.data.test_dir = test_dir
  config.data.scale = 2
  config.data.hr_crop = 16
  config.generator.num_res_blocks = 1
  config.generator.features = 8
  config.discriminator.features = (8, 16)
  config.discriminator.dense_features = 16
  config.batch_size = 8
  config.pretrain_steps = 2
  config.num_train_steps = 2
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.eval.num_sample_images = 4
  config.cpu_devices_per_core = False
  config.conv_implementation = 'xla'  # tests/test_train.py covers the tuned convs.
  for key, value in overrides.items():
    config_utils.set_field(config, key, value)
  return config


# ----------------------------------------------------------------------------- sources


def test_folder_source_is_recursive_sorted_and_reads_every_format(photo_dirs):
  train_dir, _ = photo_dirs
  paths = sources.list_image_files(train_dir)
  rel = [os.path.relpath(p, train_dir) for p in paths]
  assert rel == sorted(f for f, *_ in TRAIN_FILES)  # recursive, sorted, notes.txt skipped.
  split = ip.load_split(_photo_config(*photo_dirs), 'train')
  assert isinstance(split, ip.PhotoSplit) and split.num_examples == len(TRAIN_FILES)
  by_name = {f: (h, w, grey) for f, h, w, grey in TRAIN_FILES}
  for i, path in enumerate(split.names):
    h, w, grey = by_name[os.path.relpath(path, train_dir)]
    image = split.read(i)
    assert image.shape == (h, w, 3) and image.dtype == np.uint8 and split.sizes[i] == (h, w)
    if grey:  # grey -> RGB: the grey level in each channel.
      assert np.array_equal(image[..., 0], image[..., 1])
      assert np.array_equal(image[..., 0], image[..., 2])
  # PNG is lossless: the pixels the test wrote come back, grey tiled to RGB.
  png = split.read(rel.index('b_grey.png'))
  np.testing.assert_array_equal(png[..., 1], _photo(52, 40, True, 1))
  # One channel: RGB to BT.601 luma, as MNIST-style data.
  grey = sources.read_image(os.path.join(train_dir, 'a.png'), 1)
  np.testing.assert_array_equal(grey, image_ops.to_channels(_photo(40, 52, False, 0), 1))


def test_lazy_folder_reads_per_batch_and_gives_the_same_batches(photo_dirs):
  config = _photo_config(*photo_dirs)
  memory = ip.load_split(config, 'train')
  config.data.in_memory = False
  lazy = ip.load_split(config, 'train')
  assert memory.in_memory and not lazy.in_memory
  assert lazy.sizes == memory.sizes  # from the files' headers, without decoding.
  for step in (0, 7):
    a = ip.train_batch(config, memory, step)
    b = ip.train_batch(config, lazy, step)
    np.testing.assert_array_equal(a['hr'], b['hr'])


def test_skimage_photographs_offline():
  names, images = sources.load_skimage_photos('test', 3)
  assert names == sources.SKIMAGE_TEST
  assert not set(sources.SKIMAGE_TRAIN) & set(sources.SKIMAGE_TEST)
  assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[-1] == 3 for im in images)
  assert len({im.shape for im in images}) == len(images)  # sizes differ.
  assert min(min(im.shape[:2]) for im in images) >= photos.get_config().data.hr_crop


def test_skimage_training_photographs_load_offline_grey_tiled_and_disjoint(monkeypatch):
  """The training photographs include greyscale ones (camera, moon, ...), tiled to RGB; every
  one loads from the installed wheel with the network refused (no pooch download), fits a
  crop, and none is a test image ('cat' is chelsea)."""
  import socket  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise OSError('no network in this test')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  names, images = sources.load_skimage_photos('train', 3)
  assert names == sources.SKIMAGE_TRAIN and len(images) == len(names)
  _, tests = sources.load_skimage_photos('test', 3)
  crop = photos.get_config().data.hr_crop
  grey = 0
  for name, image in zip(names, images):
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, name
    assert min(image.shape[:2]) >= crop, name
    grey += int(np.array_equal(image[..., 0], image[..., 1]) and
                np.array_equal(image[..., 0], image[..., 2]))
    assert not any(image.shape == t.shape and np.array_equal(image, t) for t in tests), name
  assert grey >= 1 and 'cat' not in names
  # A cycled colour photograph is its original with the channels in that order.
  original, cycled = images[names.index('astronaut')], images[names.index('astronaut:gbr')]
  np.testing.assert_array_equal(cycled, original[..., [1, 2, 0]])
  _, as_grey = sources.load_skimage_photos('train', 1)
  assert all(image.shape[-1] == 1 for image in as_grey)


@pytest.mark.parametrize('decay', ['none', 'cosine'])
def test_generator_schedule_is_what_pretrain_decay_says(decay):
  """optimizer.pretrain_decay: 'none' keeps the pretraining rate constant (the default, so
  every other config trains as before); 'cosine' decays it by a half cosine to 0 at the last
  pretraining step; the GAN stage runs at optimizer.learning_rate either way."""
  assert photos.get_config().optimizer.pretrain_decay == 'cosine'
  config = photos.get_config()
  config.optimizer.pretrain_decay = decay
  config.pretrain_steps = 100
  rate, gan = config.optimizer.pretrain_learning_rate, config.optimizer.learning_rate
  schedule = train.generator_schedule(config)
  at = lambda step: float(schedule(step))
  if decay == 'none':
    assert [at(s) for s in (0, 50, 99)] == pytest.approx([rate] * 3, rel=1e-6)
  else:
    for step in (0, 25, 50, 99):
      expected = rate * 0.5 * (1 + np.cos(np.pi * step / 100))
      assert at(step) == pytest.approx(expected, rel=1e-5, abs=1e-6 * rate), step
    assert at(99) < 1e-3 * rate
  assert [at(s) for s in (100, 150)] == pytest.approx([gan, gan], rel=1e-6)


def test_default_pretrain_decay_is_none_and_bad_values_are_refused():
  from configs import default  # pylint: disable=g-import-not-at-top
  assert default.get_config().optimizer.pretrain_decay == 'none'
  config = default.get_config()
  config.pretrain_steps = 10
  schedule = train.generator_schedule(config)
  assert float(schedule(9)) == pytest.approx(config.optimizer.pretrain_learning_rate)
  config.optimizer.pretrain_decay = 'linear'
  with pytest.raises(errors.ConfigError, match='pretrain_decay'):
    train.generator_schedule(config)


def test_mnist_keeps_its_in_memory_batches():
  hr = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
  split = ip.Split(hr=hr, lr=image_ops.downsample_bicubic(hr, 4))
  config = _photo_config('', '')
  config.batch_size = 8
  batch = ip.train_batch(config, split, 3)
  expected = ip.get_batch(split, ip.batch_indices(config.seed, 3, 8, 40))
  np.testing.assert_array_equal(batch['hr'], expected['hr'])
  mnist = train.checkpoints.config_utils  # noqa: the default config is MNIST's.
  del mnist
  from configs import mnist_srgan  # pylint: disable=g-import-not-at-top
  assert not validation.uses_crops(mnist_srgan.get_config().data)
  assert validation.is_mnist(mnist_srgan.get_config().data)


# ----------------------------------------------------------------------------- crops


def _symmetries(x):
  """The 8 symmetries of a square crop: hflip then k quarter turns (as random_crop)."""
  return [np.rot90(x[:, ::-1] if f else x, k) for f in (0, 1) for k in range(4)]


def _found_in(crop, image, transforms):
  """Whether some symmetry in `transforms` of `crop` is a window of `image`."""
  c = crop.shape[0]
  windows = np.lib.stride_tricks.sliding_window_view(image, (c, c, image.shape[-1]))[..., 0, :, :, :]
  for k in transforms:
    # The inverse of (flip, rot k): rot -k, then flip.
    f, r = divmod(k, 4)
    undone = np.rot90(crop, -r)
    undone = undone[:, ::-1] if f else undone
    if np.any(np.all(windows == undone, axis=(-3, -2, -1))):
      return True
  return False


def test_crops_are_windows_augmented_and_lr_is_their_downsample(photo_dirs):
  config = _photo_config(*photo_dirs)
  split = ip.load_split(config, 'train')
  images = [split.read(i) for i in range(split.num_examples)]
  batch = ip.photo_batch(split, seed=3, step=5, batch_size=12, hr_crop=16, scale=2)
  assert batch['hr'].shape == (12, 16, 16, 3) and batch['lr'].shape == (12, 8, 8, 3)
  np.testing.assert_array_equal(batch['lr'], image_ops.downsample_bicubic(batch['hr'], 2))
  # Every crop is a window of a training image under one of the 8 symmetries, and some need
  # a flip or a rotation (the augmentations are on).
  assert all(any(_found_in(c, im, range(8)) for im in images) for c in batch['hr'])
  plain = [any(_found_in(c, im, [0]) for im in images) for c in batch['hr']]
  assert not all(plain)
  # Off: the same windows (the random choices do not depend on it), untransformed.
  off = ip.photo_batch(split, 3, 5, 12, 16, 2, use_hflip=False, use_rot=False)
  params = ip.photo_crop_params(3, 5, 12)
  for j in range(12):
    undone = np.rot90(batch['hr'][j], -params['rot'][j])
    undone = undone[:, ::-1] if params['hflip'][j] else undone
    np.testing.assert_array_equal(off['hr'][j], undone)
    assert any(_found_in(off['hr'][j], im, [0]) for im in images)


def test_photo_batches_are_a_pure_function_of_seed_and_step(photo_dirs):
  split = ip.load_split(_photo_config(*photo_dirs), 'train')
  a = ip.photo_batch(split, 0, 4, 8, 16, 2)
  np.testing.assert_array_equal(a['hr'], ip.photo_batch(split, 0, 4, 8, 16, 2)['hr'])
  assert not np.array_equal(a['hr'], ip.photo_batch(split, 0, 5, 8, 16, 2)['hr'])
  assert not np.array_equal(a['hr'], ip.photo_batch(split, 1, 4, 8, 16, 2)['hr'])
  # Each process of a multi-host run gets its shard of the same global batch.
  shards = [ip.photo_batch(split, 0, 4, 8, 16, 2, process_index=p, process_count=2)['hr']
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(shards), a['hr'])


# ----------------------------------------------------------------------------- networks


def test_dense_head_is_sized_from_the_crop():
  config = div2k_srgan.get_config()
  assert config.data.hr_crop == 96 and config.discriminator.head == 'dense'
  d = models.create_discriminator(config)
  shapes = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), np.zeros((1, 96, 96, 3)),
                                         train=False))
  assert shapes['params']['Dense_0']['kernel'].shape == (6 * 6 * 512, 1024)  # the paper's.
  tiny = _photo_config('', '')
  # The trainer initialises its networks at the crop size (shapes only: nothing computed).
  _, d_state = jax.eval_shape(lambda: train.create_train_states(tiny, jax.random.PRNGKey(0),
                                                                hr_size=16))
  assert d_state.params['Dense_0']['kernel'].shape == (4 * 4 * 16, 16)


def test_configs_validate_and_choose_their_content_loss():
  validation.validate_config(photos.get_config(), 2)
  paper = div2k_srgan.get_config()
  validation.validate_config(paper, 1)
  assert (paper.generator.num_res_blocks, paper.batch_size, paper.data.source) == (16, 16, 'tfds')
  assert paper.loss.content == 'mse'  # no VGG19 weights given.
  with_vgg = div2k_srgan.get_config('/weights/vgg19.h5')
  assert with_vgg.loss.content == 'vgg' and with_vgg.loss.vgg.weights == '/weights/vgg19.h5'
  assert dict(with_vgg.loss.vgg.layers) == {'conv5_4': 1.0}  # VGG54.


# ----------------------------------------------------------------------------- evaluation


def test_whole_image_evaluation_of_odd_sizes(photo_dirs):
  config = _photo_config(*photo_dirs)
  test = ip.head(ip.load_split(config, 'test'), 2)  # 37x45 RGB and 50x33 grey.
  hr, lr = ip.eval_pair(test, 0, 2)
  assert hr.shape == (36, 44, 3) and lr.shape == (18, 22, 3)  # 37x45 cut to multiples of 2.
  generator = models.create_generator(config)
  g_vars = jax.jit(lambda r: generator.init(r, np.zeros((1, 8, 8, 3)), train=False))(
      jax.random.PRNGKey(1))
  bucketed = evaluate.PhotoEvaluator(generator, test, 2, crop_border=2, y_channel=True,
                                     bucket=32)
  summary = bucketed(g_vars)
  assert summary['eval_images'] == 2
  # The LR sizes 18x22 and 25x16 share one 32x32 bucket: one compilation.
  assert bucketed.sr_fn._cache_size() == 1
  exact = evaluate.PhotoEvaluator(generator, test, 2, crop_border=2, y_channel=True, bucket=0)
  psnr, ssim, psnr_bic = [], [], []
  for i in range(2):
    hr, lr = ip.eval_pair(test, i, 2)
    # The image at its own size, rounded as a saved file.
    sr = metrics.to_uint8(np.asarray(exact.sr_fn(g_vars, lr[None])[0]), (-1, 1))
    padded = evaluate.super_resolve(bucketed.sr_fn, g_vars, lr, 2, 32)
    assert padded.shape == hr.shape == sr.shape
    # Padding only reaches the last rows and columns (the generator's receptive field).
    margin = 2 * 14
    h, w = hr.shape[:2]
    np.testing.assert_array_equal(padded[:h - margin, :w - margin], sr[:h - margin, :w - margin])
    p, s = metrics.image_psnr_ssim(sr, hr, crop_border=2)
    psnr.append(p)
    ssim.append(s)
    bicubic = evaluate.bicubic_uint8(lr, 2)
    psnr_bic.append(metrics.image_psnr_ssim(bicubic, hr, crop_border=2)[0])
  by_size = exact(g_vars)
  assert by_size['psnr_sr'] == pytest.approx(np.mean(psnr), abs=1e-9)
  assert by_size['ssim_sr'] == pytest.approx(np.mean(ssim), abs=1e-9)
  assert by_size['psnr_bicubic'] == pytest.approx(np.mean(psnr_bic), abs=1e-9)
  assert summary['psnr_bicubic'] == by_size['psnr_bicubic']
  assert abs(summary['psnr_sr'] - by_size['psnr_sr']) < 1.0
  # eval.y_channel=False scores RGB: other figures.
  rgb = evaluate.PhotoEvaluator(generator, test, 2, crop_border=2, y_channel=False, bucket=0)
  hr, lr = ip.eval_pair(test, 0, 2)
  assert rgb._pair(0)[2] == metrics.image_psnr_ssim(evaluate.bicubic_uint8(lr, 2), hr,
                                                    crop_border=2, y_channel=False)
  assert rgb._pair(0)[2][0] != psnr_bic[0]


# ----------------------------------------------------------------------------- errors


def _fails_before_work(tmp_path, config, error, match):
  workdir = tmp_path / 'run'
  with pytest.raises(error, match=match):
    train.train_and_evaluate(config, str(workdir))
  assert not (workdir / 'checkpoints').exists()


def test_folder_errors_name_the_folder_or_file(tmp_path, photo_dirs):
  train_dir, test_dir = photo_dirs
  missing = str(tmp_path / 'nowhere')
  _fails_before_work(tmp_path, _photo_config(missing, test_dir), errors.ImageDataError,
                     'data.train_dir = .*nowhere.* is not a folder')
  empty = tmp_path / 'empty'
  (empty / 'sub').mkdir(parents=True)
  (empty / 'sub' / 'readme.txt').write_text('no images')
  _fails_before_work(tmp_path, _photo_config(train_dir, str(empty)), errors.ImageDataError,
                     'data.test_dir = .*empty.* holds no image files')
  broken = tmp_path / 'broken'
  _write(broken, TRAIN_FILES[:2])
  (broken / 'zz_bad.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
  _fails_before_work(tmp_path, _photo_config(str(broken), test_dir), errors.ImageDataError,
                     'Cannot read the image file .*zz_bad.png')
  # Lazily read folders check every header before training too.
  _fails_before_work(tmp_path, _photo_config(str(broken), test_dir, **{'data.in_memory': False}),
                     errors.ImageDataError, 'zz_bad.png')
  _fails_before_work(tmp_path, _photo_config(train_dir, test_dir, **{'data.hr_crop': 48}),
                     errors.ImageDataError, r'a.png.* is 40x52, smaller than config.data.hr_crop')


@pytest.mark.parametrize('overrides,match', [
    ({'data.hr_crop': 18, 'data.scale': 4}, 'hr_crop = 18 is not a multiple of config.data.scale'),
    ({'data.hr_crop': 0}, "'dense' needs a fixed crop size"),
    ({'data.hr_crop': 0, 'discriminator.head': 'patch'}, 'train on random crops'),
    ({'eval.judge_workdir': 'judge'}, 'digit judge'),
    ({'loss.auxiliary': 'classifier'}, 'MNIST guide classifier'),
    ({'loss.content': 'classifier'}, 'MNIST guide classifier'),
    ({'loss.auxiliary': 'discriminator_head'}, 'needs class labels'),
    ({'data.source': 'skimage', 'eval.judge_workdir': 'judge'}, "source = 'skimage'"),
    ({'data.train_dir': ''}, 'needs config.data.train_dir'),
])
def test_config_errors_before_any_work(tmp_path, photo_dirs, overrides, match):
  _fails_before_work(tmp_path, _photo_config(*photo_dirs, **overrides), errors.ConfigError,
                     match)


# ----------------------------------------------------------------------------- training


def test_training_on_a_folder_of_photographs_then_resume(tmp_path, photo_dirs):
  # GAN steps only (the pretraining step is the MNIST one, tested there), then the same
  # command with a larger budget resumes from the checkpoint: compiled once, seconds.
  config = _photo_config(*photo_dirs, pretrain_steps=0, **{'data.eval_examples': 1})
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  for key in ('psnr_sr', 'psnr_bicubic', 'ssim_sr', 'ssim_bicubic'):
    assert np.isfinite(summary[key]), key
  assert summary['eval_images'] == 1  # data.eval_examples: the first test image.
  results = open(os.path.join(workdir, 'results.md')).read()
  assert 'Y channel' in results and 'crop_border = 2' in results  # -1: the scale.
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_2.png')))
  assert grid.shape[0] == 4 * 96 + 5 * 2  # 4 rows of 16-pixel crops zoomed 6x, padded.
  longer = _photo_config(*photo_dirs, pretrain_steps=0, num_train_steps=4,
                         **{'data.eval_examples': 1})
  resumed = train.train_and_evaluate(longer, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records if 'generator' in r] == [2, 4]
  gan = [r for r in records if r.get('stage') == 1]
  assert len(gan) == 2 and all(np.isfinite(r['d_real']) and np.isfinite(r['d_fake']) for r in gan)
  assert train.checkpoints.read_config(workdir)[0] == 4
  assert resumed['psnr_bicubic'] == summary['psnr_bicubic']  # the same test image.


def test_architecture_mismatch_names_the_crop_of_a_dense_head():
  """data.hr_crop sizes the dense discriminator head, so it is an architecture field with that
  head; the patch head is fully convolutional (other crops resume), and a config saved before
  the field existed counts as its default, 0."""
  saved = {'discriminator': {'head': 'dense'}, 'data': {'hr_crop': 48}}
  current = {'discriminator': {'head': 'dense'}, 'data': {'hr_crop': 96}}
  diffs = train.checkpoints.architecture_mismatches(saved, current)
  assert len(diffs) == 1 and diffs[0].startswith('data.hr_crop: checkpoint has 48, config has 96')
  patch = lambda crop: {'discriminator': {'head': 'patch'}, 'data': {'hr_crop': crop}}
  assert not train.checkpoints.architecture_mismatches(patch(48), patch(96))
  old = {'discriminator': {'head': 'dense'}, 'data': {}}
  assert not train.checkpoints.architecture_mismatches(
      old, {'discriminator': {'head': 'dense'}, 'data': {'hr_crop': 0}})


def test_resume_with_another_crop_and_a_dense_head_names_the_field(tmp_path, photo_dirs):
  """Not Orbax's shape error: the dense head was sized from the checkpoint's crop."""
  workdir = str(tmp_path / 'run')
  config = _photo_config(*photo_dirs, pretrain_steps=0, **{'data.eval_examples': 1})
  train.train_and_evaluate(config, workdir)
  other = _photo_config(*photo_dirs, pretrain_steps=0, num_train_steps=4,
                        **{'data.eval_examples': 1, 'data.hr_crop': 12})
  with pytest.raises(errors.CheckpointError,
                     match='data.hr_crop: checkpoint has 16, config has 12'):
    train.train_and_evaluate(other, workdir)


def test_tfds_photographs_of_any_size_are_read_lazily():
  """configs/div2k_srgan.py's source (tfds div2k, images of many sizes) on tfds' mock data:
  records read one at a time per batch, crops and their LR as for a folder, exact per step."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = div2k_srgan.get_config()
  config.data.hr_crop = 16
  config.data.in_memory = False
  with conftest.tfds_scratch(), tfds.testing.mock_data(
      num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    train_split = ip.load_photo_split(config.data, 'train')
    test_split = ip.load_photo_split(config.data, 'test')
    assert not train_split.in_memory and train_split.sizes is None  # Nothing decoded yet.
    assert train_split.num_examples == test_split.num_examples == 3
    assert train_split.names[0] == f'{config.data.name}/train[0]'
    images = [train_split.read(i) for i in range(3)]
    assert all(x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3 for x in images)
    batch = ip.photo_batch(train_split, 0, 5, 2, 16, 4)
    again = ip.photo_batch(train_split, 0, 5, 2, 16, 4)
  assert batch['hr'].shape == (2, 16, 16, 3) and batch['lr'].shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(batch['lr'], image_ops.downsample_bicubic(batch['hr'], 4))
  for key in batch:
    np.testing.assert_array_equal(batch[key], again[key])
