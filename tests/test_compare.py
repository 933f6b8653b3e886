"""benchmarks.compare: lines parse, the JAX side times each step, the torch side is the seed's.

The PyTorch tests skip without torch (as in CI, where it is not installed).
"""

import io
import math
import mmap
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import compare
from benchmarks import heap
from conftest import COMPILE_FLAGS
from configs import mnist_srgan
from srgan_jax import models
from srgan_jax import native
from srgan_jax import platform
from srgan_jax import vgg
import test_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jax_count(module, shape) -> int:
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  return models.count_params(variables['params'])


def test_lines_parse_back():
  text = '\n'.join([
      'info: cpu: Some CPU',
      compare.format_line('cnn', 300.0, 150.0, 'images/s'),
      compare.format_line('gan', 50.0, None, 'no torch'),
  ])
  assert compare.parse_lines(text) == {
      'cnn': {'jax': 300.0, 'torch': 150.0, 'ratio': 2.0},
      'gan': {'jax': 50.0, 'torch': None, 'ratio': None}}


def test_gan_config_is_the_seeds_loss():
  config = compare.gan_config(16)
  assert (config.data.scale, config.data.channels, config.batch_size) == (2, 3, 16)
  assert config.loss.content == 'vgg' and config.loss.vgg.random_weights_for_benchmark
  assert dict(config.loss.vgg.layers) == {'conv3_4': 1.0} and config.loss.vgg.criterion == 'l1'
  assert (config.loss.adversarial, config.loss.adversarial_weight) == ('lsgan', 1e-3)
  assert compare.gan_config().batch_size == 128  # seed_x2_rgb's.


@pytest.mark.long
def test_jax_side_times_the_gan_step():
  """The JAX side alone, in-process (the 4 test devices, batch 4: one image per device), on the
  step the command-line test below leaves out; together they time every step."""
  out = io.StringIO()
  # XLA's convs: tuning is tested on its own (test_conv_tuning) and in the one-command run.
  options = compare.Options(which=('gan',), steps=1, runs=1, warmup=0, settle=1, torch=False,
                            batches={'gan': 4}, conv_implementation='xla')
  results = compare.run(options, out)
  text = out.getvalue()
  assert set(results) == {'gan'}, text
  assert compare.parse_lines(text) == results
  assert results['gan']['jax'] > 0 and math.isfinite(results['gan']['jax']), text
  assert results['gan']['torch'] is None and results['gan']['ratio'] is None
  assert f'jax {jax.__version__}' in text and '4 cpu host devices' in text
  assert 'info: cpu: ' in text and 'batch 4' in text and 'VGG19 relu3_4 l1 + lsgan' in text
  assert "convs xla, XLA's on eigen" in text and 'Conv tuning' not in text
  assert 'info: gan: jax 1 settling steps' in text, text


def test_torch_is_ready_before_jax_tunes(monkeypatch):
  """PyTorch's warm-up must be over before JAX builds (and tunes the convs of) its steps, or
  the tuner times its candidates on cores that PyTorch shares (it chose a 6x slower conv)."""
  events = []

  class FakeServer:
    def __init__(self, options):
      events.append('torch started')

    def wait_ready(self):
      events.append('torch ready')
      return 'fake'

    def warm(self, name, steps):
      events.append(f'torch warmed {name} {steps}')

    def time_run(self, name):
      events.append(f'torch timed {name}')
      return 0.5

    def close(self):
      events.append('torch closed')

  def fake_step(batch_size, devices, rep, conv_implementation):
    events.append('jax built cnn')
    return 8, lambda: jnp.zeros(())

  monkeypatch.setattr(compare, 'torch_available', lambda: True)
  monkeypatch.setattr(compare, 'TorchServer', FakeServer)
  monkeypatch.setitem(compare.JAX_STEPS, 'cnn', fake_step)
  results = compare.run(compare.Options(which=('cnn',), steps=1, runs=2, warmup=0, settle=2),
                        io.StringIO())
  assert events[:3] == ['torch started', 'torch ready', 'jax built cnn'], events
  assert events[3:] == ['torch warmed cnn 2', 'torch timed cnn',
                        'torch timed cnn', 'torch closed'], events
  assert results['cnn']['torch'] == 16.0  # 8 images in 0.5 s a step.


def _touch_fresh_memory(mib: int, keep: list) -> None:
  """Faults in `mib` MiB of new anonymous pages, as a heap growth does (kept alive in `keep`)."""
  block = mmap.mmap(-1, mib << 20)
  if hasattr(mmap, 'MADV_NOHUGEPAGE'):  # One 4 KiB page a fault, as a heap growth here.
    block.madvise(mmap.MADV_NOHUGEPAGE)
  for offset in range(0, len(block), mmap.PAGESIZE):
    block[offset] = 1
  keep.append(block)


