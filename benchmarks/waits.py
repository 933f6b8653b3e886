"""How long each JAX device waits in its all-reduces, per step of a `compare` step.

  python -m benchmarks.waits --step=gan --profiled=3

With one host device per core (main.py's default), an all-reduce (BatchNorm's cross-device
sums, the gradients' means) holds every device until the slowest arrives: a core slowed from
time to time by the machine holds the other at the next one. This profiles a few steps of
`benchmarks.compare`'s JAX step with `jax.profiler` and sums, for each device's thread, the
time its all-reduce events cover, the Rendezvous waits within them included (the seed GAN
iteration on a 2-core AMD EPYC, family 25 model 17, in a slow hour: 92 and 63 ms a device of a
2140 ms step; benchmarks/README.md).
"""

import collections
import glob
import gzip
import json
import shutil
import tempfile
import time
from typing import Dict, Optional

from absl import app
from absl import flags
import jax

from benchmarks import compare
from benchmarks import timing
from srgan_jax import platform

# Event names of the collectives in XLA:CPU's trace: the all-reduce thunks (named by their HLO
# op: `psum.12`, `all-reduce.3`) and the waits inside them (`Rendezvous`, `InvokeRendezvous`:
# each lies within its all-reduce's event, so the events' time is their union, not their sum).
WAIT_EVENTS = ('Rendezvous', 'psum', 'all-reduce', 'AllReduce')


def waits_per_thread(trace_file: str, steps: int) -> Dict[int, float]:
  """{thread id: ms a step} covered by the collectives' events of a perfetto trace (.json.gz),
  nested events counted once."""
  with gzip.open(trace_file) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  spans = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X' and any(name in e.get('name', '') for name in WAIT_EVENTS):
      spans[e['tid']].append((e['ts'], e['ts'] + e['dur']))
  out = {}
  for tid, intervals in spans.items():
    covered, end = 0.0, float('-inf')
    for start, stop in sorted(intervals):
      covered += max(0.0, stop - max(start, end))
      end = max(end, stop)
    out[tid] = covered / 1e3 / steps  # Microseconds to ms, a step.
  return out


def measure(which: str, batch_size: int = 0, warmup: int = 3, steps: int = 3,
            trace_dir: Optional[str] = None, rep=None,
            conv_implementation: str = 'tuned') -> dict:
  """Times `steps` steps of compare's `which` step after `warmup`, then profiles as many and
  reports the step's ms and each device thread's ms of waits a step."""
  rep = rep or timing.Reporter()
  _, once = compare.JAX_STEPS[which](batch_size, jax.local_devices(), rep, conv_implementation)
  for _ in range(warmup):
    jax.block_until_ready(once())
  start = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(once())
  step_ms = (time.perf_counter() - start) / steps * 1e3
  out = trace_dir or tempfile.mkdtemp(prefix='srgan_jax_waits_')
  try:
    jax.profiler.start_trace(out, create_perfetto_trace=True)
    for _ in range(steps):
      jax.block_until_ready(once())
    jax.profiler.stop_trace()
    trace_file, = glob.glob(f'{out}/plugins/profile/*/perfetto_trace.json.gz')
    waits = waits_per_thread(trace_file, steps)
  finally:
    if trace_dir is None:
      shutil.rmtree(out, ignore_errors=True)
  rep.figure(f'waits/{which}/step_ms', step_ms, 'ms', f'mean of {steps} steps')
  for i, (tid, ms) in enumerate(sorted(waits.items(), key=lambda kv: -kv[1])):
    rep.figure(f'waits/{which}/thread{i}_ms', ms, 'ms', f'a step, thread {tid}')
  return {'step_ms': step_ms, 'waits_ms': sorted(waits.values(), reverse=True)}


FLAGS = flags.FLAGS


def define_flags():
  """The command's flags; compare's module defines --cpu_devices_per_core, --cpu_conv_library
  and --conv_implementation, which this command uses as compare does (and --which and --steps
  of its own, which it does not)."""
  flags.DEFINE_enum('step', 'gan', list(compare.JAX_STEPS), 'The compare step to profile.')
  flags.DEFINE_integer('batch', 0, "Its batch; 0: compare's.")
  flags.DEFINE_integer('untimed', 3, 'Untimed steps first.')
  flags.DEFINE_integer('profiled', 3, 'Steps timed, then as many profiled.')
  flags.DEFINE_string('trace_dir', None, 'Keep the trace there (else a temporary directory).')


def main(argv):
  del argv
  # As compare (and main.py) set XLA:CPU up, before JAX starts.
  platform.configure_cpu(FLAGS.cpu_devices_per_core, FLAGS.cpu_conv_library)
  measure(FLAGS.step, FLAGS.batch, FLAGS.untimed, FLAGS.profiled, FLAGS.trace_dir,
          conv_implementation=FLAGS.conv_implementation)


if __name__ == '__main__':
  platform.freeze_imported_objects()
  define_flags()
  app.run(main)
