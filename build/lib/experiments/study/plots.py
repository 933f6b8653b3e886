"""The study's figures (PNG): eval curves per arm, and a grid of test digits through every arm."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from srgan_jax import files
from srgan_jax import image_ops
from srgan_jax import images as images_lib
from srgan_jax import inference
from srgan_jax import input_pipeline


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(plt, fig, path: str):
  files.atomic_write(path, lambda f: fig.savefig(f, format='png'))
  plt.close(fig)


def plot_curves(curves, key: str, path: str, title: str, ylabel: str, refs=(),
                gan_start: Optional[int] = None, multiplier: float = 1.0):
  """One line per arm (mean over seeds) of eval/<key> against the step; PNG at `path`."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
  for arm, c in curves.items():
    steps = sorted(c[key])
    if steps:
      ax.plot(steps, [c[key][s] * multiplier for s in steps], marker='o', markersize=3,
              label=arm)
  styles = (('black', '--'), ('grey', ':'))
  for (name, value), (color, style) in zip(refs, styles):
    if value is not None and math.isfinite(value):
      ax.axhline(value * multiplier, color=color, linestyle=style, linewidth=1, label=name)
  if gan_start:
    ax.axvline(gan_start, color='grey', linewidth=0.8, alpha=0.6)
    ax.annotate(' GAN stage', (gan_start, 0.02), xycoords=('data', 'axes fraction'),
                color='grey', fontsize=8)
  ax.set_xlabel('training step')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='best')
  fig.tight_layout()
  _save(plt, fig, path)


def grid_digits(labels: np.ndarray) -> list:
  """Index of the first test image of each class 0..9 (classes absent are skipped)."""
  out = []
  for c in range(10):
    hits = np.flatnonzero(labels == c)
    if hits.size:
      out.append(int(hits[0]))
  return out


def sample_rows(config, arm_dirs: dict) -> tuple:
  """(row names, rows of images) for the grid: LR, HR, bicubic, then each arm's SR."""
  test = input_pipeline.load_split(config, 'test')
  idx = np.asarray(grid_digits(test.labels))
  lr, hr = test.lr[idx], test.hr[idx]
  bicubic = image_ops.upsample_bicubic(image_ops.to_model_range(lr), config.data.scale)
  bicubic = np.asarray(image_ops.to_unit_range(bicubic))  # In [0, 1]: upsampling clips.
  names, rows = ['LR input', 'HR', 'bicubic'], [list(lr), list(hr), list(bicubic)]
  for arm, path in arm_dirs.items():
    sr = inference.load_generator(path).upscale(lr)
    names.append(arm)
    rows.append(list(sr))
  return names, rows


def plot_grid(names, rows, path: str, title: str):
  """The rows of digits as one image, each row labelled with its name."""
  plt = _pyplot()
  pad, cell = 2, 28
  grid = images_lib.make_grid(rows, pad=pad, zoom=1, upscale_to=cell)
  h, w = grid.shape[:2]
  zoom, dpi = 3, 100
  label_w = 1.4
  fig = plt.figure(figsize=(w * zoom / dpi + label_w, h * zoom / dpi + 0.4), dpi=dpi)
  ax = fig.add_axes([label_w / (w * zoom / dpi + label_w), 0, 1 - label_w /
                     (w * zoom / dpi + label_w), (h * zoom / dpi) / (h * zoom / dpi + 0.4)])
  ax.imshow(grid, interpolation='nearest')
  ax.set_yticks([pad + r * (cell + pad) + cell / 2 for r in range(len(names))])
  ax.set_yticklabels(names, fontsize=9)
  ax.set_xticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)
  ax.tick_params(length=0)
  fig.suptitle(title, fontsize=10, y=0.985, va='top')
  _save(plt, fig, path)