def test_runs_that_grow_the_heap_are_named():
  """A JAX run that touches fresh memory (the second of three here: 96 MiB of new anonymous
  pages, as a heap growth does) is named with its images/s; runs that touch none are not."""
  grown, calls = [], []

  def once():
    calls.append(1)
    if len(calls) == 2:
      _touch_fresh_memory(96, grown)

  options = compare.Options(runs=3, steps=1, torch=False)
  jax_runs, torch_runs, pages = compare._time_in_turns(once, None, options)  # pylint: disable=protected-access
  assert len(jax_runs) == len(pages) == 3 and not torch_runs
  assert heap.grew(pages) == [False, True, False], pages
  note = compare.heap_growth_note(8, jax_runs, pages)
  assert note == f'; the heap grew in 1 of 3 jax runs (at {8 / jax_runs[1]:.4g} images/s)'
  assert compare.heap_growth_note(8, jax_runs[::2], pages[::2]) == ''
  # Runs that each fault in the same big blocks (a process that maps and unmaps them every
  # step) have not grown the heap: only faults above the quietest run's count.
  steady = (300 << 20) // mmap.PAGESIZE
  assert compare.heap_growth_note(8, [0.5] * 3, [steady, steady + 10, steady]) == ''
  assert compare.heap_growth_note(8, [0.5, 1.0], [steady, 2 * steady]) == (
      '; the heap grew in 1 of 2 jax runs (at 8 images/s)')


def test_settling_lasts_until_the_heap_stops_growing():
  """heap.settle runs a step until `quiet` calls in a row grew nothing (3 here; calls 2 and
  5 of the step grow it, so 8 calls), or `most` calls; its note says which."""
  grown, calls = [], []

  def step():
    calls.append(1)
    if len(calls) in (2, 5):
      _touch_fresh_memory(96, grown)

  pages = heap.settle(step, quiet=3, most=30)
  assert len(pages) == len(calls) == 8 and heap.grew(pages) == [
      False, True, False, False, True, False, False, False], pages
  assert heap.settled_note(pages, quiet=3) == (
      '8 settling steps (2 faulted in 64+ MiB more than the quietest)')
  calls.clear()
  pages = heap.settle(step, quiet=3, most=4)
  assert len(pages) == 4 and heap.settled_note(pages, quiet=3) == (
      '4 settling steps (1 faulted in 64+ MiB more than the quietest), still growing: its runs '
      'may hold growth')
  calls.clear()
  assert len(heap.settle(lambda: None, quiet=3, most=30)) == 3


def test_torch_server_answers_runs_and_warm_ups():
  """The PyTorch server's protocol: a step's name gets one timed run (of 2 steps here),
  `warm <step> <n>` n untimed steps, anything else an error line."""
  torch = pytest.importorskip('torch')
  from benchmarks import torch_reference as ref  # pylint: disable=g-import-not-at-top
  calls = []
  steps = {'cnn': lambda: calls.append(1) or torch.zeros(())}
  out = io.StringIO()
  ref.serve(steps, 2, ['cnn\n', '\n', 'warm cnn 5\n', 'warm vgg 5\n', 'warm cnn x\n',
                       'time cnn\n'], out)
  lines = out.getvalue().splitlines()
  assert len(lines) == 5 and re.fullmatch(r'torch: cnn \d[\d.e-]*', lines[0]), lines
  assert lines[1] == 'torch: warmed cnn 5' and len(calls) == 2 + 5, (lines, calls)
  assert lines[2:] == ["torch: error unknown request 'warm vgg 5'",
                       "torch: error unknown request 'warm cnn x'",
                       "torch: error unknown request 'time cnn'"]


def test_unknown_step_or_bad_counts_raise():
  with pytest.raises(ValueError, match='which'):
    compare.run(compare.Options(which=('cnn', 'vgg'), torch=False), io.StringIO())
  for bad in ({'runs': 0}, {'steps': 0}, {'settle': 0}):
    with pytest.raises(ValueError, match='must be >= 1'):
      compare.run(compare.Options(which=('cnn',), torch=False, **bad), io.StringIO())


