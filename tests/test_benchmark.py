"""The benchmark prints every figure as a finite number, on a tiny config (no timed asserts),
and counts FLOPs off CPU as the compiled steps count them."""

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import speed
from benchmarks import timing
from conftest import COMPILE_FLAGS
from conftest import make_tiny_config
from srgan_jax import steps
from srgan_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.train_examples=256', '--config.data.eval_examples=32',
        '--config.generator.num_res_blocks=1', '--config.generator.features=8',
        '--config.discriminator.features=(8,16)', '--config.batch_size=8',
        '--config.eval.batch_size=16', '--config.classifier.architecture=seed_cnn']


def _check_figures(text, expected):
  figures = timing.parse_figures(text)
  missing = [name for name in expected if name not in figures]
  assert not missing, f'missing figures {missing} in:\n{text}'
  bad = {k: v for k, v in figures.items() if not math.isfinite(v)}
  assert not bad, f'non-finite figures {bad}'
  lines = [line for line in text.splitlines() if line.strip()]
  assert lines[-1].startswith(timing.SUMMARY_PREFIX), lines[-1]
  for part in lines[-1][len(timing.SUMMARY_PREFIX):].split():
    assert math.isfinite(float(part.split('=')[1])), part
  return figures


def test_parse_figures():
  text = ('info: x\nbench: gan/steps_per_s = 0.5 steps/s  # median\nbench: a/b = 3 \n'
          'summary: gan/steps_per_s=0.5\n')
  assert timing.parse_figures(text) == {'gan/steps_per_s': 0.5, 'a/b': 3.0}


def test_cpu_flop_counter_matches_compiled_steps():
  """The FLOP count used off CPU (XLA:CPU on per-device shapes, times the device count)."""
  config = make_tiny_config()
  devices = jax.local_devices()
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(0))
  n = len(devices)
  batch = {'hr': np.zeros((n, 2, 28, 28, 1), np.uint8), 'lr': np.zeros((n, 2, 7, 7, 1), np.uint8),
           'label': np.zeros((n, 2), np.int32)}
  frozen = steps.Frozen()
  pretrain, _ = steps.make_pmapped_steps(config, devices)
  direct = timing.flops(pretrain.lower(g_state, d_state, batch, frozen).compile(), n)
  counter = timing.CpuFlopCounter(n)
  cpu_pretrain, _ = steps.make_pmapped_steps(config, counter.devices)
  counted = counter.flops(cpu_pretrain, g_state, d_state, batch, frozen, batch_args=(2,))
  assert direct > 0
  # A one-device module drops the all-reduces (a few % of this tiny network's FLOPs).
  assert abs(counted - direct) <= 0.05 * direct, (counted, direct)


@pytest.fixture(scope='module', autouse=True)
def command_line_run():
  """The command-line run, started first so that it overlaps the in-process tests."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {COMPILE_FLAGS}',
             JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'benchmarks', '--config=configs/seed_x2_rgb.py',
       *TINY, '--config.loss.content=vgg', '--random_vgg', '--config.loss.auxiliary=classifier',
       '--config.conv_implementation=xla',  # Tuning has tests of its own.
       '--steps=1', '--runs=5', '--peak_matmul_size=64', '--variants=two_steps',
       '--input_pipeline_steps=5', '--breakdown'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  yield proc
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


def test_command_line_prints_every_figure(command_line_run):
  """The brief's VGG command, shrunk: seed_x2_rgb + VGG (random) + classifier loss + a variant."""
  stdout, stderr = command_line_run.communicate(timeout=400)
  assert command_line_run.returncode == 0, stdout[-3000:] + stderr[-3000:]
  text = stdout
  v = 'variant/two_steps'
  expected = list(speed.CORE_FIGURES) + list(speed.EVAL_FIGURES) + [
      f'{v}/{k}' for k in ('steps_per_s', 'steps_per_s_min', 'steps_per_s_max',
                           'images_per_s', 'speedup', 'first_call_s')] + [
      f'breakdown/{part}/{k}' for part in ('generator', 'discriminator', 'classifier', 'vgg')
      for k in ('ms', 'gflop', 'utilisation_pct')] + ['breakdown/parts_share_of_gan_step_pct']
  figures = _check_figures(text, expected)
  assert 'info: 2 cpu devices' in text
  assert 'WARNING: VGG19 with RANDOM weights' in text
  assert "'seed_cnn' loss classifier has RANDOM weights" in text
  assert 'judge is a RANDOM LeNet' in text
  assert figures['flops_per_step/gan'] > figures['flops_per_step/pretrain'] > 0
