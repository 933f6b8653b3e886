"""Tiled upscaling (inference.Upscaler.upscale with tile_size, and the upscale CLI's tile flags):
tiles computed with the generator's receptive radius as margin give the untiled output, on tiny
generators with random variables (nothing is trained here) and odd, non-square RGB and
greyscale images; one compiled program serves every tile."""

import os
import types
import warnings

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from srgan_jax import inference
from srgan_jax import models
from srgan_jax import upscale as upscale_cli


def _generator(scale, channels, blocks=1, features=4, seed=0):
  """An untrained models.Generator with random variables, as an Upscaler.

  The variables have the shapes models.Generator.init gives (jax.eval_shape: nothing is
  compiled for them) and random values, BatchNorm statistics included, so that no layer is the
  identity and every layer's footprint shows in the output.
  """
  model = models.Generator(scale=scale, channels=channels, num_res_blocks=blocks,
                           features=features)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, channels)), train=False))
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = path[-1].key
    if name == 'kernel':  # He-scaled, so activations keep their size through the blocks.
      return rng.normal(0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape)
    if name == 'alpha':
      return np.full(leaf.shape, 0.25)
    return rng.normal(0, 0.05, leaf.shape)  # Biases, BatchNorm offsets and means.

  variables = jax.tree_util.tree_map_with_path(
      lambda p, leaf: value(p, leaf).astype(np.float32), shapes)
  config = ml_collections.ConfigDict({'data': {'scale': scale, 'channels': channels}})
  return inference.Upscaler(model, variables, config, step=0)


@pytest.fixture(scope='module')
def rgb():
  """x4, RGB, one residual block: receptive radius 10 LR pixels."""
  return _generator(scale=4, channels=3)


@pytest.fixture(scope='module')
def grey():
  """x2, greyscale, two residual blocks: receptive radius 12 LR pixels."""
  return _generator(scale=2, channels=1, blocks=2, seed=1)


def _smooth_image(shape, seed=0):
  """A float image in [0, 1] with structure at several scales (not just noise)."""
  rng = np.random.default_rng(seed)
  h, w = shape[:2]
  yy, xx = np.mgrid[0:h, 0:w] / 16.0
  base = 0.5 + 0.3 * np.sin(xx + 2 * yy)[..., None] * np.cos(yy - xx)[..., None]
  image = base + rng.normal(0, 0.1, (h, w) + tuple(shape[2:] or (1,)))
  image = np.clip(image, 0, 1).astype(np.float32)
  return image if len(shape) == 3 else image[..., 0]


def _assert_uint8_close(tiled, whole):
  """uint8 outputs: float rounding may move a pixel at a .5 boundary by 1, nothing more."""
  diff = np.abs(tiled.astype(np.int16) - whole.astype(np.int16))
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (diff.max(), np.mean(diff > 0))


@pytest.mark.parametrize('scale, blocks', [(4, 1), (2, 2)])
def test_receptive_radius_is_the_generators_reach(rgb, grey, scale, blocks):
  """Measured: a change of one LR pixel changes exactly the SR pixels whose LR pixel is within
  receptive_radius of it (two images of one batch, identical but for that pixel).

  "Changes" means by more than float rounding: XLA:CPU's Eigen convolution on an AVX2-only CPU
  (AMD EPYC, cpu family 25) rounds the same image differently at different batch positions
  (about 2e-7 here), while the pixel's reach at the receptive field's edge is about 3e-3."""
  up = rgb if scale == 4 else grey
  assert up.receptive_radius == 8 + 2 * blocks
  size, p = 2 * up.receptive_radius + 9, up.receptive_radius + 4
  pair = np.full((2, size, size, up.channels), 0.3, np.float32)
  pair[1, p, p] = 0.9
  sr = up.upscale(pair, tile_size=None)
  assert sr.dtype == np.float32  # float in, float out: no uint8 rounding hides a small change.
  changed = np.any(np.abs(sr[0] - sr[1]) > 1e-4, axis=-1)
  rows = np.nonzero(changed.any(axis=1))[0] // scale
  cols = np.nonzero(changed.any(axis=0))[0] // scale
  for lr_positions in (rows, cols):
    assert (p - lr_positions.min(), lr_positions.max() - p) == (up.receptive_radius,) * 2


def test_plan_tiles_covers_the_image_with_windows_inside_it():
  margin, tile = 5, 8
  for size in (30, 37, 8 + 2 * 5 + 1):
    plan = inference.plan_tiles(size, 2 * size + 3, tile, margin)
    for spans, length, window in ((plan.rows, size, plan.window[0]),
                                  (plan.cols, 2 * size + 3, plan.window[1])):
      assert window == min(length, tile + 2 * margin)
      cores = [i for a, b, _ in spans for i in range(a, b)]
      assert cores == list(range(length))  # The cores partition the axis.
      for a, b, start in spans:
        assert b - a <= tile and 0 <= start and start + window <= length
        # The window holds the core's margin of context, or reaches the image's edge.
        assert start <= max(a - margin, 0) and start + window >= min(b + margin, length)
    assert plan.num_tiles == len(plan.rows) * len(plan.cols)