def test_torch_networks_are_the_seeds():
  pytest.importorskip('torch')
  from benchmarks import torch_reference as ref  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  config = mnist_srgan.get_config()
  cases = [  # (PyTorch module, the seed's count, the srgan-jax module, its input shape)
      (ref.Classifier(), None, models.Classifier(), (1, 28, 28, 1)),
      (ref.Generator(4, 1, 4), test_models.seed_generator_params(1, 4, 2),
       models.create_generator(config), (1, 7, 7, 1)),
      (ref.Generator(2, 3, 4), test_models.seed_generator_params(3, 4, 1),
       models.Generator(2, 3, 4, upsample_batch_norm=True), (1, 14, 14, 3)),
      (ref.Discriminator(3), test_models.seed_discriminator_params(3),
       models.create_discriminator(config), (1, 28, 28, 3)),
  ]
  for torch_module, seed_count, jax_module, shape in cases:
    count = ref.count_params(torch_module)
    assert count == _jax_count(jax_module, shape), type(torch_module).__name__
    assert seed_count is None or count == seed_count
  vgg_count = sum(math.prod(k) + math.prod(b) for name, (k, b) in vgg.LAYER_SHAPES.items()
                  if vgg.LAYER_NAMES.index(name) <= vgg.LAYER_NAMES.index('conv3_4'))
  features = ref.VGG19Features()
  assert ref.count_params(features) == vgg_count
  assert not any(p.requires_grad for p in features.parameters())  # Frozen.
  with torch.no_grad():
    assert features(torch.zeros(2, 3, 28, 28)).shape == (2, 256, 7, 7)  # relu3_4.
    assert ref.Generator(4, 1, 4)(torch.zeros(2, 1, 7, 7)).shape == (2, 1, 28, 28)
    assert ref.Discriminator(3)(torch.zeros(2, 3, 28, 28)).shape == (2, 1, 2, 2)  # Patches.


@pytest.mark.parametrize('channels_last', [False, True])
def test_torch_steps_train(channels_last):
  pytest.importorskip('torch')
  from benchmarks import torch_reference as ref  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  for name, step in ref.make_steps(ref.STEPS, {n: 2 for n in ref.STEPS}, channels_last).items():
    before = [[p.detach().clone() for p in m.parameters()] for m in step.trained]
    assert math.isfinite(float(step())), name
    for module, old in zip(step.trained, before):  # Adam stepped every trained network.
      changed = [not torch.equal(a, b) for a, b in zip(old, module.parameters())]
      assert all(changed), (name, type(module).__name__, changed.count(False))
    assert ref.time_run(step, 1) > 0
  with pytest.raises(ValueError, match='unknown'):
    ref.make_steps(['vgg'], {})


@pytest.mark.long
def test_command_line_times_both_sides():
  """`python -m benchmarks.compare` on the CNN and generator steps: with PyTorch (its server in
  a subprocess) one line per step with ratio jax/torch; without it (as in CI), the JAX side."""
  has_torch = compare.torch_available()
  # ATen held to its portable kernels (any CPU has them): the cpu line and PyTorch's say so.
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {COMPILE_FLAGS}',
             JAX_PLATFORMS='cpu', ATEN_CPU_CAPABILITY='default')
  env.pop(native.MARCH_ENV, None)  # Only ATen held, whatever the suite runs under.
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.compare', '--which=cnn,generator', '--steps=1',
       '--runs=2', '--warmup=0', '--settle=1', '--cnn_batch=4', '--generator_batch=2',
       '--conv_implementation=xla', '--torch_keep_freed_memory',
       '--torch' if has_torch else '--notorch'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = compare.parse_lines(proc.stdout)
  assert set(results) == {'cnn', 'generator'}, proc.stdout
  for values in results.values():
    assert values['jax'] > 0 and math.isfinite(values['jax']), proc.stdout
    if has_torch:
      assert values['torch'] > 0, proc.stdout
      assert values['ratio'] == pytest.approx(values['jax'] / values['torch'], rel=0.01)
    else:
      assert values['torch'] is None and values['ratio'] is None, proc.stdout
  assert '2 cpu host devices' in proc.stdout and "convs xla, XLA's on eigen" in proc.stdout
  assert 'Conv tuning' not in proc.stderr + proc.stdout
  assert 'cnn: classifier_train step' in proc.stdout and 'generator: pretrain step' in proc.stdout
  # Each side ran each step again right before the step's runs, --settle=1 times (the JAX side
  # until 1 call in a row grew its heap by less than the quietest call: the first).
  settled = re.findall(r'info: (\w+): jax (\d+) settling steps \(\d+ faulted in 64\+ MiB more '
                       r'than the quietest\)(?:; torch (\d+) untimed steps)?', proc.stdout)
  assert [name for name, *_ in settled] == ['cnn', 'generator'], proc.stdout
  assert all(n == '1' and m == ('1' if has_torch else '') for _, n, m in settled), proc.stdout
  if has_torch:
    threads = len(os.sched_getaffinity(0))
    assert f'threads={threads} layout=channels_last isa=DEFAULT' in proc.stdout, proc.stdout
    # PyTorch's process ran under the JAX side's malloc settings, as asked.
    assert f'GLIBC_TUNABLES={platform.KEEP_FREED_MEMORY_TUNABLES}' in proc.stdout, proc.stdout
  assert 'malloc: JAX freed memory kept' in proc.stdout, proc.stdout
  assert 'cores; held to: ATEN_CPU_CAPABILITY=default' in proc.stdout, proc.stdout
  assert 'PyTorch the same settings' in proc.stdout, proc.stdout
