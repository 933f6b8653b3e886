"""Test set-up: 4 fake CPU devices (before JAX starts), a tiny config for real code paths, and
the grouping that lets pytest-xdist (`-n auto` in pytest.ini) split the suite over the cores."""

import atexit
import contextlib
import functools
import gc
import os
import shutil
import tempfile
from typing import Any, List, NamedTuple

from srgan_jax import platform

# XLA:CPU compiles each program in one piece: by default it splits a program's LLVM module for
# parallel code generation, which costs the tests' small programs more than it saves (the
# suite's in-process backend compile time 91 -> 69 s on a 2-core Intel Xeon, 2026-12-05). How
# XLA compiles, not what the programs compute. Tests that set a subprocess's XLA_FLAGS add it.
# Set on the jaxlib release seen to know it (XLA aborts on a flag it does not know).
COMPILE_FLAGS = ('--xla_cpu_parallel_codegen_split_count=1'
                 if platform.jaxlib_release() == (0, 10) else '')
_flags = os.environ.get('XLA_FLAGS', '')
os.environ['XLA_FLAGS'] = ' '.join(filter(None, (
    _flags, '--xla_force_host_platform_device_count=4',
    COMPILE_FLAGS if COMPILE_FLAGS.partition('=')[0] not in _flags else '')))
# The convolution library and fusion code generator main.py sets by default
# (config.cpu_conv_library = 'eigen'; the older fusion emitter, which also compiles faster:
# test_compare's GAN step test 19.4 -> 14.7 s on an AMD EPYC). Subprocesses started by tests
# inherit them.
platform.configure_cpu_convolutions('eigen')
platform.configure_cpu_fusion_emitters()
platform.keep_freed_memory()  # As main.py: a step's freed buffers stay mapped for the next.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The temporary directories this process made for the session (not those it inherited from
# the process that started it): removed when it ends (pytest_unconfigure), so that runs of the
# suite do not pile up in /tmp (an XLA cache alone is 2-4 MB a run).
_SESSION_DIRS = []


def _session_dir(variable: str, prefix: str) -> str:
  """The directory environment `variable` names, else a new one, named there for the processes
  this one starts (xdist's workers, the tests' subprocesses) and removed when this one ends."""
  if not os.environ.get(variable):
    os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
    _SESSION_DIRS.append(os.environ[variable])
  return os.environ[variable]


