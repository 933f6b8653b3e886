"""benchmarks.waits: each device thread's time in its all-reduces, read off a jax.profiler
trace of real pmapped steps (no timed asserts)."""

import gzip
import json

from benchmarks import timing
from benchmarks import waits
from tests import conftest


def test_waits_per_thread_sums_the_collectives_of_each_thread_a_step(tmp_path):
  """Per thread, the time its collectives' events cover: a Rendezvous within its all-reduce's
  event counts once, overlapping events by their union, other ops not at all."""
  events = [
      {'ph': 'X', 'name': 'psum.12', 'tid': 1, 'ts': 0, 'dur': 3000},
      {'ph': 'X', 'name': 'Rendezvous', 'tid': 1, 'ts': 500, 'dur': 2000},  # Within psum.12.
      {'ph': 'X', 'name': 'psum.13', 'tid': 1, 'ts': 2500, 'dur': 1500},  # Overlaps it by 500.
      {'ph': 'X', 'name': 'convolution.3', 'tid': 1, 'ts': 5000, 'dur': 50000},  # Not a wait.
      {'ph': 'X', 'name': 'all-reduce.7', 'tid': 2, 'ts': 0, 'dur': 2000},
      {'ph': 'i', 'name': 'Rendezvous', 'tid': 2, 'ts': 9000},  # An instant, no duration.
  ]
  path = tmp_path / 'trace.json.gz'
  with gzip.open(path, 'wt') as f:
    json.dump({'traceEvents': events}, f)
  assert waits.waits_per_thread(str(path), steps=2) == {1: 2.0, 2: 1.0}


def test_measure_profiles_each_devices_all_reduces_of_the_cnn_step(tmp_path):
  rep = timing.Reporter()
  out = waits.measure('cnn', batch_size=8, warmup=1, steps=1, trace_dir=str(tmp_path),
                      rep=rep, conv_implementation='xla')
  assert out['step_ms'] > 0
  # The seed CNN step all-reduces its BatchNorm sums and gradients: every device's thread waits.
  assert len(out['waits_ms']) >= conftest.NUM_DEVICES, out
  assert all(ms > 0 for ms in out['waits_ms']), out
  assert rep.figures['waits/cnn/step_ms'] == out['step_ms']
  assert rep.figures['waits/cnn/thread0_ms'] == max(out['waits_ms'])
