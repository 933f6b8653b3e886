"""srgan-jax's training steps beside the seed's PyTorch ones, timed in turns on one CPU.

  python -m benchmarks.compare [--steps=3 --runs=3 --which=cnn,generator,gan]

Three steps, each as srgan-jax trains it and as the seed's PyTorch notebooks did
(benchmarks/torch_reference.py):
- cnn: the MNIST CNN's train step (classifier_train's pmapped step, configs/classifier.py:
  batch 128, 1x28x28, dropout, BatchNorm, Adam; with its 1-pixel shifts and Polyak average);
- generator: the SRResNet pretraining step of steps.make_pmapped_steps with
  configs/mnist_srgan.py (x4, 7x7 -> 28x28, 4 blocks, MSE, batch 64);
- gan: steps.gan_step (the GAN iteration as trained) with configs/seed_x2_rgb.py and the seed's
  content loss, L1 on VGG19 relu3_4 features (random weights), + LSGAN 1e-3; x2, 3 channels,
  batch 128. PyTorch runs the seed's G step then D step.
The JAX steps run over one host device per core, as main.py sets them up; PyTorch runs in a
subprocess with one thread per core. After compilation and warm-up, run r of JAX and run r of
PyTorch alternate (JAX first on even runs, PyTorch first on odd ones), so drifting load on a
shared machine biases neither. Each step prints one line

  compare: <step> jax=<images/s> torch=<images/s> ratio=<jax/torch>  # ...

(medians of the runs; torch=n/a without PyTorch: `pip install .[torch]`; the comment gives each
side's slowest and fastest run, and the JAX runs that grew the heap, heap_growth_note), after
`info:` lines naming the CPU, the versions, the JAX devices and PyTorch's threads and memory
format. Right before a step's runs, each side runs it again untimed: the JAX side until its heap
stops growing (heap.settle: `--settle` calls in a row without growth, heap.SETTLE_QUIET unless
told; an `info:` line says how many calls it took), PyTorch `--settle` calls. A JAX step that
grows the heap is 1-3 s slower on the 2-core VMs, and such growths come at irregular steps,
mostly in the first few dozen (in some processes past the 70th), also after the other steps'
runs. PyTorch's process has no such transient: under glibc's defaults it maps and unmaps its
big blocks every step (160-440 MiB of fresh pages a GAN iteration, varying from step to step
for as long as it runs), its steady state.
"""

import dataclasses
import functools
import importlib.util
import os
import platform as platform_lib
import statistics
import subprocess
import sys
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import jax
import jaxlib

from benchmarks import heap
from benchmarks import speed
from benchmarks import timing
from benchmarks import workloads
from configs import classifier as classifier_config
from configs import mnist_srgan
from configs import seed_x2_rgb
from srgan_jax import classifier_train
from srgan_jax import conv_tuning
from srgan_jax import convolution
from srgan_jax import distributed
from srgan_jax import input_pipeline
from srgan_jax import platform
from srgan_jax import steps as steps_lib
from srgan_jax import validation
from srgan_jax.state import AXIS

STEPS = ('cnn', 'generator', 'gan')
PREFIX = 'compare: '
TORCH_MODULE = 'benchmarks.torch_reference'
TORCH_PREFIX = 'torch: '  # torch_reference's answers (PREFIX there).
TORCH_READY = 'torch: ready'
# What holds PyTorch's kernels (ATen's, oneDNN's, MKL's) to AVX2 (benchmarks.targets
# --isa=avx2); any of these set is named in the cpu line, beside the JAX side's
# (platform.held_isa).
TORCH_AVX2_ENV = {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2',
                  'MKL_ENABLE_INSTRUCTIONS': 'AVX2'}


