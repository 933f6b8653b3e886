"""Use a trained generator (or classifier) from its checkpoint alone.

    from srgan_jax.inference import load_generator
    up = load_generator('runs/mnist_cnn')
    sr = up.upscale(lr_digits)   # uint8 (N, 7, 7) -> uint8 (N, 28, 28)

Everything needed is in the checkpoint: the architecture comes from its 'config' item (the
config the run was trained with, saved as JSON), and the weights from its 'model' item (the
generator's EMA parameters and BatchNorm statistics). No config file, no `configs/` package
and no training code is imported, so this works in a fresh process, in Colab, or with a
checkpoint copied from another machine.

Image conventions of `Upscaler.upscale` and `Classifier.predict` / `.logits`:

* Layouts: (H, W) one greyscale image, (N, H, W) greyscale images, (N, H, W, C) images with
  C channels. A rank-3 array is always (N, H, W): pass one colour image as x[None].
* Values: uint8 in [0, 255], or float in [0, 1] (a tolerance of 1e-3 outside is clipped).
  Upscaling returns the input's convention: uint8 in -> uint8 out (rounded, clipped);
  float in -> float32 in [0, 1] out.
* Channels: C must equal the network's channels, with one exception: greyscale input (the
  (H, W) and (N, H, W) layouts, or C = 1) to a 3-channel network is tiled to RGB, which is how
  3-channel models were trained (`config.data.channels = 3` tiles the grey MNIST digits).
  The output keeps the input's layout, so a 3-channel generator's RGB output is averaged back
  to one channel for greyscale input. RGB input to a 1-channel network is an error: convert it
  to greyscale first (e.g. PIL's `.convert('L')`).
* Sizes: the generator is fully convolutional, so any H and W work (output: scale*H x
  scale*W). The classifiers need images of the size they were trained on (MNIST: 28x28,
  cifar10: 32x32).
* Large images are upscaled by tiles (`tile_size` LR pixels square, default 128), so device
  memory is bounded by `tile_batch_size` tiles whatever the image size. Each tile is computed
  with `tile_margin` LR pixels of context on every side (default: the generator's receptive
  radius, `receptive_radius`) and only its centre is kept, so the tiled output is the untiled
  one (to float rounding: see `Upscaler.upscale`). Images that fit in one tile, such as
  MNIST digits, are upscaled whole, as before.

Anything else (wrong rank or channel count, NaN/inf, floats outside [0, 1], other dtypes)
raises a ValueError that says what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Optional, Union
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from srgan_jax import checkpoints
from srgan_jax import config_utils
from srgan_jax import image_ops
from srgan_jax import models
from srgan_jax.errors import CheckpointError

FLOAT_TOLERANCE = 1e-3
CLASSIFIER_SIZE = models.CLASSIFIER_IMAGE_SIZE
# Tiled upscaling: LR pixels of a tile's kept centre, tiles run at once, and the smallest tile
# accepted (a tile of t pixels computes (t + 2 r)^2 / t^2 times its own pixels for a radius r:
# already 12 times at t = 8 for the smallest generator, r = 10). A 128x128 LR tile of the
# paper's x4 SRResNet (16 blocks, radius 40) is computed on a 208x208 LR window: 2.6 times its
# own work, and 338 MB of XLA:CPU temporaries per tile (measured with memory_analysis), so 4 at
# once stay under 1.5 GB whatever the image size.
DEFAULT_TILE_SIZE = 128
DEFAULT_TILE_BATCH_SIZE = 4
MIN_TILE_SIZE = 8
# Progress lines (stderr) for jobs of at least this many tiles, at most one per interval.
PROGRESS_MIN_TILES = 16
PROGRESS_INTERVAL_S = 5.0


# ---------------------------------------------------------------------------------------------
# Input checks shared by the generator and the classifiers.


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How the caller's array maps to NHWC, so the output can be given back the same way."""
  ndim: int             # 2, 3 or 4
  channels: int         # channels of the caller's images (1 for ranks 2 and 3)
  is_uint8: bool


