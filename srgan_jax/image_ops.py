"""Pixel ranges, channel counts, bicubic resizing and 2x2 max pooling of image batches (NHWC).

Files hold uint8 [0, 255]; the networks see float32 [-1, 1] (to_model_range / to_unit_range).
LR images are made from HR by antialiased bicubic downsampling on the CPU, rounded to uint8
as an LR image file would hold them, so the LR inputs are bit-identical whatever accelerator
trains the model. Bicubic upsampling of LR is the baseline of every table.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

DOWNSAMPLE_CHUNK = 5000
# ITU-R BT.601 luma weights for RGB -> grey.
_LUMA_601 = np.array([0.299, 0.587, 0.114], np.float64)


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


def to_unit_range(images):
  """float [-1, 1] -> [0, 1] (affine, so gradients pass through)."""
  return (images + 1.0) * 0.5


def _luma(images: np.ndarray) -> np.ndarray:
  grey = np.tensordot(images.astype(np.float64), _LUMA_601, axes=([-1], [0]))
  return np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None]


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """uint8 (..., C) images with `channels` channels: grey tiled to RGB, RGB to BT.601 luma,
  alpha dropped."""
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if have == 3 and channels == 1:
    return _luma(images)
  if have == 4:
    return to_channels(images[..., :3], channels)
  raise ValueError(f'cannot convert {have}-channel images to {channels} channels')


def _window_winners(x):
  """The four taps of each 2x2 window at stride 2 (top-left, top-right, bottom-left,
  bottom-right; odd sizes' last row or column dropped) and, for each tap, where it is the
  window's first maximum in row-major order: select-and-scatter's choice, which both the
  pooled value and its gradient follow."""
  x = x[:, :x.shape[1] // 2 * 2, :x.shape[2] // 2 * 2]
  a, b, c, d = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
  c_wins = c >= d
  cd = jnp.where(c_wins, c, d)
  b_wins = b >= cd
  a_wins = a >= jnp.where(b_wins, b, cd)
  to_b = ~a_wins & b_wins
  to_c = ~a_wins & ~b_wins & c_wins
  return (a, b, c, d), (a_wins, to_b, to_c, ~(a_wins | b_wins | c_wins))


@jax.custom_vjp
def max_pool_2x2(x):
  """2x2 max pooling at stride 2, as nn.max_pool(x, (2, 2), (2, 2)) (odd sizes: the last row or
  column dropped), written with elementwise selects so that its gradient is elementwise too.
  The gradient is select-and-scatter's: all of it to the first maximum of each window in
  row-major order. Reverse-mode only (a custom_vjp: jax.jvp does not go through it).

  Why: XLA:CPU computes nn.max_pool's gradient (select-and-scatter, lowered to reduce-windows
  and iota fusions) slowly: the seed CNN's train step took 190 ms at batch 64 with it, 139 ms
  with selects. Why a custom gradient: autodiff of the selects scatters each tap's gradient
  back with a stride-2 interior pad, and XLA:CPU fused the four pads into the next layer's
  backward pass, recomputing the tap selects for each: 18 and 14 ms a device for the seed
  CNN's two pools on an AVX2 AMD EPYC (benchmarks/README.md, 2026-12-03). Here the taps'
  gradients are computed once at the pooled size and interleaved by one reshape.
  """
  (a, b, c, d), (to_a, to_b, to_c, _) = _window_winners(x)
  return jnp.where(to_a, a, jnp.where(to_b, b, jnp.where(to_c, c, d)))


def _max_pool_2x2_fwd(x):
  return max_pool_2x2(x), x


def _max_pool_2x2_bwd(x, g):
  _, winners = _window_winners(x)
  zero = jnp.zeros((), g.dtype)
  ga, gb, gc, gd = (jnp.where(wins, g, zero) for wins in winners)
  n, h, w, ch = g.shape
  # (n, h, 2, w, 2, ch): row offset then column offset inside each window.
  dx = jnp.stack([jnp.stack([ga, gb], axis=3), jnp.stack([gc, gd], axis=3)], axis=2)
  dx = dx.reshape(n, 2 * h, 2 * w, ch)
  return (jnp.pad(dx, ((0, 0), (0, x.shape[1] - 2 * h), (0, x.shape[2] - 2 * w), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)
