"""Multi-process training on one machine: two JAX processes on 127.0.0.1 (gloo collectives).

Each process feeds only its shard of the global batch (input_pipeline.batch_indices with its
process index) and the pmapped train steps are built over the *global* devices; after a few
pretrain and GAN steps both processes must hold the parameters a single process with the same
global batch (and the same total number of devices) ends with. Both processes then save one
checkpoint together, which load_generator restores in a process with 1 device.

The same file is the worker: ``python tests/test_distributed.py --worker ...``.
"""

import argparse
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT_S = 150
PRETRAIN_STEPS = 1
GAN_STEPS = 2


# ---------------------------------------------------------------------------------------------
# Worker (a separate process).


def _flatten(prefix, tree, out):
  import jax  # pylint: disable=g-import-not-at-top
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)


def worker(args):
  """Trains the tiny SRGAN for a few steps and saves its variables to --out."""
  sys.path[:0] = [ROOT, HERE]
  os.environ['JAX_PLATFORMS'] = 'cpu'
  from conftest import COMPILE_FLAGS, make_tiny_config  # pylint: disable=g-import-not-at-top
  # conftest asks for 4 host devices; this process wants its own count (read when JAX starts).
  os.environ['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={args.local_devices} '
                             f'{COMPILE_FLAGS}')
  import jax  # pylint: disable=g-import-not-at-top
  from srgan_jax import distributed  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from srgan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from srgan_jax import platform  # pylint: disable=g-import-not-at-top
  from srgan_jax import state  # pylint: disable=g-import-not-at-top
  from srgan_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from srgan_jax import train  # pylint: disable=g-import-not-at-top
  platform.freeze_imported_objects()

  joined = distributed.initialize(
      f'127.0.0.1:{args.port}' if args.num_processes > 1 else None,
      args.num_processes if args.num_processes > 1 else None,
      args.process_id if args.num_processes > 1 else None,
      initialization_timeout=60)
  assert joined == (args.num_processes > 1)
  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.local_device_count() == args.local_devices
  print('devices', jax.devices(), 'global_devices', distributed.global_devices(), flush=True)
  config = make_tiny_config()
  # Random images: what is tested is the arithmetic across processes, not the data (and
  # reading MNIST costs each process seconds).
  rng = np.random.default_rng(0)
  n, scale = config.data.train_examples, config.data.scale
  split = input_pipeline.Split(
      hr=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
      lr=rng.integers(0, 256, (n, 28 // scale, 28 // scale, 1), dtype=np.uint8),
      labels=rng.integers(0, 10, (n,)).astype(np.int32))
  states = train.create_train_states(config, jax.random.PRNGKey(config.seed))
  # The steps pmapped over every process's devices (what multi-process training needs), the
  # states placed once on that global mesh, as train.train_and_evaluate does.
  devices = distributed.global_devices()
  g_state, d_state = distributed.replicate(states, devices, state.AXIS)
  pretrain_step, gan_step = steps_lib.make_pmapped_steps(config, devices)
  frozen = steps_lib.Frozen()
  for step in range(PRETRAIN_STEPS + GAN_STEPS):
    idx = input_pipeline.batch_indices(config.seed, step, config.batch_size,
                                       split.num_examples, jax.process_index(),
                                       jax.process_count())
    batch = input_pipeline.shard(input_pipeline.get_batch(split, idx), jax.local_device_count())
    if step < PRETRAIN_STEPS:
      g_state, _, _ = pretrain_step(g_state, d_state, batch, frozen)
    else:
      g_state, d_state, _ = gan_step(g_state, d_state, batch, frozen)
  out = {}
  _flatten('g/params', g_state.params, out)
  _flatten('g/ema', g_state.ema_params, out)
  _flatten('g/batch_stats', g_state.batch_stats, out)
  _flatten('d/params', d_state.params, out)
  _flatten('d/batch_stats', d_state.batch_stats, out)
  np.savez(os.path.join(args.out, f'p{args.process_id}.npz'), **out)
  if args.checkpoint:  # Every process takes part in the save, as train.py's loop does.
    from srgan_jax import checkpoints  # pylint: disable=g-import-not-at-top
    checkpoints.save(checkpoints.manager(args.checkpoint), PRETRAIN_STEPS + GAN_STEPS,
                     {'generator': g_state, 'discriminator': d_state},
                     train.inference_variables(g_state), config)
  multihost_utils.sync_global_devices('done')
  print('worker done', args.process_id, flush=True)


def restore_worker(args):
  """Restores the generator of --restore with load_generator on this process's devices (1)
  and saves its variables to --out, named as the trained ones."""
  sys.path[:0] = [ROOT]
  os.environ['JAX_PLATFORMS'] = 'cpu'
  # The session's flags (conftest's), with this process's device count.
  os.environ['XLA_FLAGS'] = ' '.join(
      [f for f in os.environ.get('XLA_FLAGS', '').split()
       if not f.startswith('--xla_force_host_platform_device_count')]
      + [f'--xla_force_host_platform_device_count={args.local_devices}'])
  import jax  # pylint: disable=g-import-not-at-top
  from srgan_jax import inference  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == args.local_devices, jax.devices()
  up = inference.load_generator(args.restore)
  out = {}
  _flatten('g/ema', up.variables['params'], out)
  _flatten('g/batch_stats', up.variables['batch_stats'], out)
  np.savez(os.path.join(args.out, 'restored.npz'), step=up.step, **out)
  print('restored', up, flush=True)


def _parse(argv):
  p = argparse.ArgumentParser()
  p.add_argument('--worker', action='store_true')
  p.add_argument('--out', required=True)
  p.add_argument('--port', type=int, default=0)
  p.add_argument('--num_processes', type=int, default=1)
  p.add_argument('--process_id', type=int, default=0)
  p.add_argument('--local_devices', type=int, default=1)
  p.add_argument('--checkpoint', default='', help='A workdir the trained states are saved to.')
  p.add_argument('--restore', default='', help='A workdir to restore the generator of.')
  return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Tests.


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(out, **kw):
  args = [sys.executable, os.path.abspath(__file__), '--worker', f'--out={out}']
  args += [f'--{k}={v}' for k, v in kw.items()]
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'))}
  env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(procs):
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=TIMEOUT_S)
      outputs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, f'worker failed (rc {p.returncode}):\n{out[-6000:]}'
  return outputs


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _max_diff(a, b, prefix=''):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a if k.startswith(prefix))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """One 2-process job (1 device each) and one single process with 2 devices, run together."""
  out = str(tmp_path_factory.mktemp('distributed'))
  port = _free_port()
  workdir = os.path.join(out, 'run')
  procs = [_start(out, port=port, num_processes=2, process_id=i, local_devices=1,
                  checkpoint=workdir) for i in range(2)]
  single = str(tmp_path_factory.mktemp('single'))
  procs.append(_start(single, num_processes=1, process_id=0, local_devices=2))
  _finish(procs)
  return {'p0': _load(os.path.join(out, 'p0.npz')), 'p1': _load(os.path.join(out, 'p1.npz')),
          'single': _load(os.path.join(single, 'p0.npz')), 'workdir': workdir}