def _to_nhwc(images, channels: int, what: str) -> tuple[np.ndarray, _Layout]:
  """Checks `images`; returns (NHWC uint8, or float32 clipped to [0, 1]; the caller's layout).

  The channels are the caller's: 1-channel images for a 3-channel network are tiled inside
  the jitted function (see _to_model_range), not here, so the host holds no 3x copy.
  """
  if isinstance(images, (list, tuple)):
    images = np.stack([np.asarray(x) for x in images]) if images else np.asarray(images)
  x = np.asarray(images)
  if x.dtype == np.uint8:
    is_uint8 = True
  elif np.issubdtype(x.dtype, np.floating):
    is_uint8 = False
  else:
    hint = (' Convert integer images with x.astype(np.uint8) (values 0-255) or to floats '
            'in [0, 1].' if np.issubdtype(x.dtype, np.integer) or x.dtype == bool else '')
    raise ValueError(f'{what}: images must be uint8 in [0, 255] or float in [0, 1]; got dtype '
                     f'{x.dtype}.{hint}')
  shape, ndim = x.shape, x.ndim
  if ndim not in (2, 3, 4):
    raise ValueError(
        f'{what}: expected images of shape (H, W), (N, H, W) or (N, H, W, C); got shape '
        f'{shape} (rank {ndim}).')
  if ndim == 2:
    x = x[None, :, :, None]
  elif ndim == 3:
    x = x[..., None]
  n, h, w, c = x.shape
  if h == 0 or w == 0:
    raise ValueError(f'{what}: images have an empty side: shape {shape}.')
  if c != channels and not (c == 1 and channels == 3):
    if c == 3 and channels == 1:
      hint = (' This network is greyscale: convert the images first, e.g. with PIL '
              "Image.convert('L') or the luma x @ [0.299, 0.587, 0.114].")
    elif channels == 1:
      hint = (f' Shape (N, H, W, C) was read with C = {c}; for greyscale images of width {c} '
              f'pass shape (N, H, W), or add a channel axis: x[..., None].')
    else:
      hint = ''
    raise ValueError(
        f'{what}: the network takes {channels}-channel images'
        f'{" (1-channel images are tiled to RGB)" if channels == 3 else ""}; got {c} channels '
        f'(shape {shape}).{hint}')
  if not is_uint8:
    x = x.astype(np.float32)
    if n:
      finite = np.isfinite(x)
      if not finite.all():
        bad = int(x.size - finite.sum())
        raise ValueError(f'{what}: {bad} pixel value(s) are NaN or infinite; images must be '
                         f'finite.')
      lo, hi = float(x.min()), float(x.max())
      if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
        if lo >= -1.0 - FLOAT_TOLERANCE and hi <= 1.0 + FLOAT_TOLERANCE:
          hint = ' They look like [-1, 1] images: pass (x + 1) / 2.'
        elif lo >= -FLOAT_TOLERANCE and hi <= 255.0 + FLOAT_TOLERANCE:
          hint = ' They look like [0, 255] values: pass x / 255 or x.astype(np.uint8).'
        else:
          hint = ''
        raise ValueError(f'{what}: float images must be in [0, 1]; got values in '
                         f'[{lo:.4g}, {hi:.4g}].{hint}')
      x = np.clip(x, 0.0, 1.0)
  return x, _Layout(ndim=ndim, channels=c, is_uint8=is_uint8)


def _to_model_range(x, channels: int):
  """uint8 [0, 255] (exactly as training: image_ops.to_model_range) or float [0, 1]
  -> float32 [-1, 1] with `channels` channels (grey tiled to RGB); inside jit."""
  if x.shape[-1] != channels:
    x = jnp.broadcast_to(x, x.shape[:-1] + (channels,))
  if x.dtype == jnp.uint8:
    return image_ops.to_model_range(x)
  return x.astype(jnp.float32) * 2.0 - 1.0