@dataclasses.dataclass
class Options:
  """What to compare and how long."""
  which: Sequence[str] = STEPS
  steps: int = 3              # steps per timed run.
  runs: int = 3               # timed runs of each side (median).
  # Untimed steps after compilation, on both sides. They were there to let the JAX side's heap
  # settle; the settle right before each step's runs (below) now does that, also after the
  # other steps' runs have moved the heap: 15 steps measured the same ratios as 1 and made each
  # `compare` about a minute longer (AMD EPYC family 25 model 17, 2026-12-05, in turns on one
  # tuning cache: 1.54-1.58x / 1.77-1.78x / 1.52-1.62x with 15, 1.54-1.55x / 1.66-1.82x /
  # 1.55-1.57x with 1; 203-217 s against 151-152 s). Before the settle, 1 step left the seed
  # GAN iteration's JAX runs at 71-97 images/s and its median at 1.07x, 15 gave 1.36x (Intel
  # Xeon, 2026-12-04).
  warmup: int = 1
  # Right before a step's timed runs, untimed calls in a row that must not grow the JAX side's
  # heap (heap.settle), and PyTorch's untimed calls; the tests' tiny steps need 1.
  settle: int = heap.SETTLE_QUIET
  # Batch sizes; 0: the config's (cnn 128, generator 64, gan 128).
  batches: Dict[str, int] = dataclasses.field(default_factory=dict)
  torch: bool = True          # False: the JAX side only.
  # PyTorch's memory format: channels_last measured as fast as NCHW or faster on every step.
  channels_last: bool = True
  torch_threads: int = 0      # torch.set_num_threads; 0: one per core.
  conv_implementation: str = 'tuned'  # config.conv_implementation of the JAX steps.
  # The JAX side keeps freed memory as main.py does (platform.keep_freed_memory); True runs
  # PyTorch's process under the same malloc settings (glibc tunables) instead of glibc's.
  torch_keep_freed_memory: bool = False


# ---------------------------------------------------------------------------------------------
# The JAX steps, as training runs them: each a function () -> outputs that takes one step.


def _batch(config, split, batch_size: int, num_devices: int) -> dict:
  idx = input_pipeline.batch_indices(config.seed, 0, batch_size, split.num_examples)
  return input_pipeline.shard(input_pipeline.get_batch(split, idx), num_devices)


