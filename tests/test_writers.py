"""Tests for srgan_jax.images, srgan_jax.writers and srgan_jax.files."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from srgan_jax import files
from srgan_jax import images
from srgan_jax import writers


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
  w.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  recs = [json.loads(line) for line in lines]
  assert recs[0] == {'step': 1, 'loss': 0.5, 'psnr': 20.0, 'n': 3}
  assert recs[1] == {'step': 2, 'loss': None, 'inf': None}
  assert writers.read_metrics(tmp_path) == recs
  tb = tmp_path / 'tensorboard'
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tb))


_IMPORTS_TORCH = """
import os, sys
sys.path.insert(0, sys.argv[1])  # A stand-in torch, which records that it was imported.
if sys.argv[2] == 'first':
  import torch
from srgan_jax import writers
w = writers.MetricWriter(sys.argv[3])
w.write_scalars(1, {'loss': 0.5})
w.write_images(1, {'grid': __import__('numpy').zeros((8, 8, 3), 'uint8')})
w.close()
print('torch imported:', 'torch' in sys.modules, os.path.exists(sys.argv[4]))
"""


@pytest.mark.parametrize('torch_first', [False, True])
def test_tensorboardx_leaves_torch_out_of_the_process(tmp_path, torch_first):
  """tensorboardX's writer imports torch, where it is installed, for a type annotation (1 s of
  each training start-up); the writers keep it out, and leave a torch imported before alone."""
  fake = tmp_path / 'site' / 'torch'
  fake.mkdir(parents=True)
  marker = tmp_path / 'imported'
  (fake / '__init__.py').write_text(f'open({str(marker)!r}, "w").close()\nclass Tensor: pass\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run(
      [sys.executable, '-c', _IMPORTS_TORCH, str(tmp_path / 'site'),
       'first' if torch_first else 'not', str(tmp_path / 'run'), str(marker)],
      cwd=root, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=root))
  assert run.returncode == 0, run.stderr[-3000:]
  assert f'torch imported: {torch_first} {torch_first}' in run.stdout, run.stdout
  assert writers.read_metrics(str(tmp_path / 'run'))[0]['loss'] == 0.5


def test_metric_writer_disabled_is_noop(tmp_path):
  w = writers.MetricWriter(tmp_path / 'x', enabled=False)
  w.write_scalars(1, {'a': 1.0})
  w.write_images(1, {'g': np.zeros((4, 4, 3), np.uint8)})
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
  # A short interval (3 steps in 2 s, e.g. the last one) is measured on its own steps.
  t[0] += 2.0
  p.update(153)
  assert p.interval_rate == pytest.approx(1.5)
  # After a resume at step 800, the first interval counts from 800.
  resumed = writers.Progress(2000, start_step=800, clock=lambda: t[0])
  t[0] += 4.0
  resumed.update(810)
  assert resumed.interval_rate == pytest.approx(2.5)
  assert writers.format_duration(3725) == '1h02m05s'
  assert writers.format_duration(math.inf) == '?'


def test_progress_eta_is_per_stage():
  """SRGAN's GAN steps run several times slower than its pretraining: the rate restarts in
  each stage, and before the last the ETA is the stage's, with the steps still to come."""
  t = [0.0]
  p = writers.Progress(1800, clock=lambda: t[0], stages=[(0, 'pretraining'), (1600, 'GAN')])
  t[0] += 10.0
  assert p.update(50).endswith('5.0 steps/s, pretraining ETA 5m10s, then 200 GAN steps')
  t[0] += 310.0
  assert p.update(1600).endswith('pretraining ETA 0s, then 200 GAN steps')
  t[0] += 50.0  # 50 GAN steps at 1 step/s: the pretraining's 5 steps/s are forgotten.
  line = p.update(1650)
  assert line.endswith('1.0 steps/s, ETA 2m30s'), line
  # Resumed in the GAN stage: its own rate from the first interval.
  r = writers.Progress(1800, 1700, clock=lambda: t[0], stages=[(0, 'pretraining'), (1600, 'GAN')])
  t[0] += 20.0
  assert r.update(1710).endswith('0.5 steps/s, ETA 3m00s')


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / 'sub' / 'results.json'
  files.write_json(path, {'psnr': 20.0})
  assert files.read_json(path) == {'psnr': 20.0}

  def broken(f):
    f.write(b'{"psnr": 2')
    raise OSError('disk full')
  with pytest.raises(OSError, match='disk full'):
    files.atomic_write(path, broken)
  assert files.read_json(path) == {'psnr': 20.0}
  assert os.listdir(path.parent) == ['results.json']  # No temporary file left behind.
  assert files.read_json(tmp_path / 'missing.json') is None


def test_truncate_metrics_after_drops_later_records(tmp_path):
  w = writers.MetricWriter(tmp_path)
  for step in (2, 4, 6):
    w.write_scalars(step, {'loss': 1.0 / step})
  w.close()
  writers.truncate_metrics_after(tmp_path, 4)
  assert [r['step'] for r in writers.read_metrics(tmp_path)] == [2, 4]