def _to_caller_dtype(y: np.ndarray, layout: _Layout) -> np.ndarray:
  """A batch of float32 NHWC in [0, 1] -> the caller's channels and dtype convention."""
  if y.shape[-1] != layout.channels:  # 3-channel network, greyscale caller.
    y = y.mean(axis=-1, keepdims=True)
  if layout.is_uint8:
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
  return np.clip(y, 0.0, 1.0).astype(np.float32)


def _to_caller_layout(y: np.ndarray, layout: _Layout) -> np.ndarray:
  """NHWC -> (H, W), (N, H, W) or (N, H, W, C) as the caller gave it."""
  if layout.ndim == 2:
    return y[0, :, :, 0]
  if layout.ndim == 3:
    return y[..., 0]
  return y


def _check_batch_size(batch_size) -> int:
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size <= 0:
    raise ValueError(f'batch_size must be a positive integer; got {batch_size!r}.')
  return int(batch_size)


def _bucket(n: int, batch_size: int) -> int:
  """The padded batch size for n images: the next power of two, at most batch_size.

  A jitted function compiles once per input shape; padding to a few sizes bounds that to
  log2(batch_size) + 1 compilations per image size, without running 256 images for one.
  """
  if n >= batch_size:
    return batch_size
  return min(batch_size, 1 << max(n - 1, 0).bit_length())


def _batched(fn, x: np.ndarray, batch_size: int, out_shape, out_dtype, post=None):
  """Applies jitted `fn` to x in padded batches; returns a numpy array (N, *out_shape).

  Only one batch is on the device at a time, and each batch is converted by `post` (e.g. to
  uint8) as it comes back, so the host holds the output once, in its final dtype.
  """
  n = x.shape[0]
  out = np.empty((n,) + tuple(out_shape), out_dtype)
  for start in range(0, n, batch_size):
    chunk = x[start:start + batch_size]
    valid = chunk.shape[0]
    size = _bucket(valid, batch_size) if start == 0 else batch_size
    if valid < size:
      pad = np.repeat(chunk[-1:], size - valid, axis=0)  # Finite values, dropped below.
      chunk = np.concatenate([chunk, pad])
    y = np.asarray(fn(chunk))[:valid]
    out[start:start + valid] = post(y) if post is not None else y
  return out


# ---------------------------------------------------------------------------------------------
# Tiles: exact overlap-and-crop.


def receptive_radius(model: models.Generator) -> int:
  """LR pixels on each side of an output pixel's own LR pixel that can change it.

  An SR pixel at HR position q (its LR pixel is q // scale) depends only on LR pixels within
  this distance of q // scale, so a tile computed with at least this margin of real context
  gives exactly the untiled values in its centre. Counted through models.Generator backwards
  from an output interval: the last 9x9 conv (4 pixels each side at HR), each x2 stage's
  pixel shuffle (halving, rounded outwards) and 3x3 conv (1 pixel), the 3x3 conv after the
  residual blocks (1), two 3x3 convs per block (2 each) and the first 9x9 conv (4), all
  'SAME'-padded; BatchNorm (in inference) and PReLU are per pixel. 8 + 2 * num_res_blocks
  for the scales 2, 4 and 8 (40 LR pixels for the paper's 16 blocks).
  """
  scale = int(model.scale)
  stages = int(round(math.log2(scale)))
  if 2 ** stages != scale:
    raise ValueError(f'the generator upsamples by x2 stages; scale {scale} is not a power of 2')
  # The HR interval [lo, hi) of one LR pixel's outputs at LR position 0 is [0, scale); walk it
  # back to the LR positions it depends on.
  lo, hi = 0 - 4, scale + 4                         # the final 9x9 conv, at HR.
  for _ in range(stages):
    lo, hi = lo // 2 - 1, -(-hi // 2) + 1          # pixel shuffle, then the stage's 3x3 conv.
  reach = 1 + 2 * int(model.num_res_blocks) + 4    # 3x3 after the blocks, the blocks, 9x9.
  lo, hi = lo - reach, hi + reach
  return max(-lo, hi - 1)


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """How one image size is cut into tiles: per axis, (core start, core end, window start).

  Every window has the same shape, `window` (LR pixels), so every tile batch runs the same
  compiled program. A window starts `margin` before its core, moved inwards at the image's
  edges (so it never reaches outside the image, whose zero padding at every layer the window
  then shares), and is the whole axis when the image is smaller than one window.
  """
  window: tuple[int, int]
  rows: tuple[tuple[int, int, int], ...]
  cols: tuple[tuple[int, int, int], ...]

  @property
  def num_tiles(self) -> int:
    return len(self.rows) * len(self.cols)


