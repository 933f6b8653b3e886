"""The benchmark prints every figure as a finite number, on a tiny config (no timed asserts);
train.gan_step (one call, D's pass over SR shared) computes what the seed's two steps compute."""

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import make_tiny_config
from srgan_jax import benchmark
from srgan_jax import input_pipeline
from srgan_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.train_examples=256', '--config.data.eval_examples=32',
        '--config.generator.num_res_blocks=1', '--config.generator.features=8',
        '--config.discriminator.features=(8,16)', '--config.batch_size=8',
        '--config.eval.batch_size=16', '--config.classifier.architecture=seed_cnn']


def _check_figures(text, expected):
  figures = benchmark.parse_figures(text)
  missing = [name for name in expected if name not in figures]
  assert not missing, f'missing figures {missing} in:\n{text}'
  bad = {k: v for k, v in figures.items() if not math.isfinite(v)}
  assert not bad, f'non-finite figures {bad}'
  lines = [line for line in text.splitlines() if line.strip()]
  assert lines[-1].startswith(benchmark.SUMMARY_PREFIX), lines[-1]
  for part in lines[-1][len(benchmark.SUMMARY_PREFIX):].split():
    assert math.isfinite(float(part.split('=')[1])), part
  return figures


def _train(config, split, states, variant, steps=2):
  devices = jax.local_devices()
  iteration = benchmark.make_gan_iteration(config, devices, variant)
  # Fresh buffers: the iterations consume (donate) the states they are given.
  g_state, d_state = benchmark._fresh_copy(states, devices)  # pylint: disable=protected-access
  frozen = benchmark.replicate(train.Frozen(), devices)
  for step in range(steps):
    idx = input_pipeline.batch_indices(config.seed, step, config.batch_size,
                                       split.num_examples)
    batch = input_pipeline.shard(input_pipeline.get_batch(split, idx), len(devices))
    g_state, d_state, metrics = iteration(g_state, d_state, batch, frozen)
  return jax.device_get(((g_state.params, g_state.ema_params, g_state.batch_stats,
                          d_state.params, d_state.batch_stats), metrics))


def test_gan_step_matches_the_two_steps():
  # Relativistic + AC-GAN head: every branch of train.gan_step that reads D's outputs.
  config = make_tiny_config(**{'loss.adversarial': 'relativistic',
                               'loss.auxiliary': 'discriminator_head'})
  split = input_pipeline.load_split(config, 'train')
  states = train.create_train_states(config, jax.random.PRNGKey(0))
  base_vars, base_metrics = _train(config, split, states, 'two_steps')
  variables, metrics = _train(config, split, states, 'train')
  assert metrics.keys() == base_metrics.keys()
  for k in metrics:
    np.testing.assert_allclose(metrics[k], base_metrics[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(variables),
                          jax.tree_util.tree_leaves(base_vars)):
    name = jax.tree_util.keystr(path)
    # A conv bias right before BatchNorm has a zero gradient up to rounding, which Adam
    # scales to +-lr: any change in the order of float operations moves it (and, through the
    # activations, BatchNorm's running means by a tenth of that per step).
    if "['bias']" in name and 'Conv' in name:
      continue
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=name)


def test_parse_figures():
  text = ('info: x\nbench: gan/steps_per_s = 0.5 steps/s  # median\nbench: a/b = 3 \n'
          'summary: gan/steps_per_s=0.5\n')
  assert benchmark.parse_figures(text) == {'gan/steps_per_s': 0.5, 'a/b': 3.0}


def test_cpu_flop_counter_matches_compiled_steps():
  """The FLOP count used off CPU (XLA:CPU on per-device shapes, times the device count)."""
  config = make_tiny_config()
  devices = jax.local_devices()
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(0))
  n = len(devices)
  batch = {'hr': np.zeros((n, 2, 28, 28, 1), np.uint8), 'lr': np.zeros((n, 2, 7, 7, 1), np.uint8),
           'label': np.zeros((n, 2), np.int32)}
  frozen = train.Frozen()
  pretrain, _ = train.make_pmapped_steps(config, devices)
  direct = benchmark._flops(pretrain.lower(g_state, d_state, batch, frozen).compile(), n)  # pylint: disable=protected-access
  counter = benchmark.CpuFlopCounter(n)
  cpu_pretrain, _ = counter.pmapped_steps(config)
  counted = counter.flops(cpu_pretrain, g_state, d_state, batch, frozen, batch_args=(2,))
  assert direct > 0
  # A one-device module drops the all-reduces (a few % of this tiny network's FLOPs).
  assert abs(counted - direct) <= 0.05 * direct, (counted, direct)


@pytest.fixture(scope='module', autouse=True)
def command_line_run():
  """The command-line run, started first so that it overlaps the in-process tests."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'srgan_jax.benchmark', '--config=configs/seed_x2_rgb.py',
       *TINY, '--config.loss.content=vgg', '--random_vgg', '--config.loss.auxiliary=classifier',
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
  expected = list(benchmark.CORE_FIGURES) + list(benchmark.EVAL_FIGURES) + [
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
