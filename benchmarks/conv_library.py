"""XLA:CPU's convolution libraries side by side: each conv of the networks' forward pass, input
gradient and kernel gradient, timed on Eigen (XLA's own) and on YNNPACK (jax 0.10's default).

  python -m benchmarks.conv_library                      # the layers below, both libraries
  python -m benchmarks.conv_library --layers=64,28,32,64,3

The library is a process-wide XLA flag (`platform.configure_cpu_convolutions`), so each
library is timed in a process of its own (this module, with --library), one after the other;
one host device, which uses every core, like `conv_tuning`'s candidates. It prints one line per
layer and library, `conv: <layer> <library> fwd=<ms> dx=<ms> dw=<ms>`, and the ratio
ynnpack / eigen of their sums: what `config.cpu_conv_library` decides on this machine.
"""

import os
import subprocess
import sys
import time
from typing import Dict, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

from srgan_jax import conv_tuning
from srgan_jax import platform

# (batch, map size, in channels, out channels, kernel) of the seed CNN's and the generator's
# costliest convs, at a per-device batch of the main job.
LAYERS = ((64, 28, 32, 64, 3), (64, 14, 64, 128, 3), (32, 14, 64, 64, 3), (32, 14, 64, 256, 3),
          (32, 28, 64, 1, 9), (32, 7, 1, 64, 9))
PREFIX = 'conv: '
Layer = Tuple[int, int, int, int, int]


def layer_name(layer: Layer) -> str:
  b, h, c, o, k = layer
  return f'{k}x{k}x{c}->{o}@{h}x{h}/b{b}'


def measure(layer: Layer, runs: int = 3, calls: int = 5) -> Dict[str, float]:
  """Milliseconds per call (best of `runs` runs of `calls` calls) of one stride-1 'SAME' conv's
  forward pass, input gradient and kernel gradient, on this process's library."""
  import jax  # pylint: disable=g-import-not-at-top  (after the library flag is set)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  b, h, c, o, k = layer
  # numpy's draws: jax.random.normal would compile a sampler for each shape, in each process.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, h, h, c), dtype=np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, c, o), dtype=np.float32) * np.float32(0.05))
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  dy = jnp.ones((b, h, h, o))
  programs = {
      'fwd': (jax.jit(conv), (x, w)),
      'dx': (jax.jit(lambda w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]), (w, dy)),
      'dw': (jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]), (x, dy)),
  }
  out = {}
  for phase, (fn, args) in programs.items():
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    best = float('inf')
    for _ in range(runs):
      start = time.perf_counter()
      for _ in range(calls):
        result = compiled(*args)
      jax.block_until_ready(result)
      best = min(best, (time.perf_counter() - start) / calls)
    out[phase] = best * 1e3
  return out


def format_line(layer: Layer, library: str, ms: Dict[str, float]) -> str:
  return (f'{PREFIX}{layer_name(layer)} {library} ' +
          ' '.join(f'{phase}={ms[phase]:.3f}' for phase in ('fwd', 'dx', 'dw')))


def parse_lines(text: str) -> Dict[Tuple[str, str], Dict[str, float]]:
  """{(layer name, library): {phase: ms}} of the lines format_line prints."""
  out = {}
  for line in text.splitlines():
    if line.startswith(PREFIX):
      name, library, *phases = line[len(PREFIX):].split()
      out[name, library] = {p.split('=')[0]: float(p.split('=')[1]) for p in phases}
  return out


def compare(layers: Sequence[Layer], runs: int, out=None) -> Dict[str, float]:
  """Times `layers` on each library in a fresh process; prints the lines and, per layer, the
  ratio ynnpack / eigen of fwd + dx + dw. Returns {layer name: that ratio}."""
  out = out or sys.stdout
  spec = ';'.join(','.join(map(str, layer)) for layer in layers)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  env.pop('JAX_DISABLE_MOST_OPTIMIZATIONS', None)  # Timed as a run compiles them.
  lines = {}
  for library in platform.CONV_LIBRARIES:
    run = subprocess.run([sys.executable, '-m', 'benchmarks.conv_library', f'--library={library}',
                          f'--layers={spec}', f'--runs={runs}'], env=env, capture_output=True,
                         text=True, check=False)
    if run.returncode:
      raise RuntimeError(f'the {library} process failed:\n{run.stderr[-3000:]}')
    print(run.stdout, end='', file=out, flush=True)
    lines.update(parse_lines(run.stdout))
  ratios = {}
  for layer in layers:
    name = layer_name(layer)
    ratios[name] = sum(lines[name, 'ynnpack'].values()) / sum(lines[name, 'eigen'].values())
    print(f'ratio: {name} ynnpack/eigen = {ratios[name]:.2f}', file=out, flush=True)
  return ratios


FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (defined when run, not on import: benchmarks.compare, imported beside
  it in one process, has a --runs of its own)."""
  flags.DEFINE_string('layers', ';'.join(','.join(map(str, layer)) for layer in LAYERS),
                      'Layers as batch,size,in,out,kernel; separated by ";".')
  flags.DEFINE_integer('runs', 3, 'Timed runs of each phase (the best is kept).')
  flags.DEFINE_enum('library', None, list(platform.CONV_LIBRARIES),
                    'Time on this library in this process (the comparison sets it).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  layers = [tuple(int(v) for v in spec.split(',')) for spec in FLAGS.layers.split(';')]
  if FLAGS.library is None:
    print(f'info: cpu: {conv_tuning.cpu_model()}')
    compare(layers, FLAGS.runs)
    return
  platform.configure_cpu_convolutions(FLAGS.library)
  for layer in layers:
    print(format_line(layer, platform.cpu_conv_library(), measure(layer, FLAGS.runs)),
          flush=True)


if __name__ == '__main__':
  platform.freeze_imported_objects()
  define_flags()
  app.run(main)