def test_tiled_equals_untiled_rgb_with_one_compiled_program(rgb):
  images = np.stack([_smooth_image((37, 53, 3), seed=k) for k in range(2)])  # Odd, non-square.
  whole = rgb.upscale(images, tile_size=None)
  before = rgb._apply._cache_size()  # pylint: disable=protected-access
  tiled = rgb.upscale(images, tile_size=8, tile_batch_size=8)  # 5 x 7 tiles per image.
  assert tiled.shape == whole.shape == (2, 148, 212, 3) and tiled.dtype == np.float32
  # Exact scheme: equal everywhere (edges included) to the convolutions' float rounding.
  np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-6)
  # Another large size has the same windows (28x28 LR) in batches of 8: no new program.
  other = rgb.upscale(_smooth_image((45, 29, 3), seed=5)[None], tile_size=8, tile_batch_size=8)
  assert other.shape == (1, 180, 116, 3)
  assert rgb._apply._cache_size() == before + 1  # pylint: disable=protected-access


def test_tiled_equals_untiled_greyscale(grey):
  batch = np.stack([_smooth_image((41, 31), seed=k) for k in range(2)])  # (N, H, W) floats.
  tiled = grey.upscale(batch, tile_size=8)  # Windows of 32x31 LR: 6 tiles in a column.
  assert tiled.shape == (2, 82, 62) and tiled.dtype == np.float32
  np.testing.assert_allclose(tiled, grey.upscale(batch, tile_size=None), rtol=0, atol=2e-6)
  # (uint8 and greyscale into a 3-channel generator: the CLI test below.)


def test_a_margin_below_the_radius_is_approximate_and_says_so(rgb):
  image = _smooth_image((30, 30, 3))[None]
  whole = rgb.upscale(image, tile_size=None)
  with pytest.warns(UserWarning, match=r'below the generator\'s receptive radius \(10'):
    rough = rgb.upscale(image, tile_size=8, tile_margin=2)
  assert np.abs(rough - whole).max() > 1e-3  # The margin is what makes tiles exact.
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # The radius itself: no warning, exact.
    exact = rgb.upscale(image, tile_size=8, tile_margin=10, tile_batch_size=8)
  np.testing.assert_allclose(exact, whole, atol=2e-6)


def test_small_images_are_upscaled_whole(rgb):
  image = _smooth_image((28, 25, 3))[None]  # Fits one 28x28 window: not tiled.
  np.testing.assert_array_equal(rgb.upscale(image, tile_size=8),
                                rgb.upscale(image, tile_size=None))


def test_progress_of_long_jobs(rgb, capsys):
  image = _smooth_image((40, 40, 3))[None]  # 5 x 5 = 25 tiles.
  calls = []
  rgb.upscale(image, tile_size=8, tile_batch_size=8, progress=lambda d, t: calls.append((d, t)))
  assert calls == [(8, 25), (16, 25), (24, 25), (25, 25)]
  capsys.readouterr()
  rgb.upscale(image, tile_size=8, tile_batch_size=8)  # 25 >= PROGRESS_MIN_TILES: reported.
  err = capsys.readouterr().err
  assert 'upscale: 25/25 tiles (100%)' in err and 'tiles/s' in err
  rgb.upscale(image, tile_size=8, tile_batch_size=8, progress=False)
  assert capsys.readouterr().err == ''
  # The ETA of an unfinished job, with a clock that advances 10 s per batch.
  clock = iter(np.arange(0.0, 100.0, 10.0))
  lines = []
  stream = types.SimpleNamespace(write=lines.append, flush=lambda: None)
  report = inference._TileProgress(  # pylint: disable=protected-access
      40, True, clock=lambda: next(clock), stream=stream)
  report.update(10)
  assert lines[0].startswith('upscale: 10/40 tiles (25%), 1.00 tiles/s, ETA 30s')


@pytest.mark.parametrize('kwargs, message', [
    (dict(tile_size=4), r'tile_size=4 is too small.*tile_size >= 8'),
    (dict(tile_size=-1), r'tile_size must be an integer >= 1'),
    (dict(tile_size=2.5), r'tile_size must be an integer'),
    (dict(tile_size=8, tile_margin=-1), r'tile_margin must be an integer >= 0'),
    (dict(tile_size=8, tile_batch_size=0), r'tile_batch_size must be an integer >= 1'),
])
def test_bad_tile_arguments(rgb, kwargs, message):
  with pytest.raises(ValueError, match=message):
    rgb.upscale(np.zeros((40, 40, 3), np.uint8)[None], **kwargs)