def _axis_tiles(size: int, tile: int, margin: int):
  window = min(size, tile + 2 * margin)
  spans = []
  for start in range(0, size, tile):
    end = min(start + tile, size)
    spans.append((start, end, min(max(start - margin, 0), size - window)))
  return window, tuple(spans)


def plan_tiles(height: int, width: int, tile_size: int, margin: int) -> TilePlan:
  """The TilePlan of an LR image of `height` x `width` (see TilePlan)."""
  wh, rows = _axis_tiles(height, tile_size, margin)
  ww, cols = _axis_tiles(width, tile_size, margin)
  return TilePlan(window=(wh, ww), rows=rows, cols=cols)


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}; got {value!r}.')
  return int(value)


def _format_seconds(seconds: float) -> str:
  s = max(0, int(round(seconds)))
  h, rem = divmod(s, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s' if m else f'{s}s'


class _TileProgress:
  """Reports tiles done: to `callback(done, total)`, or as a line on stderr with the rate and
  an ETA (at most one per PROGRESS_INTERVAL_S, and the last), for jobs long enough to need it.
  """

  def __init__(self, total: int, progress, clock=time.monotonic, stream=None):
    self.total = total
    self._callback = progress if callable(progress) else None
    self._print = self._callback is None and (
        progress is True or (progress is None and total >= PROGRESS_MIN_TILES))
    self._clock = clock
    self._stream = stream
    self._start = self._last = clock()

  def update(self, done: int) -> None:
    if self._callback is not None:
      self._callback(done, self.total)
      return
    if not self._print:
      return
    now = self._clock()
    if done < self.total and now - self._last < PROGRESS_INTERVAL_S:
      return
    self._last = now
    elapsed = now - self._start
    rate = done / elapsed if elapsed > 0 else float('inf')
    eta = (self.total - done) / rate if 0 < rate < float('inf') else 0.0
    line = (f'upscale: {done}/{self.total} tiles ({100.0 * done / self.total:.0f}%), '
            f'{rate:.2f} tiles/s, ' + (f'ETA {_format_seconds(eta)}' if done < self.total
                                       else f'done in {_format_seconds(elapsed)}'))
    print(line, file=self._stream or sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The generator.


class Upscaler:
  """A trained generator with its variables: `upscale(images)` returns SR images.

  Attributes: scale (int), channels (1 or 3), config (the training ConfigDict, from the
  checkpoint), step (the checkpoint's training step), model (the flax Generator) and
  variables ({'params': EMA parameters, 'batch_stats': ...}).
  """

  def __init__(self, model: models.Generator, variables: Any,
               config: ml_collections.ConfigDict, step: int):
    self.model = model
    self.variables = jax.device_put(variables)
    self.config = config
    self.step = int(step)
    self.scale = int(model.scale)
    self.channels = int(model.channels)
    self.receptive_radius = receptive_radius(model)

    def apply(variables, x):
      sr = model.apply(variables, _to_model_range(x, model.channels), train=False)  # tanh
      return jnp.clip(image_ops.to_unit_range(sr), 0.0, 1.0)
    self._apply = jax.jit(apply)

  def __repr__(self):
    return (f'Upscaler(scale={self.scale}, channels={self.channels}, step={self.step}, '
            f'res_blocks={self.model.num_res_blocks}, features={self.model.features})')

  def upscale(self, images, batch_size: int = 256, *,
              tile_size: Optional[int] = DEFAULT_TILE_SIZE, tile_margin: Optional[int] = None,
              tile_batch_size: int = DEFAULT_TILE_BATCH_SIZE,
              progress: Union[None, bool, Callable[[int, int], None]] = None) -> np.ndarray:
    """Super-resolves `images` (see the module docstring for layouts and value ranges).

    Returns the input's layout at `scale` times the height and width: uint8 for uint8 input,
    else float32 in [0, 1].

    Images that fit in one tile (at most `tile_size` + 2 `tile_margin` LR pixels on each
    side), or all images when `tile_size` is None or 0, are upscaled whole, in batches of
    `batch_size` (the last one padded, so each image size compiles a few times at most).

    Larger images are cut into tiles of `tile_size` LR pixels, each computed on a window of
    `tile_margin` more pixels of context on every side (default: `receptive_radius`; windows
    are moved inwards at the image's edges, never padded), and only the tiles' centres are
    kept: with the default margin each SR pixel sees exactly the LR pixels it sees untiled,
    so the result equals the untiled one everywhere, to float rounding (the convolutions of
    another shape may sum in another order: about 1e-6 in [0, 1], and so at most 1 in a rare
    uint8 pixel that sits at a rounding boundary). A smaller margin is faster and
    approximate (a warning says so). Windows all have one shape, so one compiled program
    serves every tile, and `tile_batch_size` tiles (of any of the images) run at once: device
    memory is that of two batches of `tile_batch_size` windows (one computing while the one
    before is copied out) whatever the image size.

    `progress`: None reports tiles done on stderr, with an ETA, for jobs of at least
    PROGRESS_MIN_TILES tiles; True always, False never; a callable is called as
    `progress(tiles_done, total_tiles)` after each batch of tiles instead.
    """
    batch_size = _check_batch_size(batch_size)
    x, layout = _to_nhwc(images, self.channels, 'upscale')
    n, h, w, _ = x.shape
    plan = self._tile_plan(h, w, tile_size, tile_margin)
    out_dtype = np.uint8 if layout.is_uint8 else np.float32
    post = lambda y: _to_caller_dtype(y, layout)
    if plan is None or n == 0:
      fn = lambda chunk: self._apply(self.variables, chunk)
      y = _batched(fn, x, batch_size, (h * self.scale, w * self.scale, layout.channels),
                   out_dtype, post=post)
    else:
      tile_batch_size = _check_positive_int('tile_batch_size', tile_batch_size)
      y = self._upscale_tiles(x, plan, tile_batch_size, out_dtype, layout.channels, post,
                              progress)
    return _to_caller_layout(y, layout)

  __call__ = upscale

  def _tile_plan(self, height: int, width: int, tile_size, tile_margin) -> Optional[TilePlan]:
    """The TilePlan for this image size, or None when it is upscaled whole."""
    if tile_size is None or (tile_size == 0 and not isinstance(tile_size, bool)):
      return None
    tile_size = _check_positive_int('tile_size', tile_size)
    if tile_size < MIN_TILE_SIZE:
      raise ValueError(
          f'tile_size={tile_size} is too small: each tile also computes {self.receptive_radius}'
          f' LR pixels of context on every side, so tiles under {MIN_TILE_SIZE} pixels cost '
          f'far more than the image; use tile_size >= {MIN_TILE_SIZE} (default '
          f'{DEFAULT_TILE_SIZE}), or 0 / None to upscale whole images.')
    if tile_margin is None:
      margin = self.receptive_radius
    else:
      margin = _check_positive_int('tile_margin', tile_margin, minimum=0)
      if margin < self.receptive_radius:
        warnings.warn(
            f'tile_margin={margin} is below the generator\'s receptive radius '
            f'({self.receptive_radius} LR pixels): tiles are approximate near their edges, '
            f'and seams may show. Leave tile_margin unset for exact tiles.', stacklevel=3)
    if height <= tile_size + 2 * margin and width <= tile_size + 2 * margin:
      return None  # One window holds the whole image.
    return plan_tiles(height, width, tile_size, margin)

  def _upscale_tiles(self, x: np.ndarray, plan: TilePlan, tile_batch_size: int, out_dtype,
                     out_channels: int, post, progress) -> np.ndarray:
    """Overlap-and-crop upscaling of NHWC `x` by `plan`; returns NHWC in the caller's dtype."""
    n, h, w, _ = x.shape
    s = self.scale
    wh, ww = plan.window
    out = np.empty((n, h * s, w * s, out_channels), out_dtype)
    tiles = [(i, row, col) for i in range(n) for row in plan.rows for col in plan.cols]
    size = _bucket(len(tiles), tile_batch_size)  # One shape for every batch of this job.
    report = _TileProgress(len(tiles), progress)

    def finish(batch, result, done):
      y = np.asarray(result)  # Waits for this batch only.
      for k, (i, (a, b, r0), (c, d, c0)) in enumerate(batch):
        core = y[k, (a - r0) * s:(b - r0) * s, (c - c0) * s:(d - c0) * s]
        out[i, a * s:b * s, c * s:d * s] = post(core)
      report.update(done)

    # One batch in flight while the previous one is cropped into `out` on the host (jax
    # dispatches asynchronously), so the device does not wait for the host.
    pending = None
    for start in range(0, len(tiles), size):
      batch = tiles[start:start + size]
      windows = [x[i, r0:r0 + wh, c0:c0 + ww] for i, (_, _, r0), (_, _, c0) in batch]
      windows += [windows[-1]] * (size - len(batch))  # Padding, dropped in finish.
      result = self._apply(self.variables, np.stack(windows))
      if pending is not None:
        finish(*pending)
      pending = (batch, result, start + len(batch))
    finish(*pending)
    return out


def _generator_template(model: models.Generator, channels: int):
  lr = jnp.zeros((1, 8, 8, channels), jnp.float32)  # Any size: the network is convolutional.
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), lr, train=False))


