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
  scale*W). The classifiers need the 28x28 images they were trained on.

Anything else (wrong rank or channel count, NaN/inf, floats outside [0, 1], other dtypes)
raises a ValueError that says what was expected.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

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

    def apply(variables, x):
      sr = model.apply(variables, _to_model_range(x, model.channels), train=False)  # tanh
      return jnp.clip(image_ops.to_unit_range(sr), 0.0, 1.0)
    self._apply = jax.jit(apply)

  def __repr__(self):
    return (f'Upscaler(scale={self.scale}, channels={self.channels}, step={self.step}, '
            f'res_blocks={self.model.num_res_blocks}, features={self.model.features})')

  def upscale(self, images, batch_size: int = 256) -> np.ndarray:
    """Super-resolves `images` (see the module docstring for layouts and value ranges).

    Runs in batches of `batch_size` (the last one padded, so each image size compiles a few
    times at most), so any number of images fits in memory. Returns the input's layout at
    `scale` times the height and width: uint8 for uint8 input, else float32 in [0, 1].
    """
    batch_size = _check_batch_size(batch_size)
    x, layout = _to_nhwc(images, self.channels, 'upscale')
    n, h, w, _ = x.shape
    fn = lambda chunk: self._apply(self.variables, chunk)
    out_dtype = np.uint8 if layout.is_uint8 else np.float32
    y = _batched(fn, x, batch_size, (h * self.scale, w * self.scale, layout.channels),
                 out_dtype, post=lambda y: _to_caller_dtype(y, layout))
    return _to_caller_layout(y, layout)

  __call__ = upscale


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
  """A trained MNIST classifier: `predict(images)` -> labels, `logits(images)` -> (N, 10)."""

  def __init__(self, model, variables, config: ml_collections.ConfigDict, extra: dict):
    self.model = model
    self.variables = jax.device_put(variables)
    self.config = config
    self.extra = dict(extra or {})
    self.architecture = config.classifier.architecture
    self.channels = int(config.data.channels)
    self._apply = jax.jit(
        lambda v, x: model.apply(v, _to_model_range(x, self.channels), train=False)[0])

  def __repr__(self):
    return (f'Classifier({self.architecture!r}, channels={self.channels}, '
            f'test_accuracy={self.extra.get("test_accuracy")})')

  def logits(self, images, batch_size: int = 1000) -> np.ndarray:
    """float32 (N, 10) logits ((10,) for one (H, W) image) of 28x28 images."""
    batch_size = _check_batch_size(batch_size)
    x, layout = _to_nhwc(images, self.channels, 'classifier')
    if x.shape[1:3] != (CLASSIFIER_SIZE, CLASSIFIER_SIZE):
      raise ValueError(f'classifier: images must be {CLASSIFIER_SIZE}x{CLASSIFIER_SIZE} (the '
                       f'size it was trained on); got {x.shape[1]}x{x.shape[2]}.')
    fn = lambda chunk: self._apply(self.variables, chunk)
    out = _batched(fn, x, batch_size, (self.model.num_classes,), np.float32)
    return out[0] if layout.ndim == 2 else out

  def predict(self, images, batch_size: int = 1000) -> np.ndarray:
    """int32 labels (N,) (a scalar for one (H, W) image)."""
    return np.argmax(self.logits(images, batch_size), axis=-1).astype(np.int32)


CLASSIFIER_FIELDS = ('task', 'data.channels', 'classifier.architecture')


def restore_classifier(workdir: str, expected_config=None):
  """(flax module, variables, extra facts) of the classifier saved in `workdir`.

  With `expected_config`, a checkpoint made for another architecture or channel count is a
  CheckpointError that names the path and what to do.
  """
  _, saved, _ = checkpoints.read_config(workdir)
  if saved.get('task') != 'classifier':
    raise CheckpointError(
        f'The checkpoint in {checkpoints.checkpoint_dir(workdir)!r} is a {saved.get("task")!r} '
        f'checkpoint, not a classifier; use load_generator({workdir!r}).')
  if expected_config is not None:
    diffs = [d for d in checkpoints.architecture_mismatches(
        saved, config_utils.config_to_dict(expected_config))
             if d.split(':')[0] in CLASSIFIER_FIELDS]
    if diffs:
      raise CheckpointError(
          f'The classifier checkpoint in {checkpoints.checkpoint_dir(workdir)!r} does not fit '
          f'this run:\n  ' + '\n  '.join(diffs) + f'\nDelete {workdir!r} to retrain it (it is '
          f'trained automatically when missing), or point the config at another directory.')
  config = config_utils.dict_to_config(saved)
  model = models.create_classifier(config.classifier.architecture)
  template = models.classifier_template(model, config.data.channels)
  _, restored = checkpoints.restore(workdir, {'model': template})
  return model, restored['model'], restored['extra']


def load_classifier(workdir: str) -> Classifier:
  """The classifier saved in `workdir` (e.g. an SRGAN run's 'judge' or 'classifier' dir)."""
  model, variables, extra = restore_classifier(workdir)
  _, saved, _ = checkpoints.read_config(workdir)
  return Classifier(model, variables, config_utils.dict_to_config(saved), extra)