def test_two_processes_match_one_process(runs):
  for p in ('p0', 'p1'):
    diff = _max_diff(runs[p], runs['single'])
    assert diff <= 1e-5, f'{p} differs from the single-process run by {diff}'
  assert _max_diff(runs['p0'], runs['p1']) == 0.0


def test_a_two_process_checkpoint_restores_on_one_device(runs, tmp_path):
  """The checkpoint both processes saved restores with load_generator in a 1-device process
  (as in Colab): the generator's EMA parameters and BN statistics of the trained state."""
  (out,) = _finish([_start(str(tmp_path), restore=runs['workdir'], local_devices=1)])
  assert 'restored Upscaler' in out, out[-3000:]
  restored = _load(tmp_path / 'restored.npz')
  assert int(restored.pop('step')) == PRETRAIN_STEPS + GAN_STEPS
  trained = {k: v for k, v in runs['p0'].items() if k.startswith(('g/ema', 'g/batch_stats'))}
  assert restored.keys() == trained.keys()
  for name, value in trained.items():
    np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_resolve_reads_env_and_validates(monkeypatch):
  from srgan_jax import distributed  # pylint: disable=g-import-not-at-top
  from srgan_jax import errors  # pylint: disable=g-import-not-at-top
  for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
               distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  assert distributed.resolve() is None
  assert distributed.resolve(num_processes=1, process_id=0) is None
  monkeypatch.setenv(distributed.ENV_COORDINATOR, 'host:1234')
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, '4')
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, '3')
  assert distributed.resolve() == distributed.Settings('host:1234', 4, 3)
  # Arguments win over the environment.
  assert distributed.resolve('other:1', 2, 0) == distributed.Settings('other:1', 2, 0)
  with pytest.raises(errors.DistributedConfigError, match='process_id'):
    distributed.resolve(process_id=4)
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, 'x')
  with pytest.raises(errors.DistributedConfigError, match='JAX_PROCESS_ID'):
    distributed.resolve()
  monkeypatch.delenv(distributed.ENV_COORDINATOR)
  monkeypatch.delenv(distributed.ENV_PROCESS_ID)
  with pytest.raises(errors.DistributedConfigError, match='coordinator'):
    distributed.resolve()  # 4 processes but no coordinator.
  with pytest.raises(errors.DistributedConfigError, match='HOST:PORT'):
    distributed.resolve('nohost', 2, 0)
  monkeypatch.delenv(distributed.ENV_NUM_PROCESSES)
  with pytest.raises(errors.DistributedConfigError, match='missing'):
    distributed.resolve('h:1', None, 0)


def test_initialize_without_coordinator_is_a_no_op(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  from srgan_jax import distributed  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(distributed.ENV_COORDINATOR, raising=False)
  monkeypatch.delenv(distributed.ENV_NUM_PROCESSES, raising=False)
  monkeypatch.delenv(distributed.ENV_PROCESS_ID, raising=False)
  called = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: called.append(kw))
  assert distributed.initialize() is False
  assert not called


def test_initialize_passes_settings_and_selects_gloo(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  from srgan_jax import distributed  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(distributed.ENV_CPU_COLLECTIVES, raising=False)
  called = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: called.append(kw))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  updates = []
  monkeypatch.setattr(jax.config, 'update', lambda name, value: updates.append((name, value)))
  assert distributed.initialize('127.0.0.1:9', 2, 1) is True
  assert called[0]['coordinator_address'] == '127.0.0.1:9'
  assert called[0]['num_processes'] == 2 and called[0]['process_id'] == 1
  assert ('jax_cpu_collectives_implementation', 'gloo') in updates


def test_flags(monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from srgan_jax import distributed  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  distributed.define_flags(fv)
  distributed.define_flags(fv)  # Idempotent.
  fv(['prog', '--coordinator_address=h:5', '--num_processes=3', '--process_id=2'])
  seen = []
  monkeypatch.setattr(distributed, 'initialize', lambda *a: seen.append(a) or True)
  assert distributed.initialize_from_flags(fv) is True
  assert seen == [('h:5', 3, 2)]


if __name__ == '__main__':
  _args = _parse(sys.argv[1:])
  if not _args.worker:
    raise SystemExit('run with pytest, or as a worker with --worker')
  if _args.restore:
    restore_worker(_args)
  else:
    worker(_args)
