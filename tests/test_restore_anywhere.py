"""Checkpoints restore on any device count: the session's run (4 host devices) on 1 device.

A user trains on several devices (or processes) and restores in Colab on one: `load_generator`
must give the trained generator there, and the same training command must resume the run
there when its global batch still divides the new device count. When it does not, the run
stops before any long work with a message that says what to set.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from srgan_jax import checkpoints
from srgan_jax import config_utils
from srgan_jax import errors
from srgan_jax import image_ops
from srgan_jax import inference
from srgan_jax import sources
from srgan_jax import train
from srgan_jax import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
MORE_STEPS = 2  # GAN steps the resumed run trains on one device.


def one_device_env():
  """This session's environment (caches, JAX_PLATFORMS) with 1 host device instead of 4."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(
      [f for f in env.get('XLA_FLAGS', '').split()
       if not f.startswith('--xla_force_host_platform_device_count')]
      + ['--xla_force_host_platform_device_count=1'])
  env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH', '')) if p)
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def write_config_file(config, directory) -> str:
  """A config file (for main.py --config) that gives back `config` exactly."""
  values = os.path.join(directory, 'config.json')
  with open(values, 'w') as f:
    json.dump(config_utils.config_to_dict(config), f)
  path = os.path.join(directory, 'run_config.py')
  with open(path, 'w') as f:
    f.write(textwrap.dedent(f"""
        import json
        from srgan_jax import config_utils


        def get_config():
          with open({values!r}) as f:
            return config_utils.dict_to_config(json.load(f))
    """))
  return path


def test_a_4_device_run_restores_and_resumes_on_1_device(one_command_run, tmp_path):
  config, workdir, _, _ = one_command_run
  assert config.cpu_devices_per_core is False  # So main.py keeps the 1 device it is given.
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)  # The session's workdir stays as it is.
  trained_step = checkpoints.read_config(workdir)[0]
  total_steps = config.pretrain_steps + config.num_train_steps + MORE_STEPS
  config_file = write_config_file(config, str(tmp_path))
  hr, _ = sources.load_offline_mnist('test')
  lr = image_ops.downsample_bicubic(hr[:8, ..., None], config.data.scale)[..., 0]
  np.save(tmp_path / 'lr.npy', lr)
  # One process does both, as a user would in a notebook: restore the generator, then resume
  # the run with the training command (main.py, run as `python main.py` runs it).
  script = textwrap.dedent(f"""
      import runpy, sys
      import jax
      import numpy as np
      from srgan_jax.inference import load_generator
      assert jax.device_count() == 1, jax.devices()
      up = load_generator({copy!r})
      assert up.step == {trained_step}, up.step
      np.save('sr_restored.npy', up.upscale(np.load('lr.npy')))
      sys.argv = ['main.py', '--config={config_file}', '--workdir={copy}',
                  '--config.num_train_steps={config.num_train_steps + MORE_STEPS}']
      try:
        runpy.run_path({os.path.join(ROOT, 'main.py')!r}, run_name='__main__')
      except SystemExit as e:
        assert not e.code, f'main.py exited with {{e.code}}'
      print('resumed to step', load_generator({copy!r}).step)
  """)
  t0 = time.time()
  proc = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), env=one_device_env(),
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
  print(f'restore + resume on 1 device: {time.time() - t0:.1f} s')
  # The generator restored on 1 device computes what it computes here, on 4: the same pixels
  # up to float rounding. XLA:CPU's Eigen convolutions (config.cpu_conv_library='eigen', as in
  # this session) block their work by the threads a device gets, which depends on the device
  # count, so a value at a rounding boundary can land one grey level apart (measured: 1 pixel
  # of 6272 in 1 of 5 runs); a wrong or half-restored generator is tens of levels off.
  restored = np.load(tmp_path / 'sr_restored.npy').astype(np.int16)
  here = inference.load_generator(workdir).upscale(lr).astype(np.int16)
  assert restored.shape == here.shape
  assert np.abs(restored - here).max() <= 1 and np.mean(restored != here) < 1e-3, (
      np.abs(restored - here).max(), np.mean(restored != here))
  # The resume continued from the 4-device checkpoint, not from scratch.
  assert f'Resumed from the checkpoint at step {trained_step}' in proc.stderr, proc.stderr[-4000:]
  assert f'resumed to step {total_steps}' in proc.stdout, proc.stdout[-2000:]
  # Every conv computed by the run's own decisions (conv_plan.json, made at 4 devices' batch).
  assert 'No tuned implementation' not in proc.stderr, proc.stderr[-4000:]
  assert checkpoints.read_config(copy)[0] == total_steps
  steps = [r['step'] for r in writers.read_metrics(copy) if 'content' in r]
  assert steps == sorted(set(steps)) and steps[-1] == total_steps, steps
  assert json.load(open(os.path.join(copy, 'results.json')))['step'] == total_steps
  assert checkpoints.read_config(workdir)[0] == trained_step  # The original is untouched.


def test_a_batch_that_does_not_divide_the_new_device_count_is_a_clear_error(
    one_command_run, tmp_path, monkeypatch):
  """Resuming a batch-8 run on 3 devices stops at once, saying what to set."""
  config, workdir, _, _ = one_command_run
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  before = open(os.path.join(copy, 'metrics.jsonl')).read()
  monkeypatch.setattr(train.jax, 'device_count', lambda *a: 3)  # What 3 devices report.
  t0 = time.time()
  with pytest.raises(errors.ConfigError) as info:
    train.train_and_evaluate(config, copy)
  message = str(info.value)
  assert time.time() - t0 < 2, 'the check must come before any long work'
  # Every batch that is split over the devices, each with a value that works, at once.
  assert 'config.batch_size = 8, config.eval.batch_size = 32, config.classifier.batch_size = ' \
      '32 must be positive multiples of the number of devices (3)' in message, message
  assert ('--config.batch_size=9 --config.eval.batch_size=33 --config.classifier.batch_size=33'
          in message), message
  assert 'resume with these set' in message, message
  assert open(os.path.join(copy, 'metrics.jsonl')).read() == before  # Nothing was touched.
  assert checkpoints.read_config(copy)[0] == checkpoints.read_config(workdir)[0]