# One persistent XLA cache for the session: many tests compile the same tiny programs, and on
# 2 CPU cores compiling is most of their time.
_session_dir('JAX_COMPILATION_CACHE_DIR', 'srgan_jax_xla_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# One conv-tuning cache for the session, inherited by the subprocesses the tests start: every
# process of a test then computes each conv the same way (a resume is exact only with the same
# decisions, as on a user's machine, whose cache persists).
# With pytest-xdist each worker gets its own (the controller's would be shared by the workers,
# and two processes tuning at once could each overwrite the other's decisions); the processes a
# worker's tests start keep their worker's (they inherit PYTEST_XDIST_WORKER and the marker).
_WORKER = os.environ.get('PYTEST_XDIST_WORKER', '')
if ('SRGAN_JAX_CACHE_DIR' not in os.environ or
    (_WORKER and os.environ.get('SRGAN_JAX_TESTS_CACHE_OF') != _WORKER)):
  os.environ.pop('SRGAN_JAX_CACHE_DIR', None)
  _session_dir('SRGAN_JAX_CACHE_DIR', 'srgan_jax_conv_plans_')
  os.environ['SRGAN_JAX_TESTS_CACHE_OF'] = _WORKER
  _FRESH_CACHE = True
else:
  _FRESH_CACHE = False
# The C++ modules, by contrast, are built once for the session (the controller's directory,
# inherited by the workers): each fresh cache links to it, and native.build compiles a module
# in one process while the others wait for it.
_session_dir('SRGAN_JAX_TESTS_NATIVE_DIR', 'srgan_jax_native_')
# The tests check what the code computes, not how fast: most of XLA's optimisation passes cost
# more compile time than they save on tiny networks run for a few steps (measured: about half
# the time of compile-bound tests). Subprocesses started by tests inherit it.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import mnist_cnn  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import mnist_srgan  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import conv_tuning  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import convolution  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import direct_conv  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import native  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import onednn  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import winograd_native  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_DEVICES = 4

if _FRESH_CACHE:
  for _module in train.NATIVE_MODULES:
    _shared = os.path.join(os.environ['SRGAN_JAX_TESTS_NATIVE_DIR'], _module.NAME)
    os.makedirs(_shared, exist_ok=True)
    os.symlink(_shared, native.cache_dir(_module.NAME))


def pytest_sessionstart(session):
  """Each test process (an xdist worker, or the only one) builds the C++ modules side by side
  before collecting, as train._prepare does on a first run (collection asks whether they are
  ready one at a time); the workers share the builds, each module compiled once. Not the xdist
  controller: its build would hold back the workers' start."""
  config = session.config
  if hasattr(config, 'workerinput') or not config.pluginmanager.has_plugin('dsession'):
    native.build_all([(m.SOURCE, m.NAME, m.FLAGS) for m in train.NATIVE_MODULES])


def pytest_collection_finish(session):
  """As a command does after its imports (platform.freeze_imported_objects): what the test
  modules imported stays out of the garbage collector's walks, and the process exits sooner."""
  del session
  platform.freeze_imported_objects()


def _remove_session_dirs():
  while _SESSION_DIRS:
    shutil.rmtree(_SESSION_DIRS.pop(), ignore_errors=True)


# A script that imports this file outside pytest (a test's training subprocess inherits the
# directories; a script of one's own does not) removes the directories it made as it exits.
atexit.register(_remove_session_dirs)


def pytest_unconfigure(config):
  """The session's temporary directories go with the process that made them: an xdist
  worker's conv-tuning cache with the worker, the shared XLA cache and C++ builds with the
  controller, after its workers have ended.

  Then one garbage collection, and what is left frozen: pytest's check for unraisable
  exceptions collects garbage 5 times after this, about a second each in a worker that ran a
  few hundred tests' JAX programs (400,000+ objects), and xdist interrupts a worker still busy
  5 s after the controller asked it to end (a KeyboardInterrupt in JAX's GC callback, and the
  suite's last seconds spent waiting). One collection finds the leaks those would.
  """
  del config
  _remove_session_dirs()
  gc.collect()
  gc.freeze()


def _shared_fixture_group(item):
  """The xdist group of a test: the name of a session fixture of ours that it uses, else its
  module if it uses a module-scoped one, else None (any worker)."""
  group = None
  for name in item.fixturenames:
    defs = item._fixtureinfo.name2fixturedefs.get(name)  # pylint: disable=protected-access
    if not defs or not defs[-1].baseid.startswith('tests'):
      continue  # pytest's own (tmp_path_factory is session-scoped too).
    if defs[-1].scope == 'session':
      return name
    if defs[-1].scope == 'module':
      group = item.module.__name__
  return group


@pytest.hookimpl(tryfirst=True)  # Before xdist's worker reads the groups into the node ids.
def pytest_collection_modifyitems(items):
  """Keep each expensive shared fixture in one worker (`--dist loadgroup`): every test of a
  module that uses a session fixture (one_command_run) joins that fixture's group, and the tests
  of a module with a module-scoped fixture stay together, so no fixture is built twice."""
  module_groups = {}
  for item in items:
    group = _shared_fixture_group(item)
    module = item.module.__name__
    if group and module_groups.get(module) in (None, module):
      module_groups[module] = group  # A session fixture's group wins over the module's.
  for item in items:
    group = module_groups.get(item.module.__name__)
    if group:
      item.add_marker(pytest.mark.xdist_group(group))
  # The long tests first (a stable sort): a worker that draws one late ends alone.
  items.sort(key=lambda item: item.get_closest_marker('long') is None)


@contextlib.contextmanager
def tfds_scratch():
  """tempfile's directory moved, for the block, to a scratch one removed after it: tfds 4.9
  makes an empty directory there for each builder of a dataset it holds no prepared copy of
  (DatasetInfo.initialize_from_bucket, with GCS off) and never removes it, so the tests' mock
  and unprepared datasets left 13 in /tmp a run."""
  saved = tempfile.tempdir
  with tempfile.TemporaryDirectory(prefix='srgan_jax_tfds_') as scratch:
    tempfile.tempdir = scratch
    try:
      yield scratch
    finally:
      tempfile.tempdir = saved


def gaussian(seed: int, shape) -> jax.Array:
  """Standard-normal float32 test data, the same for the same seed. Drawn by numpy:
  jax.random.normal compiles its sampler once per shape (0.08-0.25 s each with the tests' XLA
  settings on a 2-core AMD EPYC, about a hundred shapes across the suite)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def assert_close(got, want, atol=2e-6):
  """Equal to float32 rounding: within `atol` of the largest magnitude of `want` (0: bit for
  bit)."""
  got, want = np.asarray(got), np.asarray(want)
  scale = max(float(np.max(np.abs(want))), 1e-30)
  np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=atol)


def assert_vmap_equals_each_alone(fn, batched, *args, atol=0.0):
  """jax.vmap(fn) over the leading axis of `batched` (with `args` unbatched) equals fn on each
  slice alone (assert_close to `atol`): a C++ FFI pass under vmap (native.VMAP_METHOD) computes
  what it computes alone."""
  together = jax.jit(jax.vmap(fn, (0,) + (None,) * len(args)))(batched, *args)
  for i in range(batched.shape[0]):
    alone = jax.jit(fn)(batched[i], *args)
    for got, want in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
      assert_close(np.asarray(got)[i], want, atol=atol)


def pmapped_tuned_conv_and_xla(choice, sig, kernel_scale: float = 1.0):
  """(got, want, jaxpr): a conv of `sig` with the phases `choice` names (convolution.tuned_conv)
  and XLA's, each pmapped over 2 devices with their own inputs: the value and the gradients
  of sum(sin(conv)) w.r.t. x and the kernel (scaled by `kernel_scale`); and the tuned one's
  program on one device."""
  devices = jax.local_devices()[:2]
  shapes = convolution.conv_phase('forward', 'xla', sig)[1][:2]
  x, kernel = (gaussian(i, (len(devices),) + s) for i, s in enumerate(shapes))
  kernel = kernel * kernel_scale
  bias = jnp.linspace(-1.0, 1.0, sig.features)

  def value_and_grads(tuned, x, kernel):
    conv = (functools.partial(convolution.tuned_conv, bias=bias, s=sig.strides, choice=choice)
            if tuned else functools.partial(convolution.conv_forward, 'xla', s=sig.strides,
                                            bias=bias))
    loss = lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
    return (conv(x, kernel),) + jax.grad(loss, (0, 1))(x, kernel)

  got = jax.pmap(functools.partial(value_and_grads, True), devices=devices)(x, kernel)
  want = jax.pmap(functools.partial(value_and_grads, False), devices=devices)(x, kernel)
  program = str(jax.make_jaxpr(functools.partial(value_and_grads, True))(x[0], kernel[0]))
  return got, want, program


def make_tiny_config(**overrides):
  """The seed's SRGAN shrunk to seconds: real MNIST subset, tiny networks, a few steps."""
  config = mnist_srgan.get_config()
  config.data.train_examples = 256
  config.data.eval_examples = 64
  config.generator.num_res_blocks = 1
  config.generator.features = 8
  config.discriminator.features = (8, 16)
  config.discriminator.dense_features = 16
  config.batch_size = 8
  config.pretrain_steps = 4
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 8
  config.checkpoint_every_steps = 4
  config.eval.batch_size = 32
  config.eval.num_sample_images = 4
  config.classifier.num_epochs = 1
  config.classifier.batch_size = 32
  config.classifier.validation_examples = 64
  config.cpu_devices_per_core = False
  # XLA's convs: timing every conv's candidates costs a sixth of a tiny run's time. The tuned
  # path (the default) is what one_command_run (the main job shrunk), the resume tests
  # (test_train, test_resilience, test_restore_anywhere) and test_conv_tuning run.
  config.conv_implementation = 'xla'
  for key, value in overrides.items():
    config_utils.set_field(config, key, value)
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()


class OneCommandRun(NamedTuple):
  """What one_command_run did: its config, workdir and summary, and the lines each call of
  conv_tuning.tune logged during it (with a conv cache of its own, empty at the start, as on a
  user's first run)."""
  config: Any
  workdir: str
  summary: dict
  tunings: List[List[str]]


@pytest.fixture(scope='session')
def one_command_run(tmp_path_factory):
  """configs/mnist_cnn.py shrunk: no classifier or judge yet, so both are trained first.

  Shared by the test files (a session fixture): its guide and judge also serve the tests that
  only need a trained classifier. Do not modify the workdir.
  """
  config = make_tiny_config(conv_implementation='tuned')  # As the main job.
  cnn = mnist_cnn.get_config()
  config.loss = cnn.loss
  config.eval.judge_workdir = cnn.eval.judge_workdir
  config.eval.judge_epochs = 2  # the judge's own budget; the guide keeps classifier.num_epochs.
  workdir = str(tmp_path_factory.mktemp('cnn'))
  tunings = []
  real_tune = conv_tuning.tune

  def tune(*args, **kwargs):
    tunings.append([])
    return real_tune(*args, **{**kwargs, 'log': tunings[-1].append})

  cache = tmp_path_factory.mktemp('cnn_conv_plans')
  # The C++ modules this worker built serve here too (9 s of compiler time for the four, not
  # what this run tests): only the conv decisions start empty.
  for module in train.NATIVE_MODULES:
    os.makedirs(native.cache_dir(module.NAME), exist_ok=True)
    os.symlink(native.cache_dir(module.NAME), cache / module.NAME)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(conv_tuning.CACHE_ENV, str(cache))
    patch.setattr(conv_tuning, 'tune', tune)
    summary = train.train_and_evaluate(config, workdir)
  return OneCommandRun(config, workdir, summary, tunings)


@pytest.fixture
def xla_winograd_transforms(monkeypatch):
  """The candidate rules as they stand with Winograd's transforms in XLA (where no C++
  compiler builds winograd_native's; with those, Winograd is tried on smaller maps too:
  tests/test_winograd_native.py)."""
  monkeypatch.setattr(winograd_native, 'available', lambda: False)


@pytest.fixture
def without_onednn(monkeypatch):
  """The candidate rules as they stand without the opt-in oneDNN candidate (it joins every
  f32 phase where it is ready: tests/test_onednn.py)."""
  monkeypatch.setattr(onednn, 'available', lambda: False)


@pytest.fixture
def without_direct_convs(monkeypatch):
  """The candidate rules as they stand without the C++ direct convs (they join the phases of
  thin f32 convs where a compiler builds them: tests/test_direct_conv.py)."""
  monkeypatch.setattr(direct_conv, 'available', lambda: False)