def _cli_flags():
  """The upscaling command's flags, in a FlagValues of their own (as `python -m` defines them)."""
  flag_values = flags.FlagValues()
  upscale_cli.define_flags(flag_values)
  return flag_values


def test_cli_upscales_a_large_image_by_many_tiles(rgb, tmp_path, capsys, monkeypatch):
  # The CLI as a user runs it, with the RGB generator in place of a checkpoint's (loading one
  # is test_inference's job).
  loaded = []
  monkeypatch.setattr(upscale_cli.inference, 'load_generator',
                      lambda workdir, step: loaded.append((workdir, step)) or rgb)
  lr = np.round(_smooth_image((160, 240, 3), seed=7) * 255).astype(np.uint8)
  Image.fromarray(lr).save(tmp_path / 'photo.png')
  grey_lr = np.round(_smooth_image((45, 33), seed=8) * 255).astype(np.uint8)
  Image.fromarray(grey_lr).save(tmp_path / 'grey.png')
  argv = ['upscale', '--workdir=run', '--tile_size=32', '--tile_batch_size=8']
  monkeypatch.chdir(tmp_path)
  for src, dst in (('photo.png', 'photo_x4.png'), ('grey.png', 'grey_x4.png')):
    flag_values = _cli_flags()
    upscale_cli.main(flag_values(argv + [src, dst]), flag_values)
  assert loaded == [('run', None)] * 2
  out = capsys.readouterr()
  assert 'upscale: 40/40 tiles (100%)' in out.err  # 5 x 8 tiles of 32 LR pixels.
  assert 'Upscaled 1 image(s) x4' in out.out
  with Image.open(tmp_path / 'photo_x4.png') as img:
    assert img.mode == 'RGB' and img.size == (960, 640)
    _assert_uint8_close(np.asarray(img), rgb.upscale(lr[None], tile_size=None)[0])
  # A greyscale PNG, tiled (2 x 2 windows of 45 x 33 LR) into the 3-channel generator.
  with Image.open(tmp_path / 'grey_x4.png') as img:
    assert img.mode == 'L' and img.size == (132, 180)
    _assert_uint8_close(np.asarray(img), rgb.upscale(grey_lr, tile_size=None))


def test_cli_rejects_bad_tile_flags(tmp_path):
  for flag, message in (('--tile_size=4', 'at least 8'), ('--tile_size=-1', '>= 0'),
                        ('--tile_margin=-2', 'tile_margin must be >= 0'),
                        ('--tile_batch_size=0', 'tile_batch_size must be positive')):
    flag_values = _cli_flags()
    argv = flag_values(['upscale', f'--workdir={tmp_path}', flag, 'a.png', 'b.png'])
    with pytest.raises(upscale_cli.app.UsageError, match=message):
      upscale_cli.main(argv, flag_values)


def test_cli_reads_photograph_formats(rgb, tmp_path, monkeypatch):
  monkeypatch.setattr(upscale_cli.inference, 'load_generator', lambda workdir, step: rgb)
  src = tmp_path / 'photos'
  src.mkdir()
  rng = np.random.default_rng(3)
  arrays = {}
  for name in ('a.jpg', 'b.JPEG', 'c.bmp', 'd.webp', 'e.png'):
    arrays[name] = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    Image.fromarray(arrays[name]).save(src / name)
  (src / 'notes.txt').write_text('not an image')
  written, _ = upscale_cli.upscale_files('run', str(src), str(tmp_path / 'sr'))
  assert [os.path.basename(p) for p in written] == ['a.png', 'b.png', 'c.png', 'd.png', 'e.png']
  for name, path in zip(sorted(arrays), written):
    with Image.open(src / name) as img:  # As decoded (JPEG is lossy).
      expected = rgb.upscale(np.asarray(img.convert('RGB'))[None])[0]
    with Image.open(path) as img:
      assert img.format == 'PNG'
      np.testing.assert_array_equal(np.asarray(img), expected, err_msg=name)
  # A single file: the output's extension names its format.
  (out,), _ = upscale_cli.upscale_files('run', str(src / 'c.bmp'), str(tmp_path / 'c_x4.jpg'))
  with Image.open(out) as img:
    assert img.format == 'JPEG' and img.size == (52, 36)
  Image.fromarray(arrays['a.jpg']).save(src / 'a.png')
  with pytest.raises(upscale_cli.UpscaleError, match=r"a.jpg' and .*a.png' would both be "
                                                     r"written as .*a.png'; rename one"):
    upscale_cli.upscale_files('run', str(src), str(tmp_path / 'sr2'))
