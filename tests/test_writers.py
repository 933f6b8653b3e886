"""Tests for srgan_jax.images and srgan_jax.writers."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from srgan_jax import images, writers


def test_make_grid_shape_dtype():
  rows = [[np.zeros((28, 28, 1)), np.ones((28, 28))] for _ in range(3)]
  g = images.make_grid(rows, pad=2, zoom=1)
  assert g.dtype == np.uint8 and g.shape == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2, 3)
  assert g[2, 2].tolist() == [0, 0, 0] and g[2, 2 + 28 + 2].tolist() == [255, 255, 255]


def test_make_grid_mixed_sizes_and_zoom():
  lr = np.full((7, 7, 1), 0.5, np.float32)
  hr = np.random.default_rng(0).uniform(size=(28, 28, 3))
  g = images.make_grid([[lr, hr]], pad=1, zoom=3)
  assert g.shape == (28 * 3 + 2, 2 * 28 * 3 + 3, 3)
  assert np.all(g[1:1 + 84, 1:1 + 84] == 128)  # LR upscaled by nearest neighbour.


def test_sr_comparison_grid():
  hr = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
  g = images.sr_comparison_grid(hr, hr, hr, pad=2, zoom=2)
  assert g.dtype == np.uint8
  assert g.shape == (4 * 56 + 5 * 2, 3 * 56 + 4 * 2, 3)


def test_save_png_round_trip(tmp_path):
  arr = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
  path = tmp_path / 'a' / 'b' / 'grid.png'
  images.save_png(path, arr)
  np.testing.assert_array_equal(np.asarray(Image.open(path).convert('RGB')), arr)
  assert os.listdir(path.parent) == ['grid.png']  # no temp files left.


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  w = writers.MetricWriter(tmp_path)
  w.write_scalars(1, {'loss': jnp.float32(0.5), 'psnr': np.float64(20.0), 'n': np.int32(3)})
  w.write_scalars(2, {'loss': float('nan'), 'inf': np.inf})
  w.write_images(2, {'grid': np.zeros((8, 8, 3), np.uint8)})
  w.write_text(2, 'config', '**hello**')
  w.flush()
  w.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  recs = [json.loads(line) for line in lines]
  assert recs[0] == {'step': 1, 'loss': 0.5, 'psnr': 20.0, 'n': 3}
  assert recs[1] == {'step': 2, 'loss': None, 'inf': None}
  assert writers.read_metrics(tmp_path) == recs
  tb = tmp_path / 'tensorboard'
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tb))


def test_metric_writer_disabled_is_noop(tmp_path):
  w = writers.MetricWriter(tmp_path / 'x', enabled=False)
  w.write_scalars(1, {'a': 1.0})
  w.write_images(1, {'g': np.zeros((4, 4, 3), np.uint8)})
  w.write_text(1, 't', 'x')
  w.flush()
  w.close()
  assert not (tmp_path / 'x').exists()


def test_read_metrics_skips_truncated_last_line(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
  assert writers.read_metrics(tmp_path) == [{'step': 1, 'a': 1.0}, {'step': 2, 'a': 2.0}]
  assert writers.read_metrics(tmp_path / 'missing') == []


def test_progress_line():
  t = [100.0]
  p = writers.Progress(2000, start_step=0, clock=lambda: t[0])
  assert 'ETA' in p.update(0)
  t[0] += 10.0
  line = p.update(150)
  assert line.startswith('step 150/2000 (7.5%) 15.0 steps/s')
  assert 'ETA 2m03s' in line
  assert writers.format_duration(3725) == '1h02m05s'
  assert writers.format_duration(math.inf) == '?'
