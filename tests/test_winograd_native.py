"""Winograd's transforms as C++ passes (srgan_jax/winograd_native.py): the same tiles as
winograd.py's XLA transforms, convs equal to XLA's with them under pmap, the fallback where
they cannot be built, and the tuning cache keyed by which transforms were timed."""

import concurrent.futures
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import conv_tuning
from srgan_jax import convolution
from srgan_jax import native
from srgan_jax import train
from srgan_jax import winograd
from srgan_jax import winograd_native

from tests import conftest

needs_native = pytest.mark.skipif(not winograd_native.available(),
                                  reason=f'native transforms unavailable: '
                                  f'{winograd_native.status()}')


# Winograd's convs differ from XLA's by about 1e-5 of the largest magnitude, the transforms
# from XLA's transforms by their order of sums.
_close = conftest.assert_close


@needs_native
@pytest.mark.parametrize('n, h, w, c, padding', [
    (3, 9, 7, 70, ((1, 1), (1, 1))),      # Features past one 64-wide block; partial tiles.
    (2, 12, 5, 5, ((2, 3), (0, 2))),      # winograd_t's wider padding (a gradient's).
    (2, 10, 11, 3, ((-1, 1), (1, -2))),   # Cropped (negative padding).
])
def test_transforms_equal_xla_transforms_for_every_chunk(n, h, w, c, padding):
  x = conftest.gaussian(0, (n, h, w, c)) * 3
  oh, ow = winograd._output_size(x.shape, padding)  # pylint: disable=protected-access
  th, tw = -(-oh // 4), -(-ow // 4)
  f = c + 3
  # pylint: disable=protected-access
  for chunk in (1, n):
    for i in range(n // chunk):
      part = x[i * chunk:(i + 1) * chunk]
      xp = winograd._pad_to_tiles(part, padding, th * 4 + 2, tw * 4 + 2)
      want = winograd._input_tiles(xp, th, tw)
      got = winograd_native.input_tiles(x, i, chunk, padding[0][0], padding[1][0], th, tw)
      _close(got, want)
  # The output transform writes its chunk's images and leaves the others as they were.
  products = conftest.gaussian(1, (36, th * tw, f))
  y = jnp.full((n, oh, ow, f), 7.0)
  bias = jnp.arange(f, dtype=jnp.float32)
  y = winograd_native.output_tiles(products, bias, n - 1, 1, y.shape, y)
  by_position = list(products.reshape(6, 6, th * tw, f))
  rows = jnp.stack([winograd._sum(winograd.A_T[u], by_position) for u in range(4)])
  tiles = jnp.stack([winograd._sum(winograd.A_T[v], [rows[:, b] for b in range(6)])
                     for v in range(4)], 1).reshape(4, 4, th, tw, f)
  want = tiles.transpose(2, 0, 3, 1, 4).reshape(th * 4, tw * 4, f)[:oh, :ow] + bias
  _close(y[n - 1], want)
  np.testing.assert_array_equal(y[:n - 1], 7.0)
  # dy's tiles: the kernel gradient's products with the input tiles give XLA's conv gradient.
  dy = conftest.gaussian(2, (n, oh, ow, f))
  padded = jax.lax.pad(x, 0.0, ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in padding) +
                       ((0, 0, 0),))
  _, vjp = jax.vjp(lambda k: jax.lax.conv_general_dilated(
      padded, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
                   jnp.zeros((3, 3, c, f)))
  _close(winograd.kernel_grad(x, dy, padding, native=True), vjp(dy)[0], atol=2e-5)


@needs_native
def test_pmapped_convs_with_native_transforms_equal_xla_convs():
  """Each device's thread runs its own calls: values and both gradients as XLA's conv."""
  sig = convolution.ConvSignature(4, 14, 10, 16, 24, 3, 1, 'float32')
  got, want, program = conftest.pmapped_tuned_conv_and_xla(
      convolution.ConvChoice('winograd', 'winograd_t', 'winograd'), sig)
  assert program.count('ffi_call') >= 4  # Forward in and out, the kernel gradient's two.
  for g, w in zip(got, want):
    _close(g, w, atol=2e-5)


def test_without_a_compiler_winograd_keeps_xla_transforms(monkeypatch, tmp_path):
  monkeypatch.delenv(native.OPT_OUT_ENV, raising=False)
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setattr(native.shutil, 'which', lambda name: None)
  winograd_native.status.cache_clear()
  try:
    assert not winograd_native.available()
    assert 'compil' in winograd_native.status()
    assert not winograd.use_native(jnp.float32)
    with pytest.raises(ValueError, match='native transforms'):
      winograd.use_native(jnp.float32, native=True)
    x = jnp.ones((1, 8, 8, 16))
    program = str(jax.make_jaxpr(lambda x: winograd.conv(x, jnp.ones((3, 3, 16, 16)),
                                                          ((1, 1), (1, 1))))(x))
    assert 'ffi_call' not in program
    assert 'winograd transforms xla' in conv_tuning.machine_key('cpu', 'cpu', 2)
  finally:
    winograd_native.status.cache_clear()
  assert not list(tmp_path.glob('**/*.so*'))  # Nothing half-built left behind.


def test_the_native_transforms_can_be_turned_off(monkeypatch):
  monkeypatch.setenv(native.OPT_OUT_ENV, '0')
  winograd_native.status.cache_clear()
  try:
    assert not winograd_native.available()
    assert native.OPT_OUT_ENV in winograd_native.status()
    assert 'winograd transforms xla' in conv_tuning.machine_key('cpu', 'cpu', 2)
  finally:
    winograd_native.status.cache_clear()


def test_a_failed_build_leaves_no_module_behind(monkeypatch, tmp_path):
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
  bad = tmp_path / 'bad.cc'
  bad.write_text('this is not C++\n')
  monkeypatch.setattr(native, 'PACKAGE_DIR', str(tmp_path))
  if not native.shutil.which('g++') and not native.shutil.which('c++'):
    pytest.skip('no C++ compiler here')
  with pytest.raises(RuntimeError, match='compiling .*bad.cc failed'):
    native.build('bad.cc', 'probe')
  # No module, nor its temporary file; only the (empty) file the builds lock.
  assert [p.suffix for p in (tmp_path / 'probe').glob('*')] == ['.lock']


def test_processes_starting_together_build_a_module_once(monkeypatch, tmp_path):
  """The processes of a job that start together on one machine (or pytest's workers) find no
  module built: one compiles it while the others wait, then load its build."""
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.setattr(native, 'PACKAGE_DIR', str(tmp_path))
  (tmp_path / 'one.cc').write_text('extern "C" int one() { return 1; }\n')
  log = tmp_path / 'compiles.log'
  compiler = tmp_path / 'slow-c++'  # Writes its output (the last argument) after a while.
  compiler.write_text(f'#!/bin/sh\necho "$$" >> {log}\nsleep 0.5\n'
                      'for out; do :; done\necho module > "$out"\n')
  compiler.chmod(0o755)
  monkeypatch.setenv('CXX', str(compiler))
  # Threads stand in for the processes: each opens the lock file on its own, as a process does.
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    paths = list(pool.map(lambda _: native.build('one.cc', 'one'), range(3)))
  assert len(set(paths)) == 1 and open(paths[0]).read() == 'module\n'
  assert len(log.read_text().split()) == 1


def test_build_all_builds_side_by_side_and_leaves_failures_to_status(monkeypatch, tmp_path):
  """A first run builds the C++ modules together; one that fails does not stop the others (its
  own status() reports it when it is needed); opted out, nothing is built."""
  if not native.shutil.which('g++') and not native.shutil.which('c++'):
    pytest.skip('no C++ compiler here')
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.delenv(native.OPT_OUT_ENV, raising=False)  # Also in a suite run with it set.
  # What the trainer builds ahead: the package's modules, by the names they build under.
  for module in train.NATIVE_MODULES:
    assert os.path.exists(os.path.join(native.PACKAGE_DIR, module.SOURCE))
    assert f'/{module.NAME}/' in native.module_path(module.SOURCE, module.NAME, module.FLAGS)
  monkeypatch.setattr(native, 'PACKAGE_DIR', str(tmp_path))
  (tmp_path / 'one.cc').write_text('extern "C" int one() { return 1; }\n')
  (tmp_path / 'two.cc').write_text('extern "C" int two() { return 2; }\n')
  (tmp_path / 'bad.cc').write_text('this is not C++\n')
  modules = [('one.cc', 'one', ('-O1',)), ('bad.cc', 'bad', ()), ('two.cc', 'two', ('-O1',))]
  native.build_all(modules)
  for source, name, flags in modules:
    assert os.path.exists(native.module_path(source, name, flags)) == (name != 'bad')
  # Side by side: two builds wait for each other (one after the other, the first would time out).
  monkeypatch.setattr(native.os, 'cpu_count', lambda: 2)
  barrier, met = threading.Barrier(2, timeout=10), []
  monkeypatch.setattr(native, 'build', lambda *module: met.append(barrier.wait()))
  native.build_all(modules[:2])
  assert sorted(met) == [0, 1]
  monkeypatch.setenv(native.OPT_OUT_ENV, '0')
  met.clear()
  native.build_all(modules[:2])
  assert not met


def test_machine_key_names_the_transforms_timed(monkeypatch):
  """Decisions timed with one kind of transforms are not reused with the other."""
  keys = {}
  for ready in (True, False):
    monkeypatch.setattr(winograd_native, 'available', lambda ready=ready: ready)
    keys[ready] = conv_tuning.machine_key('cpu', 'cpu', 2)
  assert 'winograd transforms native' in keys[True]
  assert 'winograd transforms xla' in keys[False]
  assert 'winograd transforms' not in conv_tuning.machine_key('gpu', 'gpu', 1)


@pytest.mark.usefixtures('without_onednn')
def test_with_native_transforms_winograd_is_tried_on_small_maps_too(monkeypatch):
  small = convolution.ConvSignature(32, 7, 7, 64, 64, 3, 1, 'float32')
  monkeypatch.setattr(winograd_native, 'available', lambda: False)
  assert 'winograd' not in convolution.phase_candidates(small, 'forward')
  monkeypatch.setattr(winograd_native, 'available', lambda: True)
  assert convolution.phase_candidates(small, 'forward') == ('xla', 'winograd')
  assert convolution.phase_candidates(small._replace(height=3), 'forward') == ('xla',)
  # Native transforms are float32: other dtypes keep XLA's, and the larger minimum.
  assert 'winograd' not in convolution.phase_candidates(small._replace(dtype='bfloat16'), 'forward')


def test_a_module_built_for_one_cpu_is_not_loaded_on_another(monkeypatch, tmp_path):
  """-march=native builds run only where the instruction sets match: one build per CPU."""
  if not native.shutil.which('g++') and not native.shutil.which('c++'):
    pytest.skip('no C++ compiler here')
  real = native.cpu_features()
  if os.path.exists('/proc/cpuinfo'):
    assert 'model name' in real and 'flags' in real
    # The parsed fields (conv_tuning's and benchmarks.targets' CPU) are the same processor's.
    fields = native.cpuinfo()
    assert fields['model name'] in real and fields['flags'] in real and fields['cpu family']
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
  path = lambda: native.module_path(winograd_native.SOURCE, 'winograd', winograd_native.FLAGS)
  monkeypatch.setattr(native, 'cpu_features', lambda: 'model name : A | flags : avx2')
  on_a = path()
  monkeypatch.setattr(native, 'cpu_features', lambda: 'model name : B | flags : avx512f')
  assert path() != on_a and os.path.dirname(path()) == os.path.dirname(on_a)


@needs_native
def test_vmapped_winograd_conv_and_its_gradients_equal_each_alone():
  rng = np.random.default_rng(3)
  xs = jnp.asarray(rng.normal(size=(2, 3, 12, 11, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 24)), jnp.float32)
  choice = convolution.ConvChoice('winograd', 'winograd_t', 'winograd')
  target = jnp.asarray(rng.normal(size=(3, 12, 11, 24)), jnp.float32)
  loss = lambda x, kernel: jnp.sum(
      convolution.tuned_conv(x, kernel, jnp.zeros(24), 1, choice) * target)
  # XLA batches the products' matmuls over the vmapped axis: float rounding, which Winograd's
  # transforms grow (2.06e-6 of the largest gradient held to AVX2 as `benchmarks.targets
  # --isa=avx2` holds it: 8-wide vectors sum in another order); a batch element mixed up would
  # be off by its own size.
  conftest.assert_vmap_equals_each_alone(jax.grad(loss, (0, 1)), xs, kernel, atol=5e-6)
