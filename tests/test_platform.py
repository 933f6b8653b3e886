"""The process set-up of platform.py: the library XLA:CPU runs convolutions on, as a config
selects it, as the conv tuner keys its decisions by it, and as XLA then compiles."""

import os
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
import pytest

from srgan_jax import conv_tuning
from srgan_jax import errors
from srgan_jax import native
from srgan_jax import platform
from srgan_jax import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints whether XLA:CPU compiled a conv's forward pass and both gradients into YNNPACK fusions.
_PROBE = '''
import sys
from srgan_jax import platform
from srgan_jax import validation
platform.configure_cpu_convolutions(sys.argv[1])
import tests.test_platform as t
print(t.conv_fusions())
'''


def conv_fusions():
  """YNNPACK fusions in the compiled forward pass and gradients of one 3x3 conv (large enough
  for XLA's cost model to hand it to YNNPACK by default)."""
  x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
  conv = lambda x, w: jnp.sum(lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
  text = jax.jit(jax.grad(conv, argnums=(0, 1))).lower(x, w).compile().as_text()
  return sum('kind=kCustom' in line and 'ynn_fusion' in line for line in text.splitlines())


@pytest.mark.parametrize('flags, library', [
    ('', 'ynnpack'),
    ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution', 'eigen'),
    ('--xla_cpu_experimental_ynn_fusion_type=-individual_dot', 'ynnpack'),
    ('--xla_cpu_experimental_ynn_fusion_type=dot,eltwise', 'eigen'),
    ('--xla_cpu_experimental_ynn_fusion_type=individual_convolution', 'ynnpack'),
])
def test_cpu_conv_library_reads_xla_flags(monkeypatch, flags, library):
  monkeypatch.setenv('XLA_FLAGS', f'--xla_force_host_platform_device_count=2 {flags}')
  assert platform.cpu_conv_library() == library


def test_configure_sets_the_flag_once_and_respects_the_users(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  platform.configure_cpu_convolutions('eigen')
  platform.configure_cpu_convolutions('eigen')
  assert os.environ['XLA_FLAGS'].count('ynn_fusion_type') == 1
  assert platform.cpu_conv_library() == 'eigen'
  mine = '--xla_cpu_experimental_ynn_fusion_type=individual_convolution'
  monkeypatch.setenv('XLA_FLAGS', mine)
  platform.configure_cpu_convolutions('eigen')
  assert os.environ['XLA_FLAGS'] == mine
  monkeypatch.setenv('XLA_FLAGS', '')
  platform.configure_cpu_convolutions('ynnpack')
  assert platform.cpu_conv_library() == 'ynnpack'


def test_configure_cpu_devices_sets_one_device_per_core_and_the_scheduler(monkeypatch):
  cores = len(os.sched_getaffinity(0))
  monkeypatch.setenv('XLA_FLAGS', '')
  platform.configure_cpu_devices(True)
  platform.configure_cpu_devices(True)
  flags = os.environ['XLA_FLAGS'].split()
  assert flags.count('--xla_cpu_enable_concurrency_optimized_scheduler=false') == 1, flags
  assert (f'--xla_force_host_platform_device_count={cores}' in flags) == (cores > 1), flags
  assert len(flags) == 1 + (cores > 1), flags
  mine = ('--xla_force_host_platform_device_count=3 '
          '--xla_cpu_enable_concurrency_optimized_scheduler=true')
  monkeypatch.setenv('XLA_FLAGS', mine)
  platform.configure_cpu_devices(True)
  assert os.environ['XLA_FLAGS'] == mine
  monkeypatch.setenv('XLA_FLAGS', '')
  platform.configure_cpu_devices(False)
  assert os.environ['XLA_FLAGS'] == ''


def test_configure_cpu_fusion_emitters_sets_the_older_once_and_respects_the_users(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert platform.cpu_fusion_emitters() == 'new'  # XLA's default.
  platform.configure_cpu_fusion_emitters()
  platform.configure_cpu_fusion_emitters()
  assert os.environ['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=2',
                                             '--xla_cpu_use_fusion_emitters=false']
  assert platform.cpu_fusion_emitters() == 'older'
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_fusion_emitters=true')
  platform.configure_cpu_fusion_emitters()
  assert platform.cpu_fusion_emitters() == 'new'
  monkeypatch.setenv('XLA_FLAGS', '')
  platform.configure_cpu_fusion_emitters(new=True)
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_use_fusion_emitters=true'


def test_configure_cpu_is_main_pys_whole_set_up(monkeypatch):
  """The one call main.py and the benchmarks make: host devices, conv library, fusion emitters,
  and malloc's policy (here the environment sets one of malloc's own: left alone, False)."""
  cores = len(os.sched_getaffinity(0))
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '1')
  assert platform.configure_cpu(True, 'ynnpack') is False
  flags = os.environ['XLA_FLAGS'].split()
  assert '--xla_cpu_enable_concurrency_optimized_scheduler=false' in flags, flags
  assert (f'--xla_force_host_platform_device_count={cores}' in flags) == (cores > 1), flags
  assert platform.cpu_conv_library() == 'ynnpack'
  assert platform.cpu_fusion_emitters() == 'older'
  monkeypatch.setenv('XLA_FLAGS', '')
  platform.configure_cpu(False)
  assert platform.cpu_conv_library() == 'eigen' and platform.cpu_fusion_emitters() == 'older'
  assert 'host_platform_device_count' not in os.environ['XLA_FLAGS']


def test_flags_unknown_to_this_jaxlib_are_left_unset(monkeypatch):
  """jax 0.11's XLA aborts on the fusion-emitter flag: no command may set it there."""
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setattr(platform, 'jaxlib_release', lambda: (0, 11))
  platform.configure_cpu_devices(True)
  platform.configure_cpu_convolutions('eigen')
  platform.configure_cpu_fusion_emitters()
  flags = os.environ['XLA_FLAGS']
  assert 'fusion_emitters' not in flags and 'scheduler=false' in flags, flags
  assert 'ynn_fusion_type' in flags, flags
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setattr(platform, 'jaxlib_release', lambda: (9, 0))
  platform.configure_cpu_devices(True)
  platform.configure_cpu_convolutions('eigen')
  platform.configure_cpu_fusion_emitters()
  cores = len(os.sched_getaffinity(0))
  assert os.environ['XLA_FLAGS'].split() == (
      [f'--xla_force_host_platform_device_count={cores}'] if cores > 1 else [])
  assert platform.jaxlib_release() == (9, 0)
  monkeypatch.undo()
  assert platform.jaxlib_release() == tuple(int(p) for p in jax.lib.__version__.split('.')[:2])


def test_xla_accepts_the_cpu_flags():
  """A jaxlib that no longer knew a flag would abort every command at start-up."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  probe = ('from srgan_jax import platform; platform.configure_cpu_devices(True); '
           'platform.configure_cpu_convolutions(); platform.configure_cpu_fusion_emitters(); '
           'import jax, jax.numpy as jnp, os; jax.jit(lambda x: jnp.concatenate([x, -x]).T)('
           'jnp.ones((3, 5))).block_until_ready(); '
           'print(len(jax.devices()), os.environ["XLA_FLAGS"])')
  run = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  devices, flags = run.stdout.split(maxsplit=1)
  assert int(devices) == max(1, len(os.sched_getaffinity(0))) and 'scheduler=false' in flags
  assert 'fusion_emitters=false' in flags and 'ynn_fusion_type' in flags


# Allocates, touches and frees a 48 MiB block a few times, on the main thread and on a worker
# thread (XLA's buffers come from both); prints the minor page faults of each round after the
# first, and whether platform.keep_freed_memory made its setting. 48 MiB: over glibc's largest
# threshold for mapping a block (32 MiB), within a worker thread's arena (64 MiB).
_ALLOCATOR_PROBE = '''
import ctypes, resource, sys, threading
from srgan_jax import platform
kept = platform.keep_freed_memory() if sys.argv[1] == 'keep' else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 48 << 20
faults = []
def rounds():
  for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
rounds()
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(kept, faults[1:4] + faults[5:])
'''


@pytest.mark.parametrize('mode', ['keep', 'default', 'users_tunables'])
def test_keep_freed_memory_stops_page_faults_on_reuse(mode):
  """Freed buffers stay mapped: a block freed and allocated again faults no fresh pages (glibc's
  default maps and unmaps it each time: a fault per 4 KiB page), unless the user set malloc's
  own settings, which then win."""
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES',)}
  if mode == 'users_tunables':
    env['GLIBC_TUNABLES'] = 'glibc.malloc.check=0'
  run = subprocess.run([sys.executable, '-c', _ALLOCATOR_PROBE,
                        'default' if mode == 'default' else 'keep'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  kept, faults = run.stdout.split(maxsplit=1)
  faults = [int(f) for f in faults.strip('[]\n').split(',')]
  pages = (48 << 20) // 4096
  assert kept == {'keep': 'True', 'default': 'None', 'users_tunables': 'False'}[mode]
  if mode == 'keep':
    assert max(faults) < pages // 10, faults
  else:
    assert min(faults) > pages * 9 // 10, faults


def test_an_unknown_library_is_a_config_error(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '')
  with pytest.raises(errors.ConfigError, match=r"cpu_conv_library = 'mkl'.*'eigen', 'ynnpack'"):
    platform.configure_cpu_convolutions('mkl')
  assert os.environ['XLA_FLAGS'] == ''


def test_tuning_decisions_are_kept_apart_per_library(monkeypatch):
  keys = {}
  for library in platform.CONV_LIBRARIES:
    monkeypatch.setenv('XLA_FLAGS', '')
    platform.configure_cpu_convolutions(library)
    keys[library] = conv_tuning.machine_key('Test CPU', 'cpu', 1)
  assert keys['eigen'] != keys['ynnpack'] and 'eigen' in keys['eigen']
  assert 'eigen' not in conv_tuning.machine_key('Test GPU', 'gpu', 1)


@pytest.mark.parametrize('library, fused', [('eigen', False), ('ynnpack', True)])
def test_xla_compiles_convolutions_on_the_library_selected(library, fused):
  # A fresh process, with XLA's optimisations on as in a user's run (conftest turns most off).
  env = {k: v for k, v in os.environ.items() if k != 'JAX_DISABLE_MOST_OPTIMIZATIONS'}
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  run = subprocess.run([sys.executable, '-c', _PROBE, library], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  fusions = int(run.stdout.split()[-1])
  assert fusions >= 3 if fused else fusions == 0, run.stdout  # Forward and both gradients.


def test_the_config_names_a_library(tiny_config):
  validation.validate_config(tiny_config)
  tiny_config.cpu_conv_library = 'onednn'
  with pytest.raises(errors.ConfigError, match=r"config.cpu_conv_library = 'onednn'"):
    validation.validate_config(tiny_config)


def test_quiet_logs_keep_orbax_info_read_only_warnings_and_the_no_tpu_note_out(tmp_path,
                                                                              caplog):
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  from srgan_jax import checkpoints  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  platform.quiet_logs()
  try:
    keep = handler.filters[-1]
    record = lambda path, level, msg: py_logging.LogRecord('absl', level, path, 1, msg, (), None)
    orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
    assert not keep(record(orbax, py_logging.INFO, 'Saving item to %s'))
    assert not keep(record(orbax, py_logging.WARNING, 'Given directory is read only=%s'))
    assert keep(record(orbax, py_logging.WARNING, 'Something Orbax got wrong'))
    assert keep(record('/work/srgan_jax/train.py', py_logging.INFO, 'Eval at step %d'))
    bridge = '/site-packages/jax/_src/xla_bridge.py'
    assert not keep(record(bridge, py_logging.INFO, "Unable to initialize backend 'tpu': "
                           'INTERNAL: Failed to open libtpu.so'))
    assert keep(record(bridge, py_logging.INFO, "Unable to initialize backend 'cuda': no GPU"))
    assert keep(record(bridge, py_logging.WARNING, "Unable to initialize backend 'tpu': x"))
  finally:
    handler.filters[:] = before
  # A read-only manager sets what Orbax would otherwise warn that it set for us.
  with caplog.at_level(py_logging.WARNING):
    checkpoints.manager(str(tmp_path), read_only=True)
  assert not [r for r in caplog.records if 'save_interval_steps' in r.getMessage()]
  assert [r for r in caplog.records if r.getMessage().startswith('Given directory is read')]


def test_xla_flags_readers_take_each_flags_last_setting(monkeypatch):
  """What the process reports (fusion emitters, conv library, a held ISA) is what XLA keeps of
  a flag set twice: its last setting; a flag whose name only starts another's is not it."""
  monkeypatch.delenv(native.MARCH_ENV, raising=False)
  monkeypatch.setenv('XLA_FLAGS', ' '.join([
      '--xla_cpu_max_isa=SSE4_2', '--xla_cpu_use_fusion_emitters=false',
      '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
      '--xla_cpu_max_isa=AVX2', '--xla_cpu_use_fusion_emitters=true',
      '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution']))
  assert platform.held_isa() == 'XLA max ISA AVX2'
  assert platform.cpu_fusion_emitters() == 'new'
  assert platform.cpu_conv_library() == 'ynnpack'
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_fusion_emitters_x=false')
  assert platform.cpu_fusion_emitters() == 'new' and platform.held_isa() == ''
  # Nor does such a flag count as the user's setting when the process configures its own.
  platform.configure_cpu_fusion_emitters()
  assert platform.cpu_fusion_emitters() == 'older'
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type_x=individual_convolution')
  platform.configure_cpu_convolutions('eigen')
  assert platform.cpu_conv_library() == 'eigen'


def test_freeze_imported_objects_takes_the_objects_alive_out_of_collection():
  """What is alive at the call (a command's imports) is frozen; what is made afterwards is
  collected as before."""
  import gc  # pylint: disable=g-import-not-at-top
  import weakref  # pylint: disable=g-import-not-at-top

  class Node:
    pass

  alive = [[i] for i in range(1000)]  # 1001 tracked containers.
  before = gc.get_freeze_count()
  platform.freeze_imported_objects()
  assert gc.get_freeze_count() - before >= len(alive)
  later = Node()
  later.me = later  # A cycle made after the call: still the collector's to free.
  gone = weakref.ref(later)
  del later
  gc.collect()
  assert gone() is None and gc.isenabled()