def jax_cnn_step(batch_size: int, devices, rep: timing.Reporter,
                 conv_implementation: str = 'tuned') -> Tuple[int, Callable]:
  """classifier_train's pmapped train step of the seed CNN (configs/classifier.py)."""
  config = classifier_config.get_config()
  config.conv_implementation = conv_implementation
  config.classifier.batch_size = batch_size or config.classifier.batch_size
  validation.validate_config(config, len(devices))
  rng = jax.random.PRNGKey(config.seed)
  # As classifier_train.train_and_evaluate builds it, with the convs it would use.
  conv_plan = conv_tuning.plan_for(config.conv_implementation, classifier_train.conv_networks(
      config, 1000 // len(devices)), devices)
  state = distributed.replicate(classifier_train.create_state(config, rng, 1000, conv_plan),
                                devices, AXIS)
  train_step = classifier_train._train_step  # pylint: disable=protected-access
  step_fn = jax.pmap(functools.partial(train_step,
                                       max_shift=config.classifier.max_shift,
                                       ema_decay=config.classifier.ema_decay),
                     axis_name=AXIS, in_axes=(None, 0, None), out_axes=(None, None),
                     devices=devices)
  bs = config.classifier.batch_size
  batch = _batch(config, input_pipeline.load_split(config, 'train'), bs, len(devices))
  carry = {'state': state, 'step': 0}
  rep.info(f'cnn: classifier_train step, {config.classifier.architecture}, batch {bs}')

  def once():
    carry['state'], metrics = step_fn(carry['state'], batch,
                                      jax.random.fold_in(rng, carry['step']))
    carry['step'] += 1
    return metrics
  return bs, once


def jax_generator_step(batch_size: int, devices, rep: timing.Reporter,
                       conv_implementation: str = 'tuned') -> Tuple[int, Callable]:
  """steps.make_pmapped_steps' pretrain step with configs/mnist_srgan.py."""
  config = mnist_srgan.get_config()
  config.conv_implementation = conv_implementation
  config.batch_size = batch_size or config.batch_size
  validation.validate_config(config, len(devices))
  workload = workloads.make_workload(config, devices, rep)
  pretrain, _ = steps_lib.make_pmapped_steps(config, devices)
  batch = workload.batch(0)
  carry = {'g': workloads.fresh_copy(workload.g_state, devices)}  # It is consumed.
  rep.info(f'generator: pretrain step, x{config.data.scale}, '
           f'{config.generator.num_res_blocks} blocks, {config.loss.content}, '
           f'batch {config.batch_size}')

  def once():
    carry['g'], _, metrics = pretrain(carry['g'], workload.d_state, batch, workload.frozen)
    return metrics
  return config.batch_size, once


def gan_config(batch_size: int = 0):
  """configs/seed_x2_rgb.py with the seed's content loss: L1 on VGG19 relu3_4 (random weights
  for the benchmark) + LSGAN 1e-3."""
  config = seed_x2_rgb.get_config()
  config.batch_size = batch_size or config.batch_size
  config.loss.content = 'vgg'
  config.loss.vgg.random_weights_for_benchmark = True
  config.loss.vgg.layers = {'conv3_4': 1.0}
  config.loss.vgg.criterion = 'l1'
  config.loss.adversarial = 'lsgan'
  config.loss.adversarial_weight = 1e-3
  return config


def jax_gan_step(batch_size: int, devices, rep: timing.Reporter,
                 conv_implementation: str = 'tuned') -> Tuple[int, Callable]:
  """steps.gan_step (make_pmapped_steps' GAN iteration) with gan_config()."""
  config = gan_config(batch_size)
  config.conv_implementation = conv_implementation
  validation.validate_config(config, len(devices))
  workload = workloads.make_workload(config, devices, rep)
  iteration = speed._Iteration(workload, 'train')  # pylint: disable=protected-access
  rep.info(f'gan: gan_step, x{config.data.scale}, {config.data.channels} channels, VGG19 '
           f'relu3_4 {config.loss.vgg.criterion} + {config.loss.adversarial} '
           f'{config.loss.adversarial_weight:g}, batch {config.batch_size}')
  return config.batch_size, iteration


JAX_STEPS = {'cnn': jax_cnn_step, 'generator': jax_generator_step, 'gan': jax_gan_step}


# ---------------------------------------------------------------------------------------------
# The PyTorch side: benchmarks/torch_reference.py in a subprocess, one timed run per request.


def torch_available() -> bool:
  return importlib.util.find_spec('torch') is not None


class TorchServer:
  """torch_reference's server: builds and warms up its steps at start, then times runs."""

  def __init__(self, options: Options):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get('PYTHONPATH')) if p))
    if options.torch_keep_freed_memory:
      env['GLIBC_TUNABLES'] = platform.KEEP_FREED_MEMORY_TUNABLES
    args = [sys.executable, '-m', TORCH_MODULE, f'--which={",".join(options.which)}',
            f'--steps={options.steps}', f'--warmup={options.warmup}',
            *[f'--{name}_batch={b}' for name, b in options.batches.items() if b]]
    if options.channels_last:
      args.append('--channels_last')
    if options.torch_threads:
      args.append(f'--threads={options.torch_threads}')
    # stderr is this process's: PyTorch's warnings and errors show, and no pipe can fill up.
    self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env)
    self.description = ''

  def _line(self) -> str:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'{TORCH_MODULE} exited (status {self.proc.wait()}); see its stderr')
    return line.strip()

  def wait_ready(self) -> str:
    """Waits for the warmed-up server; returns its 'version=... threads=... layout=...'."""
    line = self._line()
    while not line.startswith(TORCH_READY):
      line = self._line()
    self.description = line[len(TORCH_READY):].strip()
    return self.description

  def _ask(self, request: str, answer: str) -> List[str]:
    """The fields after `answer` of the server's answer to `request`."""
    self.proc.stdin.write(request + '\n')
    self.proc.stdin.flush()
    line = self._line()
    fields = line[len(TORCH_PREFIX):].split()
    if not line.startswith(TORCH_PREFIX) or fields[:len(answer.split())] != answer.split():
      raise RuntimeError(f'unexpected answer from {TORCH_MODULE} to {request!r}: {line!r}')
    return fields[len(answer.split()):]

  def time_run(self, name: str) -> float:
    """Seconds per step of one run of `name`."""
    return float(self._ask(name, name)[0])

  def warm(self, name: str, steps: int) -> None:
    """Runs `name` `steps` times, untimed."""
    self._ask(f'warm {name} {steps}', f'warmed {name} {steps}')

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The run.


def cpu_model() -> str:
  """The CPU's model name (lscpu, else /proc/cpuinfo, else the platform's)."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        return line.split(':', 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.lower().startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform_lib.processor() or 'unknown CPU'


def format_line(name: str, jax_rate: float, torch_rate: Optional[float], note: str) -> str:
  """The `compare:` line of a step (images/s; torch_rate None: not measured)."""
  if torch_rate is None:
    torch_text = ratio_text = 'n/a'
  else:
    torch_text, ratio_text = f'{torch_rate:.4g}', f'{jax_rate / torch_rate:.3g}'
  return f'{PREFIX}{name} jax={jax_rate:.4g} torch={torch_text} ratio={ratio_text}  # {note}'


def parse_lines(text: str) -> Dict[str, Dict[str, Optional[float]]]:
  """{step: {'jax': images/s, 'torch': images/s or None, 'ratio': jax/torch or None}} of the
  `compare:` lines in a run's output."""
  out = {}
  for line in text.splitlines():
    if not line.startswith(PREFIX):
      continue
    name, *fields = line[len(PREFIX):].split('#')[0].split()
    values = dict(field.split('=', 1) for field in fields)
    out[name] = {k: None if values[k] == 'n/a' else float(values[k])
                 for k in ('jax', 'torch', 'ratio')}
  return out