def load_generator(workdir: str, step: Optional[int] = None) -> Upscaler:
  """The generator saved in `workdir`'s checkpoints, ready to upscale.

  Restores the latest usable checkpoint (an unreadable one is skipped with a warning), or
  exactly `step`. The architecture is read from the checkpoint's saved config, never from a
  config file. Raises CheckpointError when there is no usable checkpoint or it is
  not a generator's.
  """
  _, saved, _ = checkpoints.read_config(workdir, step)
  if saved.get('task', 'srgan') != 'srgan':
    raise CheckpointError(
        f'The checkpoint in {checkpoints.checkpoint_dir(workdir)!r} is a {saved.get("task")!r} '
        f'checkpoint, not a generator; use load_classifier({workdir!r}).')
  config = config_utils.dict_to_config(saved)
  model = models.create_generator(config)
  template = _generator_template(model, config.data.channels)
  restored_step, restored = checkpoints.restore(workdir, {'model': template}, step=step)
  # The saved config of the checkpoint actually restored (the same architecture: a workdir
  # never changes it), e.g. when the latest one was unusable.
  config = config_utils.dict_to_config(restored['config'])
  return Upscaler(model, restored['model'], config, restored_step)


# ---------------------------------------------------------------------------------------------
# The classifiers (the auxiliary-loss guide and the judge).


