"""Measuring tools of the benchmark: timed runs, the figure reporter and parser, FLOPs, the peak.

Every measured figure is printed as one line ``bench: <name> = <value> <unit>`` and a run ends
with one ``summary: key=value ...`` line (Reporter); parse_figures reads the figures back.

Timings are ``runs`` runs of ``steps`` calls after ``warmup`` calls, each run ended by
``jax.block_until_ready``. FLOPs come from XLA's cost analysis of the compiled steps (on GPU,
whose compiled modules hide convolutions in cuDNN calls, of the same steps compiled for the CPU:
CpuFlopCounter). The peak is a measured f32 matmul on the same machine, so utilisation is
relative to what XLA reaches there.
"""

import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from benchmarks import heap

PREFIX = 'bench: '
SUMMARY_PREFIX = 'summary: '


class Reporter:
  """Prints and keeps the figures."""

  def __init__(self, out=None):
    self.out = out or sys.stdout
    self.figures = {}

  def figure(self, name: str, value: float, unit: str = '', note: str = ''):
    value = float(value)
    self.figures[name] = value
    line = f'{PREFIX}{name} = {value:.6g} {unit}'.rstrip()
    if note:
      line += f'  # {note}'
    print(line, file=self.out, flush=True)

  def info(self, text: str):
    print(f'info: {text}', file=self.out, flush=True)

  def warning(self, text: str):
    print(f'WARNING: {text}', file=self.out, flush=True)

  def summary(self, keys: Sequence[str]):
    parts = [f'{k}={self.figures[k]:.4g}' for k in keys if k in self.figures]
    print(SUMMARY_PREFIX + ' '.join(parts), file=self.out, flush=True)


def parse_figures(text: str) -> dict:
  """{name: value} of the ``bench:`` lines in a benchmark's output (for tests and scripts)."""
  out = {}
  for line in text.splitlines():
    if line.startswith(PREFIX):
      name, _, rest = line[len(PREFIX):].partition(' = ')
      out[name.strip()] = float(rest.split()[0])
  return out


# ---------------------------------------------------------------------------------------------
# Timing.


def time_runs(step_fn: Callable[[], object], steps: int, runs: int, warmup: int,
              pages: Optional[List[int]] = None) -> list:
  """Seconds per step of `runs` runs of `steps` calls (each ended by block_until_ready); each
  run's fresh pages (heap.fresh_pages) are appended to `pages` when given."""
  for _ in range(warmup):
    jax.block_until_ready(step_fn())
  per_step = []
  for _ in range(runs):
    p0, t0 = heap.fresh_pages(), time.perf_counter()
    out = None
    for _ in range(steps):
      out = step_fn()
    jax.block_until_ready(out)
    per_step.append((time.perf_counter() - t0) / steps)
    if pages is not None:
      pages.append(heap.fresh_pages() - p0)
  return per_step


def report_rate(rep: Reporter, prefix: str, per_step: Sequence[float], batch_size: int):
  """Reports the median, min and max steps/s and the median images/s; returns median seconds."""
  med = statistics.median(per_step)
  rep.figure(f'{prefix}/steps_per_s', 1.0 / med, 'steps/s',
             f'median of {len(per_step)} runs')
  rep.figure(f'{prefix}/steps_per_s_min', 1.0 / max(per_step), 'steps/s')
  rep.figure(f'{prefix}/steps_per_s_max', 1.0 / min(per_step), 'steps/s')
  rep.figure(f'{prefix}/images_per_s', batch_size / med, 'images/s')
  return med


def lower_compile(fn, *args):
  """(compiled, lower seconds, compile seconds) of a jitted or pmapped `fn` on `args`."""
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t1


# ---------------------------------------------------------------------------------------------
# FLOPs.


def cost_flops(analysis) -> float:
  """The 'flops' of an XLA cost analysis (a dict, or a list of one); NaN when absent."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', float('nan')))


def flops(compiled, num_devices: int) -> float:
  """FLOPs of one call of a compiled pmapped step over all devices (XLA cost analysis).

  The pmapped module is the per-device program (on CPU it agrees within 0.1% with jit(vmap)
  of the global batch), so the global cost is that times the device count.
  """
  return cost_flops(compiled.cost_analysis()) * num_devices


def _abstract(tree, per_device_batch: bool = False):
  """ShapeDtypeStructs of `tree`'s arrays ((1, ...) leading dim for a per-device batch)."""

  def leaf(x):
    if not hasattr(x, 'dtype'):
      return x
    shape = ((1,) + tuple(x.shape[1:])) if per_device_batch else tuple(x.shape)
    return jax.ShapeDtypeStruct(shape, x.dtype)
  return jax.tree.map(leaf, tree)


class CpuFlopCounter:
  """FLOPs of a step by XLA:CPU's cost analysis, whatever device the step runs on.

  On GPU the compiled module hides convolutions in cuDNN calls, which XLA's cost analysis
  does not count (it reported ~1% of the real figure on an H200); so the same step, built over
  `devices` (one CPU device), is compiled on its per-device shapes and the count scaled by the
  number of devices. On CPU the compiled training steps themselves are analysed instead.
  """

  def __init__(self, num_devices: int):
    self.num_devices = num_devices
    self.devices = jax.devices('cpu')[:1]

  def flops(self, fn, *args, batch_args=()) -> float:
    """FLOPs over all devices of `fn` (pmapped over self.devices); `batch_args`: the indices
    of the arguments whose leading axis is the device axis."""
    abstract = [_abstract(a, per_device_batch=i in batch_args) for i, a in enumerate(args)]
    return flops(fn.lower(*abstract).compile(), 1) * self.num_devices


# ---------------------------------------------------------------------------------------------
# The machine's peak.


def measure_peak(size: int, runs: int, devices):
  """Measured f32 matmul GFLOP/s (one device, pmapped over all `devices`): medians of `runs`."""
  n = len(devices)
  rng = np.random.default_rng(0)  # numpy's draws: no sampler to compile.
  a, b = (jnp.asarray(rng.standard_normal((size, size), dtype=np.float32)) for _ in range(2))
  matmul_flops = 2.0 * size ** 3
  one = jax.jit(jnp.matmul)
  a1, b1 = jax.device_put(a, devices[0]), jax.device_put(b, devices[0])
  peak_one = matmul_flops / statistics.median(time_runs(lambda: one(a1, b1), 1, runs, 1)) / 1e9
  many = jax.pmap(jnp.matmul, axis_name='peak', devices=devices)
  stacked = NamedSharding(Mesh(np.asarray(devices), ('peak',)), PartitionSpec('peak'))
  an = jax.device_put(jnp.stack([a] * n), stacked)
  bn = jax.device_put(jnp.stack([b] * n), stacked)
  peak_all = (n * matmul_flops / statistics.median(time_runs(lambda: many(an, bn), 1, runs, 1))
              / 1e9)
  return peak_one, peak_all