def _time_in_turns(jax_once: Callable, torch_run: Optional[Callable[[], float]],
                   options: Options) -> Tuple[List[float], List[float], List[int]]:
  """Seconds per step of each run, JAX first on even runs, PyTorch first on odd runs; and the
  fresh pages of each JAX run."""
  jax_runs, torch_runs, jax_pages = [], [], []
  sides = [lambda: jax_runs.extend(timing.time_runs(jax_once, options.steps, 1, 0, jax_pages))]
  if torch_run is not None:
    sides.append(lambda: torch_runs.append(torch_run()))
  for r in range(options.runs):
    for side in (sides if r % 2 == 0 else sides[::-1]):
      side()
  return jax_runs, torch_runs, jax_pages


def heap_growth_note(batch_size: int, runs: List[float], pages: List[int]) -> str:
  """Which JAX runs grew the heap (heap.grew), with their images/s: '' when none did. On the
  2-core VMs such a run is slower by the faults alone. (PyTorch's side, under glibc's
  defaults, maps and unmaps its big blocks every step: 160-440 MiB of faults a GAN iteration,
  its steady state, not growth.)"""
  grown = [batch_size / seconds for seconds, grew in zip(runs, heap.grew(pages)) if grew]
  if not grown:
    return ''
  return (f'; the heap grew in {len(grown)} of {len(runs)} jax runs (at '
          f'{", ".join(f"{rate:.4g}" for rate in grown)} images/s)')


def run(options: Optional[Options] = None, out=None) -> dict:
  """Times every step of `options.which` on both sides; prints and returns parse_lines'
  {step: {'jax', 'torch', 'ratio'}}."""
  options = options or Options()
  unknown = [name for name in options.which if name not in STEPS]
  if unknown or options.runs < 1 or options.steps < 1 or options.settle < 1:
    raise ValueError(f'which must name some of {STEPS} (unknown: {unknown}); runs, steps and '
                     'settle must be >= 1')
  rep = timing.Reporter(out)
  jax_malloc = ('freed memory kept (platform.keep_freed_memory, as main.py)'
                if platform.keep_freed_memory() else 'as the environment sets it')
  server = None
  if options.torch and torch_available():
    server = TorchServer(options)
  elif options.torch:
    rep.warning('PyTorch is not installed (pip install .[torch]): the JAX side only.')
  devices = jax.local_devices()
  cores = len(os.sched_getaffinity(0))
  held = ', '.join(filter(None, [platform.held_isa()] + [
      f'{name}={os.environ[name]}' for name in TORCH_AVX2_ENV if os.environ.get(name)]))
  rep.info(f'cpu: {cpu_model()}, {cores} cores' + (f'; held to: {held}' if held else ''))
  per_core = ' (one per core, as main.py sets up)' if len(devices) == cores > 1 else ''
  library = (f', XLA\'s on {platform.cpu_conv_library()}, fusions by its '
             f'{platform.cpu_fusion_emitters()} emitters' if devices[0].platform == 'cpu' else '')
  rep.info(f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, {len(devices)} '
           f'{devices[0].platform} host devices{per_core}; convs {options.conv_implementation}'
           f'{library}')
  torch_malloc = ('the same settings (GLIBC_TUNABLES)' if options.torch_keep_freed_memory
                  else "glibc's defaults")
  rep.info(f'malloc: JAX {jax_malloc}; PyTorch {torch_malloc}')
  rep.info(f'{options.runs} runs of {options.steps} steps after {options.warmup} warm-up '
           'step(s), JAX and PyTorch in turns; medians; a shared machine makes them noisy')
  lines = []
  try:
    if server is not None:
      # Ready before JAX starts: PyTorch's warm-up on the same cores would skew conv tuning's
      # timings (measured on the Intel Xeon: the seed CNN's conv3 forward timed at 50 ms
      # instead of 6, and the tuner chose a slower candidate).
      rep.info(f'torch {server.wait_ready()}')
    jax_steps = {}
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # "Some donated buffers were not usable".
      for name in options.which:
        batch_size, once = JAX_STEPS[name](options.batches.get(name, 0), devices, rep,
                                           options.conv_implementation)
        timing.time_runs(once, 1, 0, 1 + options.warmup)  # Compiles, then warms up.
        jax_steps[name] = batch_size, once
      for name, (batch_size, once) in jax_steps.items():
        pages = heap.settle(lambda: jax.block_until_ready(once()), quiet=options.settle)
        settling = f'jax {heap.settled_note(pages, quiet=options.settle)}'
        torch_run = None
        if server is not None:
          server.warm(name, options.settle)
          settling += f'; torch {options.settle} untimed steps'
          torch_run = functools.partial(server.time_run, name)
        rep.info(f'{name}: {settling}')
        jax_runs, torch_runs, jax_pages = _time_in_turns(once, torch_run, options)
        jax_rate = batch_size / statistics.median(jax_runs)
        torch_rate = batch_size / statistics.median(torch_runs) if torch_runs else None
        spread = lambda runs: (f'{batch_size / max(runs):.4g}-{batch_size / min(runs):.4g}'
                               if runs else 'n/a')
        line = format_line(name, jax_rate, torch_rate,
                           f'images/s, batch {batch_size}; runs: jax {spread(jax_runs)}, '
                           f'torch {spread(torch_runs)}'
                           + heap_growth_note(batch_size, jax_runs, jax_pages))
        print(line, file=rep.out, flush=True)
        lines.append(line)
  finally:
    if server is not None:
      server.close()
  return parse_lines('\n'.join(lines))