class Classifier:
  """A trained classifier: `predict(images)` -> labels, `logits(images)` -> (N, classes)."""

  def __init__(self, model, variables, config: ml_collections.ConfigDict, extra: dict):
    self.model = model
    self.variables = jax.device_put(variables)
    self.config = config
    self.extra = dict(extra or {})
    self.architecture = config.classifier.architecture
    self.channels = int(config.data.channels)
    self.image_size = classifier_image_size(self.extra)
    self._apply = jax.jit(
        lambda v, x: model.apply(v, _to_model_range(x, self.channels), train=False)[0])

  def __repr__(self):
    return (f'Classifier({self.architecture!r}, channels={self.channels}, '
            f'test_accuracy={self.extra.get("test_accuracy")})')

  def logits(self, images, batch_size: int = 1000) -> np.ndarray:
    """float32 (N, classes) logits ((classes,) for one (H, W) image) of images of the size it
    was trained on (28x28 for MNIST)."""
    batch_size = _check_batch_size(batch_size)
    x, layout = _to_nhwc(images, self.channels, 'classifier')
    if x.shape[1:3] != self.image_size:
      height, width = self.image_size
      raise ValueError(f'classifier: images must be {height}x{width} (the size it was trained '
                       f'on); got {x.shape[1]}x{x.shape[2]}.')
    fn = lambda chunk: self._apply(self.variables, chunk)
    out = _batched(fn, x, batch_size, (self.model.num_classes,), np.float32)
    return out[0] if layout.ndim == 2 else out

  def predict(self, images, batch_size: int = 1000) -> np.ndarray:
    """int32 labels (N,) (a scalar for one (H, W) image)."""
    return np.argmax(self.logits(images, batch_size), axis=-1).astype(np.int32)


