"""Image grids and PNG output for looking at super-resolution results.

``sr_comparison_grid`` (HR | bicubic | SR, one row per sample) is the picture people look at
first; ``make_grid`` is the general tool behind it and ``save_png`` writes one atomically.
Grids are uint8 HxWx3 (grey tiled to RGB) so they go straight to PNG or TensorBoard.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from srgan_jax import files

DEFAULT_ZOOM = 3  # 28px MNIST digits are tiny on screen.


def to_uint8_rgb(image) -> np.ndarray:
  """HxW, HxWx1 or HxWx3 float in [0, 1] (clipped) or uint8 -> uint8 HxWx3."""
  x = np.asarray(image)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
    raise ValueError(f'expected HxW or HxWxC image with C in 1/3/4, got shape {x.shape}')
  if x.shape[-1] == 4:
    x = x[..., :3]
  if x.dtype != np.uint8:
    x = np.nan_to_num(x.astype(np.float64), nan=0.0)
    x = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x


def _resize_nearest(x: np.ndarray, height: int) -> np.ndarray:
  """Nearest-neighbour resize of HxWxC to the given height, keeping the aspect ratio."""
  h, w = x.shape[:2]
  if h == height:
    return x
  width = max(1, int(round(w * height / h)))
  rows = (np.arange(height) * h // height).clip(0, h - 1)
  cols = (np.arange(width) * w // width).clip(0, w - 1)
  return x[rows][:, cols]


def make_grid(rows, pad: int = 2, zoom: int = DEFAULT_ZOOM, upscale_to: int | None = None,
              pad_value: int = 255) -> np.ndarray:
  """Lays out a list of rows of images as one uint8 HxWx3 array.

  Args:
    rows: list of lists of images (HxW or HxWxC, float in [0, 1] or uint8).
    pad: pixels of padding between and around cells (after zoom).
    zoom: integer nearest-neighbour magnification of the whole content, for visibility.
    upscale_to: cell height every image is resized to (nearest neighbour) before zoom;
      default the largest image height, so e.g. a 7x7 LR input lines up with 28x28 HR.
    pad_value: grey level of the padding.
  """
  rows = [[to_uint8_rgb(im) for im in row] for row in rows]
  rows = [row for row in rows if row]
  if not rows:
    raise ValueError('make_grid needs at least one image')
  zoom = int(zoom)
  if zoom < 1:
    raise ValueError(f'zoom must be >= 1, got {zoom}')
  height = upscale_to or max(im.shape[0] for row in rows for im in row)
  rows = [[_resize_nearest(im, height) for im in row] for row in rows]
  if zoom > 1:
    rows = [[np.repeat(np.repeat(im, zoom, 0), zoom, 1) for im in row] for row in rows]
  cell_h = height * zoom
  row_widths = [sum(im.shape[1] for im in row) + pad * (len(row) - 1) for row in rows]
  total_w = max(row_widths) + 2 * pad
  total_h = len(rows) * cell_h + (len(rows) + 1) * pad
  grid = np.full((total_h, total_w, 3), pad_value, np.uint8)
  for r, row in enumerate(rows):
    y = pad + r * (cell_h + pad)
    x = pad
    for im in row:
      grid[y:y + cell_h, x:x + im.shape[1]] = im
      x += im.shape[1] + pad
  return grid


def sr_comparison_grid(hr, bicubic, sr, pad: int = 2, zoom: int = DEFAULT_ZOOM,
                       max_rows: int | None = None) -> np.ndarray:
  """One row per sample: HR | bicubic | SR (each N x H x W x C in [0, 1]) -> uint8 HxWx3."""
  hr, bicubic, sr = np.asarray(hr), np.asarray(bicubic), np.asarray(sr)
  n = min(len(hr), len(bicubic), len(sr))
  if max_rows is not None:
    n = min(n, max_rows)
  return make_grid([[hr[i], bicubic[i], sr[i]] for i in range(n)], pad=pad, zoom=zoom)


def save_png(path, array) -> None:
  """Writes an image array (see ``to_uint8_rgb``) as PNG atomically; creates parent dirs."""
  image = Image.fromarray(to_uint8_rgb(array))
  files.atomic_write(path, lambda f: image.save(f, format='PNG'))