# ---------------------------------------------------------------------------------------------
# The command line.

FLAGS = flags.FLAGS
flags.DEFINE_list('which', list(STEPS), f'Steps to compare: some of {", ".join(STEPS)}.')
flags.DEFINE_integer('steps', Options.steps, 'Steps per timed run.')
flags.DEFINE_integer('runs', Options.runs, 'Timed runs of each side (median).')
flags.DEFINE_integer('warmup', Options.warmup, 'Untimed steps after compilation.')
flags.DEFINE_integer('settle', Options.settle, 'Right before each step\'s timed runs: untimed '
                     'steps in a row that must not grow the JAX side\'s heap, and PyTorch\'s '
                     'untimed steps.')
for _name in STEPS:
  flags.DEFINE_integer(f'{_name}_batch', 0, f'Batch of the {_name} step; 0: the config\'s.')
flags.DEFINE_bool('torch', Options.torch, 'Time the PyTorch side too (needs torch).')
flags.DEFINE_bool('channels_last', Options.channels_last,
                  'PyTorch in the channels_last memory format (else plain NCHW).')
flags.DEFINE_integer('torch_threads', Options.torch_threads,
                     'torch.set_num_threads of the PyTorch side; 0: one per CPU core.')
flags.DEFINE_bool('cpu_devices_per_core', True, 'One JAX host device per CPU core (main.py\'s '
                  'default, config.cpu_devices_per_core).')
flags.DEFINE_enum('conv_implementation', Options.conv_implementation,
                  list(convolution.CONV_IMPLEMENTATIONS),
                  'config.conv_implementation of the JAX steps (the configs\' default: tuned).')
flags.DEFINE_bool('torch_keep_freed_memory', Options.torch_keep_freed_memory,
                  'Run PyTorch under the malloc settings of the JAX side '
                  '(platform.keep_freed_memory), not glibc\'s defaults.')
flags.DEFINE_enum('cpu_conv_library', 'eigen', list(platform.CONV_LIBRARIES),
                  'The library XLA:CPU runs convolutions on (config.cpu_conv_library).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before the first JAX computation (importing jax starts no backend).
  platform.configure_cpu(FLAGS.cpu_devices_per_core, FLAGS.cpu_conv_library)
  run(Options(which=tuple(FLAGS.which), steps=FLAGS.steps, runs=FLAGS.runs,
              warmup=FLAGS.warmup, settle=FLAGS.settle,
              batches={name: getattr(FLAGS, f'{name}_batch') for name in STEPS},
              torch=FLAGS.torch, channels_last=FLAGS.channels_last,
              torch_threads=FLAGS.torch_threads,
              conv_implementation=FLAGS.conv_implementation,
              torch_keep_freed_memory=FLAGS.torch_keep_freed_memory))


if __name__ == '__main__':
  platform.freeze_imported_objects()
  app.run(main)
