"""Metric logging: a JSON-lines file plus TensorBoard events, and a progress line with an ETA.

``MetricWriter`` writes every scalar record twice: one JSON object per line to
``workdir/metrics.jsonl`` (easy to read back with ``read_metrics`` for plots and tests, and
robust to a kill mid-write) and TensorBoard event files under ``workdir/tensorboard/`` via
tensorboardX (no TensorFlow dependency). Non-finite values (NaN, +-inf) are written as JSON
``null`` so the file stays standard JSON; TensorBoard gets the raw float.

On non-primary hosts construct it with ``enabled=False``: every method is then a no-op and
nothing is created on disk.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import sys
import time

import numpy as np

from srgan_jax import files
from srgan_jax import images as images_lib


def _import_tensorboardx():
  """tensorboardX, without importing PyTorch into this process.

  Its writer module imports torch, when it is installed (as in Colab, or beside the benchmarks'
  PyTorch reference), only to name a type in its annotations: 1.0 s of every training start-up
  on a 2-core Intel Xeon (0.16 s without), and PyTorch's runtime in a JAX process for nothing.
  Numpy arrays are all this module gives it. A process that has imported torch already keeps
  it."""
  if 'torch' in sys.modules:
    return importlib.import_module('tensorboardX')
  sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX expects.
  try:
    return importlib.import_module('tensorboardX')
  finally:
    del sys.modules['torch']


tensorboardX = _import_tensorboardx()

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _to_python(value):
  """numpy/jax scalars (and 0-d/size-1 arrays) -> Python int/float/bool/str."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (str, type(None))):
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  arr = np.asarray(value)
  if arr.size != 1:
    raise ValueError(f'expected a scalar, got shape {arr.shape}')
  item = arr.reshape(()).item()
  if isinstance(item, bool):
    return item
  if isinstance(item, int):
    return item
  return float(item)


def _json_value(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def json_line(record: dict) -> str:
  """One metrics.jsonl line; non-finite floats become null."""
  record = {k: _json_value(_to_python(v)) for k, v in record.items()}
  return json.dumps(record, allow_nan=False) + '\n'


def write_json(path, data: dict) -> None:
  """Writes a dict of scalars as a JSON file, atomically; non-finite floats become null."""
  files.write_json(path, {k: _json_value(_to_python(v)) for k, v in data.items()})


def truncate_metrics_after(workdir, step: int) -> None:
  """Drops the metrics.jsonl records logged after `step` (a resumed run logs them again)."""
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  if os.path.exists(path):
    kept = [r for r in read_metrics(workdir) if r.get('step', 0) <= step]
    files.atomic_write(path, ''.join(json_line(r) for r in kept))


class MetricWriter:
  """Writes scalars to ``metrics.jsonl`` and TensorBoard, images/text to TensorBoard."""

  def __init__(self, workdir, enabled: bool = True):
    self.workdir = os.fspath(workdir)
    self.enabled = enabled
    self._file = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self._file = open(os.path.join(self.workdir, METRICS_FILE), 'a', encoding='utf-8')
    self._tb = tensorboardX.SummaryWriter(logdir=os.path.join(self.workdir, TENSORBOARD_DIR))

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    step = int(step)
    values = {str(k): _to_python(v) for k, v in scalars.items()}
    self._file.write(json_line({'step': step, **values}))
    self._file.flush()
    for k, v in values.items():
      if isinstance(v, (int, float)):  # bool is an int.
        self._tb.add_scalar(k, float(v), global_step=step)

  def write_images(self, step: int, images: dict) -> None:
    """``images``: name -> uint8 HxWx3 (HxW / HxWx1 and floats in [0, 1] also accepted)."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._tb.add_image(str(name), images_lib.to_uint8_rgb(image), global_step=int(step),
                         dataformats='HWC')

  def close(self) -> None:
    if not self.enabled:
      return
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self.enabled = False


def read_metrics(workdir) -> list[dict]:
  """Records of ``workdir/metrics.jsonl`` in order; [] if missing.

  Lines that do not parse (a truncated last line after a kill) are skipped. ``null`` values
  are non-finite floats.
  """
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def format_duration(seconds: float) -> str:
  """e.g. 151 -> '2m31s', 3725 -> '1h02m05s', 9 -> '9s'."""
  if not math.isfinite(seconds):
    return '?'
  s = max(0, int(round(seconds)))
  h, rem = divmod(s, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f'{h}h{m:02d}m{s:02d}s'
  if m:
    return f'{m}m{s:02d}s'
  return f'{s}s'


class Progress:
  """Progress line: ``step 150/2000 (7.5%) 12.3 steps/s, ETA 2m31s``.

  The rate is an exponential moving average of per-update rates (``smoothing`` weight on
  the newest), seeded by the first measured interval since construction. ``interval_rate``
  is the rate of the last interval alone: the steps actually run since the previous update
  (a short last interval, or the first after a resume) over its time.

  ``stages`` ((first step, name), ...) are parts of the run at their own speeds (SRGAN's
  pretraining and its GAN steps, 3-5x slower on CPU): the rate restarts in each, and before the
  last the ETA is the current stage's, followed by the steps of the stages still to come.
  """

  def __init__(self, total_steps: int, start_step: int = 0, smoothing: float = 0.3,
               clock=time.monotonic, stages=()):
    self.total_steps = int(total_steps)
    self.start_step = int(start_step)
    self.smoothing = smoothing
    self._clock = clock
    self._last_time = clock()
    self._last_step = self.start_step
    self._stages = sorted((int(first), name) for first, name in stages
                          if int(first) < self.total_steps)
    self._stage = self._stage_of(self.start_step)
    self.rate = None  # steps per second, in the current stage.
    self.interval_rate = None

  def _stage_of(self, step: int) -> int:
    """The index of the stage that runs step + 1 (-1 before the first)."""
    return sum(first <= step for first, _ in self._stages) - 1

  def update(self, step: int) -> str:
    step = int(step)
    now = self._clock()
    dt = now - self._last_time
    ds = step - self._last_step
    if dt > 0 and ds > 0:
      inst = self.interval_rate = ds / dt
      stage = self._stage_of(step - 1)
      if stage != self._stage:  # This interval ran the new stage's steps: its own speed.
        self._stage, self.rate = stage, None
      self.rate = inst if self.rate is None else (
          self.smoothing * inst + (1 - self.smoothing) * self.rate)
      self._last_time, self._last_step = now, step
    total = max(self.total_steps, 1)
    pct = 100.0 * step / total
    head = f'step {step}/{self.total_steps} ({pct:.1f}%)'
    if not self.rate:
      return f'{head} ? steps/s, ETA ?'
    later = [(first, name) for first, name in self._stages if first >= step]
    stage_end = later[0][0] if later else self.total_steps
    eta = f'ETA {format_duration(max(stage_end - step, 0) / self.rate)}'
    if later:
      current = self._stage_of(step - 1)
      name = self._stages[current][1] if current >= 0 else 'this stage'
      bounds = [first for first, _ in later] + [self.total_steps]
      rest = ', '.join(f'{end - first} {n} steps'
                       for (first, n), end in zip(later, bounds[1:]))
      eta = f'{name} {eta}, then {rest}'
    return f'{head} {self.rate:.1f} steps/s, {eta}'