CLASSIFIER_FIELDS = ('task', 'data.channels', 'classifier.architecture')


def classifier_image_size(extra: dict) -> tuple:
  """(height, width) a classifier checkpoint was trained at: its 'extra' facts' image_size,
  or 28x28 for the MNIST checkpoints made before classifiers took their dataset's size."""
  return models.classifier_image_shape(tuple(extra.get('image_size', (CLASSIFIER_SIZE,) * 2)))


def classifier_num_classes(extra: dict) -> int:
  """The classes of a classifier checkpoint: its 'extra' facts' num_classes, or MNIST's 10."""
  return int(extra.get('num_classes', 10))


def restore_classifier(workdir: str, expected_config=None):
  """(flax module, variables, extra facts) of the classifier saved in `workdir`.

  The network is rebuilt at the image size and number of classes recorded in the checkpoint's
  extra facts (MNIST checkpoints without them: 28x28, 10 classes). With `expected_config`, a
  checkpoint made for another architecture, channel count or dataset is a CheckpointError that
  names the path and what to do.
  """
  _, saved, extra = checkpoints.read_config(workdir)
  if saved.get('task') != 'classifier':
    raise CheckpointError(
        f'The checkpoint in {checkpoints.checkpoint_dir(workdir)!r} is a {saved.get("task")!r} '
        f'checkpoint, not a classifier; use load_generator({workdir!r}).')
  if expected_config is not None:
    expected = config_utils.config_to_dict(expected_config)
    diffs = [d for d in checkpoints.architecture_mismatches(saved, expected)
             if d.split(':')[0] in CLASSIFIER_FIELDS]
    # A guide of another dataset would score SR images against classes they are not of.
    saved_name = config_utils.get_field(saved, 'data.name', None)
    expected_name = config_utils.get_field(expected, 'data.name', None)
    if saved_name != expected_name:
      diffs.append(f'data.name: checkpoint has {saved_name!r}, config has {expected_name!r}')
    if diffs:
      raise CheckpointError(
          f'The classifier checkpoint in {checkpoints.checkpoint_dir(workdir)!r} does not fit '
          f'this run:\n  ' + '\n  '.join(diffs) + f'\nDelete {workdir!r} to retrain it (it is '
          f'trained automatically when missing), or point the config at another directory.')
  config = config_utils.dict_to_config(saved)
  model = models.create_classifier(config.classifier.architecture,
                                   num_classes=classifier_num_classes(extra))
  template = models.classifier_template(model, config.data.channels,
                                        classifier_image_size(extra))
  _, restored = checkpoints.restore(workdir, {'model': template})
  return model, restored['model'], restored['extra']


def load_classifier(workdir: str) -> Classifier:
  """The classifier saved in `workdir` (e.g. an SRGAN run's 'judge' or 'classifier' dir)."""
  model, variables, extra = restore_classifier(workdir)
  _, saved, _ = checkpoints.read_config(workdir)
  return Classifier(model, variables, config_utils.dict_to_config(saved), extra)
