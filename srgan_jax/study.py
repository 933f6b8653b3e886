"""The study: every loss arm x seed x scale, one table, curves and a sample grid per scale.

  python -m srgan_jax.study --workdir=runs/study [--scales=4,2] [--seeds=0,1] \
      [--steps_scale=1.0] [--arms=srresnet,srgan,...] [--publish_dir=results]

Arms (``ARMS``) are configs from ``configs/`` that differ only in their losses; at one scale
they get the same step budget (``BUDGETS``, times ``--steps_scale``), the same data, and share
ONE guide classifier (``<workdir>/x<scale>/classifier``) and ONE judge (``.../judge``), trained
once, before the arms, on the whole MNIST training split. Scale 4 is configs/mnist_srgan's
setting (1 channel, 7x7 -> 28x28); scale 2 is the seed's exact x2 setting (configs/seed_x2_rgb:
3 channels, 20000 training images, batch 128), applied to every arm the same way.

Each run lives in ``<workdir>/x<scale>/<arm>/seed<k>/`` and is an ordinary
``train.train_and_evaluate`` workdir. The study is resumable: a run whose ``results.json``
exists is not run again, and a run with a checkpoint but no ``results.json`` resumes from its
checkpoint. The final numbers of every run use the same ``EVAL_EXAMPLES`` test images, and
every curve point before the last the first ``CURVE_EXAMPLES`` of them. Compiled steps are
cached in ``<workdir>/jax_cache``, so a second seed of an arm compiles nothing.

Written to ``<workdir>/`` and copied to ``--publish_dir`` (small files for the README), per
scale: ``study_x<s>.md`` (the tables, the command, the figures), ``study_x<s>.csv`` (mean and
std over seeds per arm, with steps to 90% / 95% judge accuracy), ``runs_x<s>.csv`` (one row per
run), ``curves_x<s>.csv`` (mean eval curves), ``judge_accuracy_x<s>.png``, ``psnr_x<s>.png``
and ``samples_x<s>.png`` (the first test digit of each class, through every arm).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import shlex
import shutil
import time
from typing import Callable, Optional, Sequence

from absl import logging
import numpy as np

from configs import mnist_acgan
from configs import mnist_cnn
from configs import mnist_perceptual
from configs import mnist_srgan
from configs import seed_x2_rgb

# ---------------------------------------------------------------------------------------------
# What the study runs. Change the budget here (or scale it with --steps_scale).


@dataclasses.dataclass(frozen=True)
class Budget:
  """Steps of one run: content-only pretraining, then the GAN stage; an eval every N steps."""
  pretrain_steps: int
  num_train_steps: int
  eval_every_steps: int

  @property
  def total_steps(self) -> int:
    return self.pretrain_steps + self.num_train_steps

  def scaled(self, factor: float) -> 'Budget':
    if not factor > 0:
      raise ValueError(f'steps_scale must be > 0; got {factor}.')
    return Budget(max(0, round(self.pretrain_steps * factor)),
                  max(1, round(self.num_train_steps * factor)),
                  max(1, round(self.eval_every_steps * factor)))


# Per scale: the same budget for every arm (the 'srresnet' arm spends all of it on the content
# loss). Sized for about 90 minutes on 2 CPU cores for both scales, 7 arms and two seeds
# (x4: ~3.5 pretrain and ~1.5 GAN steps/s; see the README's Results for the measured time).
# Scale it with --steps_scale.
BUDGETS = {
    4: Budget(pretrain_steps=400, num_train_steps=100, eval_every_steps=100),
    2: Budget(pretrain_steps=120, num_train_steps=30, eval_every_steps=30),
}
DEFAULT_SCALES = (4, 2)
DEFAULT_SEEDS = (0, 1)
# Test images of the final numbers (all 10k) and of each curve point before the last (the
# first 2000: a curve point costs a fifth of a full evaluation).
EVAL_EXAMPLES = 10000
CURVE_EXAMPLES = 2000
# Training images of the shared guide classifier and judge (0: all 60k, minus their
# validation hold-out), at every scale: the judge does not depend on an arm's data.
CLASSIFIER_TRAIN_EXAMPLES = 0
# Guide and judge are trained from the seed-0 config of the scale (judge seed: 1000).
CLASSIFIER_SEED = 0
# Epochs of the guide (the judge's are config.eval.judge_epochs): 2, ~99.2% (results/ used 2).
CLASSIFIER_EPOCHS = 2
JUDGE_THRESHOLDS = (0.90, 0.95)
CHECKPOINTS_PER_RUN = 5
DEFAULT_PUBLISH_DIR = 'results'

# The setting of each scale: a configs/ module whose differences from configs/mnist_srgan are
# applied to every arm (for x4 there are none).
SCALE_SETTINGS = {4: mnist_srgan, 2: seed_x2_rgb}


def _srresnet():
  return mnist_srgan.get_config()  # Content loss only: the budget makes it pretrain-only.


def _srgan():
  return mnist_srgan.get_config()


def _cnn(weight, labels='true'):
  def build():
    config = mnist_cnn.get_config()
    config.loss.auxiliary_weight = weight
    config.loss.auxiliary_labels = labels
    return config
  return build


@dataclasses.dataclass(frozen=True)
class Arm:
  build: Callable[[], object]   # -> ConfigDict, before the scale setting and the budget.
  source: str                   # where the config comes from, for the report.
  description: str
  content_only: bool = False    # no GAN stage: the whole budget is content-loss steps.


ARMS = {
    'srresnet': Arm(_srresnet, 'mnist_srgan, pretraining only',
                    'MSE content loss only, no adversary (SRResNet)', content_only=True),
    'srgan': Arm(_srgan, 'mnist_srgan', 'MSE + LSGAN 1e-3 (the seed\'s SRGAN)'),
    'cnn_0.001': Arm(_cnn(0.001), 'mnist_cnn, auxiliary_weight=0.001',
                     'SRGAN + guide-CNN cross-entropy on true labels, weight 0.001'),
    'cnn_0.1': Arm(_cnn(0.1), 'mnist_cnn',
                   'SRGAN + guide-CNN cross-entropy on true labels, weight 0.1'),
    'cnn_pseudo': Arm(_cnn(0.1, 'pseudo'), 'mnist_cnn, auxiliary_labels=pseudo',
                      'SRGAN + guide-CNN cross-entropy on its own HR predictions, weight 0.1'),
    'acgan': Arm(mnist_acgan.get_config, 'mnist_acgan',
                 'SRGAN with an AC-GAN class head on the discriminator, weight 0.1'),
    'perceptual': Arm(mnist_perceptual.get_config, 'mnist_perceptual',
                      'guide-CNN feature maps (conv2, conv3) as content loss + its '
                      'cross-entropy 0.1'),
}

# Fields a run must keep for its checkpoint / results to count in the study.
RUN_FIELDS = ('seed', 'data.scale', 'data.channels', 'data.train_examples', 'data.eval_examples',
              'batch_size', 'pretrain_steps', 'num_train_steps', 'eval_every_steps',
              'loss.content', 'loss.adversarial', 'loss.adversarial_weight', 'loss.auxiliary',
              'loss.auxiliary_weight', 'loss.auxiliary_labels')
RUN_INFO = 'study_run.json'


class StudyError(ValueError):
  """A study that cannot go on as asked (e.g. a workdir made with another budget)."""


class StudyInterrupted(RuntimeError):
  """A run was stopped by SIGTERM / Ctrl-C; its checkpoint was saved."""


# ---------------------------------------------------------------------------------------------
# Configs.


def _get(d: dict, dotted: str):
  for key in dotted.split('.'):
    d = d[key]
  return d


def _set(config, dotted: str, value):
  *path, last = dotted.split('.')
  target = config
  for part in path:
    target = target[part]
  target[last] = value


def _diff(base: dict, other: dict, prefix: str = '') -> dict:
  """dotted key -> value in `other` where it differs from `base` (dicts with other keys whole)."""
  out = {}
  for key in other:
    a, b = base.get(key), other[key]
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
      out.update(_diff(a, b, f'{prefix}{key}.'))
    elif a != b:
      out[f'{prefix}{key}'] = b
  return out


def scale_setting(scale: int) -> dict:
  """What the scale's configs/ module changes relative to configs/mnist_srgan."""
  if scale not in SCALE_SETTINGS:
    raise StudyError(f'scale {scale} is not one of {sorted(SCALE_SETTINGS)}.')
  return _diff(mnist_srgan.get_config().to_dict(), SCALE_SETTINGS[scale].get_config().to_dict())


def scale_dir(workdir: str, scale: int) -> str:
  return os.path.join(os.path.abspath(workdir), f'x{scale}')


def run_dir(workdir: str, scale: int, arm: str, seed: int) -> str:
  return os.path.join(scale_dir(workdir, scale), arm, f'seed{seed}')


def budget_for(scale: int, steps_scale: float = 1.0) -> Budget:
  if scale not in BUDGETS:
    raise StudyError(f'scale {scale} has no budget; BUDGETS has {sorted(BUDGETS)}.')
  return BUDGETS[scale].scaled(steps_scale)


def build_config(arm: str, scale: int, seed: int, workdir: str, steps_scale: float = 1.0,
                 override_fn: Optional[Callable] = None):
  """The config of one run: the arm's config, the scale's setting, the budget, shared nets."""
  if arm not in ARMS:
    raise StudyError(f'Unknown arm {arm!r}; arms: {", ".join(ARMS)}.')
  spec = ARMS[arm]
  config = spec.build()
  reference = mnist_srgan.get_config().to_dict()
  current = config.to_dict()
  for key, value in scale_setting(scale).items():
    if _get(current, key) != _get(reference, key):
      raise StudyError(f'Arm {arm!r} sets {key} itself, which the x{scale} setting also '
                       f'changes; the arm cannot be run at x{scale} unchanged.')
    _set(config, key, value)
  budget = budget_for(scale, steps_scale)
  if spec.content_only:
    config.pretrain_steps, config.num_train_steps = budget.total_steps, 0
  else:
    config.pretrain_steps, config.num_train_steps = budget.pretrain_steps, budget.num_train_steps
  config.eval_every_steps = budget.eval_every_steps
  # The study's protocol: the guide's loss acts from the first step, as in the seed (the main
  # job's configs/mnist_cnn keeps it for the GAN stage).
  config.loss.auxiliary_during_pretrain = config.loss.auxiliary == 'classifier'
  # A checkpoint at every k-th evaluation, about CHECKPOINTS_PER_RUN per run.
  evals = max(1, budget.total_steps // budget.eval_every_steps)
  config.checkpoint_every_steps = budget.eval_every_steps * max(
      1, round(evals / CHECKPOINTS_PER_RUN))
  config.log_every_steps = max(1, min(config.log_every_steps, budget.eval_every_steps))
  config.seed = seed
  config.data.eval_examples = EVAL_EXAMPLES
  config.eval.curve_examples = CURVE_EXAMPLES
  config.loss.classifier_workdir = os.path.join(scale_dir(workdir, scale), 'classifier')
  config.eval.judge_workdir = os.path.join(scale_dir(workdir, scale), 'judge')
  if override_fn is not None:
    config = override_fn(config) or config
  return config


def classifier_config(scale: int, workdir: str, steps_scale: float = 1.0,
                      override_fn: Optional[Callable] = None):
  """The config the shared guide and judge of a scale are trained from (channels of the scale)."""
  config = build_config('srgan', scale, CLASSIFIER_SEED, workdir, steps_scale)
  config.data.train_examples = CLASSIFIER_TRAIN_EXAMPLES
  # The main job's (configs/mnist_cnn) classifier recipe, with the guide's epochs of the
  # published study (the main job trains its guide for fewer to fit its time budget).
  config.classifier = mnist_cnn.get_config().classifier
  config.classifier.num_epochs = CLASSIFIER_EPOCHS
  if override_fn is not None:
    config = override_fn(config) or config
  return config


def _run_fields(config) -> dict:
  d = config.to_dict()
  return {k: _get(d, k) for k in RUN_FIELDS}


# ---------------------------------------------------------------------------------------------
# Running.


def _needs_guide(config) -> bool:
  return config.loss.auxiliary == 'classifier' or config.loss.content == 'classifier'


def prepare_classifiers(scale, workdir, arms, steps_scale, override_fn) -> dict:
  """Trains (when missing) the scale's shared guide and judge; returns their test accuracies."""
  from srgan_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from srgan_jax import classifier_train  # pylint: disable=g-import-not-at-top
  config = classifier_config(scale, workdir, steps_scale, override_fn)
  roles = [('judge', config.eval.judge_workdir)]
  if any(_needs_guide(build_config(a, scale, 0, workdir, steps_scale, override_fn))
         for a in arms):
    roles.insert(0, ('guide', config.loss.classifier_workdir))
  out = {}
  for role, path in roles:
    if not checkpoints.has_checkpoint(path):
      logging.info('Study x%d: training the shared %s classifier in %s.', scale, role, path)
      classifier_train.train_and_evaluate(classifier_train.role_config(config, role), path)
    out[role] = _classifier_accuracy(path)
  return out


def _classifier_accuracy(path) -> Optional[float]:
  from srgan_jax import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    return checkpoints.read_config(path)[2].get('test_accuracy')
  except checkpoints.CheckpointError:
    return None


def _read_json(path) -> Optional[dict]:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _write_json(path, data):
  _write(path, json.dumps(data, indent=2, sort_keys=True) + '\n')


def _check_run_info(path: str, fields: dict):
  """A run made under another budget / setting is an error, not a silent mix of results."""
  info = _read_json(os.path.join(path, RUN_INFO))
  if info is None:
    return 0.0
  saved = info.get('fields', {})
  diffs = [f'{k}: the run has {saved.get(k)!r}, the study asks for {v!r}'
           for k, v in fields.items() if saved.get(k) != v]
  if diffs:
    raise StudyError(
        f'{path} was trained with other settings:\n  ' + '\n  '.join(diffs) +
        '\nUse another --workdir for another budget (--steps_scale) or setting, or delete '
        'that run directory to redo it.')
  return float(info.get('train_seconds', 0.0))


def run_one(config, path: str) -> dict:
  """Trains (or resumes, or skips when finished) one run; returns its final summary."""
  from srgan_jax import train  # pylint: disable=g-import-not-at-top
  fields = _run_fields(config)
  seconds = _check_run_info(path, fields)
  results = _read_json(os.path.join(path, 'results.json'))
  if results is not None:
    logging.info('Study: %s is finished (results.json); skipping it.', path)
    return results
  os.makedirs(path, exist_ok=True)
  _write_json(os.path.join(path, RUN_INFO), {'fields': fields, 'train_seconds': seconds})
  t0 = time.time()
  summary = train.train_and_evaluate(config, path)
  seconds += time.time() - t0
  _write_json(os.path.join(path, RUN_INFO), {'fields': fields, 'train_seconds': seconds})
  if 'interrupted_at_step' in summary:
    raise StudyInterrupted(f'{path} was stopped at step {summary["interrupted_at_step"]}; its '
                           f'checkpoint is saved. Run the same command again to go on.')
  return _read_json(os.path.join(path, 'results.json')) or summary


def _parse_arms(arms) -> list:
  arms = list(ARMS) if not arms else list(arms)
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise StudyError(f'Unknown arm(s) {unknown}; arms: {", ".join(ARMS)}.')
  return arms


def study_command(workdir, scales, seeds, arms, steps_scale, publish_dir) -> str:
  parts = ['python', '-m', 'srgan_jax.study', f'--workdir={workdir}',
           f'--scales={",".join(map(str, scales))}', f'--seeds={",".join(map(str, seeds))}',
           f'--steps_scale={steps_scale:g}', f'--arms={",".join(arms)}',
           f'--publish_dir={publish_dir}']
  return ' '.join(shlex.quote(p) for p in parts)


def run_study(workdir: str, scales: Sequence[int] = DEFAULT_SCALES,
              seeds: Sequence[int] = DEFAULT_SEEDS, arms: Optional[Sequence[str]] = None,
              steps_scale: float = 1.0, publish_dir: Optional[str] = DEFAULT_PUBLISH_DIR,
              override_fn: Optional[Callable] = None, report_only: bool = False,
              command: Optional[str] = None) -> dict:
  """Runs (or resumes) every arm x seed x scale, then writes the reports of each scale.

  Args:
    workdir: the study's directory (runs under x<scale>/<arm>/seed<k>/, reports at the top).
    scales, seeds, arms: what to run (arms: names of ARMS; None: all, in ARMS order).
    steps_scale: multiplies every step count of BUDGETS.
    publish_dir: where the reports (CSV, Markdown, PNG) are copied; None: nowhere.
    override_fn: config -> config (or None, editing in place), applied last to every run's
      config and to the classifiers' (e.g. to shrink everything for tests).
    report_only: train nothing; report the runs that are finished.
    command: the command line shown in the reports (default: the equivalent CLI command).

  Returns:
    scale -> the report of that scale (see `report_scale`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  scales = [int(s) for s in scales]
  seeds = [int(s) for s in seeds]
  arms = _parse_arms(arms)
  for scale in scales:
    budget_for(scale, steps_scale)
  command = command or study_command(workdir, scales, seeds, arms, steps_scale,
                                     publish_dir or DEFAULT_PUBLISH_DIR)
  if override_fn is not None:
    command += '  # with config overrides (override_fn)'
  reports = {}
  for scale in scales:
    if not report_only:
      prepare_classifiers(scale, workdir, arms, steps_scale, override_fn)
      total = len(seeds) * len(arms)
      for i, (seed, arm) in enumerate((s, a) for s in seeds for a in arms):
        path = run_dir(workdir, scale, arm, seed)
        logging.info('Study x%d: run %d/%d: %s seed %d in %s', scale, i + 1, total, arm, seed,
                     path)
        run_one(build_config(arm, scale, seed, workdir, steps_scale, override_fn), path)
        # Each run compiles its own steps; drop them, or a long study exhausts the memory
        # XLA:CPU maps for compiled code (seen: "LLVM compilation error: Cannot allocate
        # memory" and a crash after ~24 runs). The persistent cache still serves seed 2.
        jax.clear_caches()
    reports[scale] = report_scale(workdir, scale, seeds, arms, steps_scale, publish_dir,
                                  override_fn, command)
  return reports


# ---------------------------------------------------------------------------------------------
# Reports.


def first_step_reaching(curve: dict, threshold: float) -> Optional[int]:
  """The first eval step (of step -> value) whose value is >= threshold; None if none."""
  for step in sorted(curve):
    value = curve[step]
    if value is not None and value >= threshold:
      return step
  return None


def eval_curve(path: str, name: str) -> dict:
  """step -> value of 'eval/<name>' in a run's metrics.jsonl (the last record of a step)."""
  from srgan_jax import writers  # pylint: disable=g-import-not-at-top
  out = {}
  for record in writers.read_metrics(path):
    key = f'eval/{name}'
    if key in record and 'step' in record:
      out[int(record['step'])] = record[key]
  return out


def _mean_std(values) -> tuple:
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not values:
    return None, None
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std


def _fmt(mean, std, fmt: str, scale: float = 1.0) -> str:
  if mean is None:
    return '—'
  text = fmt.format(mean * scale)
  if std is not None:
    text += ' ± ' + fmt.format(std * scale)
  return text


METRICS = (  # (summary key of SR, column title, format, multiplier)
    ('psnr', 'PSNR (dB)', '{:.2f}', 1.0),
    ('ssim', 'SSIM', '{:.4f}', 1.0),
    ('judge_accuracy', 'judge accuracy (%)', '{:.2f}', 100.0),
    ('fid', 'digit-FID', '{:.2f}', 1.0),
)


def collect(workdir, scale, seeds, arms) -> dict:
  """arm -> {seed: {'summary', 'judge', 'psnr', 'path'}} of the finished runs."""
  out = {}
  for arm in arms:
    for seed in seeds:
      path = run_dir(workdir, scale, arm, seed)
      summary = _read_json(os.path.join(path, 'results.json'))
      if summary is None:
        continue
      out.setdefault(arm, {})[seed] = {
          'summary': summary, 'path': path,
          'judge': eval_curve(path, 'judge_accuracy_sr'), 'psnr': eval_curve(path, 'psnr_sr')}
  return out


def _mean_curve(curves) -> dict:
  steps = sorted({s for c in curves for s in c})
  out = {}
  for step in steps:
    values = [c[step] for c in curves if c.get(step) is not None]
    if values:
      out[step] = float(np.mean(values))
  return out


def summarise(runs: dict) -> tuple:
  """(rows of the results table, reference rows HR / bicubic, mean curves per arm)."""
  rows, curves = [], {}
  all_summaries = []
  for arm, by_seed in runs.items():
    summaries = [r['summary'] for r in by_seed.values()]
    all_summaries += summaries
    row = {'arm': arm, 'seeds': sorted(by_seed), 'n': len(summaries)}
    for key, *_ in METRICS:
      row[key] = _mean_std(s.get(f'{key}_sr') for s in summaries)
    row['final_step'] = max(int(s.get('step', 0)) for s in summaries)
    for t in JUDGE_THRESHOLDS:
      reached = [first_step_reaching(r['judge'], t) for r in by_seed.values()]
      hits = [s for s in reached if s is not None]
      row[f'steps_to_{t:g}'] = (float(np.mean(hits)) if hits else None, len(hits))
    rows.append(row)
    curves[arm] = {'judge': _mean_curve([r['judge'] for r in by_seed.values()]),
                   'psnr': _mean_curve([r['psnr'] for r in by_seed.values()])}
  refs = []
  if all_summaries:
    hr_acc = _mean_std(s.get('judge_accuracy_hr') for s in all_summaries)[0]
    refs.append({'arm': 'HR', 'psnr': (math.inf, None), 'ssim': (1.0, None),
                 'judge_accuracy': (hr_acc, None), 'fid': (0.0, None)})
    refs.append({'arm': 'bicubic', **{
        key: (_mean_std(s.get(f'{key}_bicubic') for s in all_summaries)[0], None)
        for key, *_ in METRICS}})
  return rows, refs, curves


def _threshold_cell(value, n) -> str:
  mean, hits = value
  if not hits:
    return 'not reached'
  text = f'{mean:.0f}'
  return text if hits == n else f'{text} ({hits}/{n} seeds)'


def results_markdown(rows, refs) -> str:
  lines = ['| images | ' + ' | '.join(t for _, t, _, _ in METRICS) + ' | seeds |',
           '|---' * (len(METRICS) + 2) + '|']
  for row in refs + rows:
    cells = []
    for key, _, fmt, mult in METRICS:
      mean, std = row[key]
      cells.append('inf' if mean == math.inf else _fmt(mean, std, fmt, mult))
    name = row['arm'] if row['arm'] in ('HR', 'bicubic') else f'SR: {row["arm"]}'
    n = str(row['n']) if 'n' in row else '—'
    lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {n} |')
  return '\n'.join(lines)


def steps_markdown(rows) -> str:
  lines = ['| arm | ' + ' | '.join(f'steps to {t:.0%}' for t in JUDGE_THRESHOLDS) +
           ' | final judge accuracy (%) | steps run |',
           '|---' * (len(JUDGE_THRESHOLDS) + 3) + '|']
  for row in rows:
    cells = [_threshold_cell(row[f'steps_to_{t:g}'], row['n']) for t in JUDGE_THRESHOLDS]
    acc = _fmt(*row['judge_accuracy'], '{:.2f}', 100.0)
    lines.append(f'| {row["arm"]} | ' + ' | '.join(cells) + f' | {acc} | {row["final_step"]} |')
  return '\n'.join(lines)


def _num(x) -> str:
  if x is None:
    return ''
  if isinstance(x, float) and math.isinf(x):
    return 'inf'
  return f'{x:.6g}' if isinstance(x, float) else str(x)


def results_csv(rows, refs) -> str:
  header = ['arm', 'seeds']
  for key, *_ in METRICS:
    header += [f'{key}_mean', f'{key}_std']
  for t in JUDGE_THRESHOLDS:
    header += [f'steps_to_judge_{t:g}_mean', f'seeds_reaching_judge_{t:g}']
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(header)
  for row in refs + rows:
    line = [row['arm'], row.get('n', '')]
    for key, *_ in METRICS:
      line += [_num(v) for v in row[key]]
    for t in JUDGE_THRESHOLDS:
      if f'steps_to_{t:g}' in row:
        mean, hits = row[f'steps_to_{t:g}']
        line += ['not reached' if not hits else _num(mean), hits]
      else:
        line += ['', '']
    writer.writerow(line)
  return buf.getvalue()


def runs_csv(runs) -> str:
  keys = ('step', 'psnr_sr', 'ssim_sr', 'judge_accuracy_sr', 'fid_sr', 'psnr_bicubic',
          'ssim_bicubic', 'judge_accuracy_bicubic', 'fid_bicubic', 'judge_accuracy_hr')
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['arm', 'seed', *keys] +
                  [f'steps_to_judge_{t:g}' for t in JUDGE_THRESHOLDS] + ['train_seconds'])
  for arm, by_seed in runs.items():
    for seed, r in sorted(by_seed.items()):
      info = _read_json(os.path.join(r['path'], RUN_INFO)) or {}
      steps = [first_step_reaching(r['judge'], t) for t in JUDGE_THRESHOLDS]
      writer.writerow([arm, seed] + [_num(r['summary'].get(k)) for k in keys] +
                      ['not reached' if s is None else s for s in steps] +
                      [_num(info.get('train_seconds'))])
  return buf.getvalue()


def curves_csv(curves) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['arm', 'step', 'judge_accuracy_sr', 'psnr_sr'])
  for arm, c in curves.items():
    for step in sorted(set(c['judge']) | set(c['psnr'])):
      writer.writerow([arm, step, _num(c['judge'].get(step)), _num(c['psnr'].get(step))])
  return buf.getvalue()


def plot_curves(curves, key: str, path: str, title: str, ylabel: str, refs=(),
                gan_start: Optional[int] = None, multiplier: float = 1.0):
  """One line per arm (mean over seeds) of eval/<key> against the step; PNG at `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
  for arm, c in curves.items():
    steps = sorted(c[key])
    if steps:
      ax.plot(steps, [c[key][s] * multiplier for s in steps], marker='o', markersize=3,
              label=arm)
  styles = (('black', '--'), ('grey', ':'))
  for (name, value), (color, style) in zip(refs, styles):
    if value is not None and math.isfinite(value):
      ax.axhline(value * multiplier, color=color, linestyle=style, linewidth=1, label=name)
  if gan_start:
    ax.axvline(gan_start, color='grey', linewidth=0.8, alpha=0.6)
    ax.annotate(' GAN stage', (gan_start, 0.02), xycoords=('data', 'axes fraction'),
                color='grey', fontsize=8)
  ax.set_xlabel('training step')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='best')
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)


def _save_figure(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp.png'
  fig.savefig(tmp)
  os.replace(tmp, path)


def grid_digits(labels: np.ndarray) -> list:
  """Index of the first test image of each class 0..9 (classes absent are skipped)."""
  out = []
  for c in range(10):
    hits = np.flatnonzero(labels == c)
    if hits.size:
      out.append(int(hits[0]))
  return out


def sample_rows(config, arm_dirs: dict) -> tuple:
  """(row names, rows of images) for the grid: LR, HR, bicubic, then each arm's SR."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from srgan_jax import inference  # pylint: disable=g-import-not-at-top
  from srgan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  test = input_pipeline.load_split(config, 'test')
  idx = np.asarray(grid_digits(test.labels))
  lr, hr = test.lr[idx], test.hr[idx]
  bicubic = input_pipeline.upsample_bicubic(input_pipeline.to_model_range(lr), config.data.scale)
  bicubic = np.asarray(jnp.clip(input_pipeline.to_unit_range(bicubic), 0.0, 1.0))
  names, rows = ['LR input', 'HR', 'bicubic'], [list(lr), list(hr), list(bicubic)]
  for arm, path in arm_dirs.items():
    sr = inference.load_generator(path).upscale(lr)
    names.append(arm)
    rows.append(list(sr))
  return names, rows


def plot_grid(names, rows, path: str, title: str):
  """The rows of digits as one image, each row labelled with its name."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from srgan_jax import images as images_lib  # pylint: disable=g-import-not-at-top
  pad, cell = 2, 28
  grid = images_lib.make_grid(rows, pad=pad, zoom=1, upscale_to=cell)
  h, w = grid.shape[:2]
  zoom, dpi = 3, 100
  label_w = 1.4
  fig = plt.figure(figsize=(w * zoom / dpi + label_w, h * zoom / dpi + 0.4), dpi=dpi)
  ax = fig.add_axes([label_w / (w * zoom / dpi + label_w), 0, 1 - label_w /
                     (w * zoom / dpi + label_w), (h * zoom / dpi) / (h * zoom / dpi + 0.4)])
  ax.imshow(grid, interpolation='nearest')
  ax.set_yticks([pad + r * (cell + pad) + cell / 2 for r in range(len(names))])
  ax.set_yticklabels(names, fontsize=9)
  ax.set_xticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)
  ax.tick_params(length=0)
  fig.suptitle(title, fontsize=10, y=0.985, va='top')
  _save_figure(fig, path)
  plt.close(fig)


def _as_run(config, runs):
  """`config` with the budget and data the finished runs were made with (from RUN_INFO), so
  that a report (e.g. --report_only) describes the runs, whatever the flags now say."""
  infos = []
  for arm, by_seed in runs.items():
    for r in by_seed.values():
      info = _read_json(os.path.join(r['path'], RUN_INFO))
      if info and 'fields' in info:
        infos.append((ARMS[arm].content_only, info['fields']))
  if not infos:
    return config
  content_only, fields = sorted(infos, key=lambda x: x[0])[0]  # A GAN arm when there is one.
  config = copy.deepcopy(config)
  for key, value in fields.items():
    if key.startswith('loss.') or key == 'seed':
      continue
    if content_only and key in ('pretrain_steps', 'num_train_steps'):
      continue
    _set(config, key, value)
  return config


def _write(path, text):
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def report_scale(workdir, scale, seeds, arms, steps_scale=1.0, publish_dir=DEFAULT_PUBLISH_DIR,
                 override_fn=None, command: Optional[str] = None) -> dict:
  """Writes the tables, curves and grid of one scale from its finished runs.

  Returns {'files': {name: path in workdir}, 'rows', 'refs', 'curves', 'missing': [(arm, seed)]}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  arms = _parse_arms(arms)
  runs = collect(workdir, scale, seeds, arms)
  missing = [(a, s) for s in seeds for a in arms if s not in runs.get(a, {})]
  rows, refs, curves = summarise(runs)
  out = {'files': {}, 'rows': rows, 'refs': refs, 'curves': curves, 'missing': missing}
  if not runs:
    logging.warning('Study x%d: no finished run to report.', scale)
    return out
  if jax.process_index() != 0:
    return out
  workdir = os.path.abspath(workdir)
  files = {}

  def path_of(key, ext):
    p = os.path.join(workdir, f'{key}_x{scale}.{ext}')
    files[f'{key}.{ext}'] = p
    return p

  _write(path_of('study', 'csv'), results_csv(rows, refs))
  _write(path_of('runs', 'csv'), runs_csv(runs))
  _write(path_of('curves', 'csv'), curves_csv(curves))
  base = _as_run(build_config('srgan', scale, 0, workdir, steps_scale, override_fn), runs)
  gan_start = base.pretrain_steps if base.num_train_steps else None
  ref = {r['arm']: r for r in refs}
  plot_curves(curves, 'judge', path_of('judge_accuracy', 'png'),
              f'x{scale}: judge accuracy of SR test digits (mean over seeds)',
              'judge accuracy (%)', [('HR', ref['HR']['judge_accuracy'][0]),
                                     ('bicubic', ref['bicubic']['judge_accuracy'][0])],
              gan_start, 100.0)
  plot_curves(curves, 'psnr', path_of('psnr', 'png'),
              f'x{scale}: PSNR of SR test digits (mean over seeds)', 'PSNR (dB)',
              [('bicubic', ref['bicubic']['psnr'][0])], gan_start)
  grid_dirs = {arm: runs[arm][min(runs[arm])]['path'] for arm in arms if arm in runs}
  grid_seed = sorted({min(runs[arm]) for arm in grid_dirs})
  names_, rows_ = sample_rows(base, grid_dirs)
  plot_grid(names_, rows_, path_of('samples', 'png'),
            f'x{scale}: first test digit of each class (SR: seed {", ".join(map(str, grid_seed))})')
  classifiers = {role: _classifier_accuracy(p) for role, p in
                 (('guide', base.loss.classifier_workdir), ('judge', base.eval.judge_workdir))}
  md = study_markdown(scale, rows, refs, missing, base, classifiers, command, arms)
  _write(path_of('study', 'md'), md)
  out['files'] = files
  if publish_dir:
    os.makedirs(publish_dir, exist_ok=True)
    out['published'] = {}
    for key, p in files.items():
      dest = os.path.join(publish_dir, os.path.basename(p))
      shutil.copyfile(p, dest)
      out['published'][key] = dest
  return out


def study_markdown(scale, rows, refs, missing, config, classifiers, command, arms) -> str:
  hr = 28
  lr = hr // config.data.scale
  acc = lambda v: '—' if v is None else f'{v:.2%}'
  seeds_done = sorted({s for r in rows for s in r['seeds']})
  lines = [
      f'# Study at x{scale} ({lr}x{lr} -> {hr}x{hr}, {config.data.channels} channel'
      f'{"s" if config.data.channels > 1 else ""})', '',
      'Reproduce with:', '', '```bash', command or '', '```', '',
      f'Every arm: {config.pretrain_steps} content-loss steps, then {config.num_train_steps} GAN '
      f'steps (`srresnet`: all {config.pretrain_steps + config.num_train_steps} content-loss), '
      f'batch {config.batch_size}, '
      f'{"all 60000" if not config.data.train_examples else config.data.train_examples} '
      f'training images; an evaluation every {config.eval_every_steps} steps on the first '
      f'{config.eval.curve_examples or config.data.eval_examples or 10000} MNIST test images '
      f'(the curves, but their last point) and at the end on the first '
      f'{config.data.eval_examples or 10000} (the tables, the curves\' last point). '
      f'Seeds: {", ".join(map(str, seeds_done))} (mean ± sample std over seeds). '
      f'Shared by every arm: the guide CNN (test accuracy {acc(classifiers.get("guide"))}) and '
      f'the judge LeNet (test accuracy {acc(classifiers.get("judge"))}), which no loss sees.',
      '',
  ]
  if missing:
    lines += ['Not finished yet (not in the tables): ' +
              ', '.join(f'{a} seed {s}' for a, s in missing) + '.', '']
  lines += ['## Final evaluation', '', results_markdown(rows, refs), '',
            '## Steps to judge accuracy', '',
            'First evaluation step at which the judge recognises at least 90% / 95% of the SR '
            'digits (mean over the seeds that reach it; resolution: the eval interval, '
            f'{config.eval_every_steps} steps).', '', steps_markdown(rows), '',
            '## Curves', '', f'![judge accuracy](judge_accuracy_x{scale}.png)', '',
            f'![PSNR](psnr_x{scale}.png)', '',
            '## Samples', '', f'![samples](samples_x{scale}.png)', '',
            '## Arms', '', '| arm | config | what |', '|---|---|---|']
  for arm in arms:
    spec = ARMS[arm]
    lines.append(f'| {arm} | `{spec.source}` | {spec.description} |')
  lines += ['', f'Files: `study_x{scale}.csv` (this table), `runs_x{scale}.csv` (every run), '
            f'`curves_x{scale}.csv` (the curves).', '']
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.


def _ints(text: str) -> list:
  return [int(x) for x in text.split(',') if x.strip()]


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging.converter.STANDARD_WARNING or 'orbax' not in r.pathname)
  from srgan_jax import platform  # pylint: disable=g-import-not-at-top
  platform.configure_cpu_devices(True)
  from srgan_jax import errors  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.abspath(f.workdir),
                                                              'jax_cache'))
  arms = [a.strip() for a in f.arms.split(',') if a.strip()] if f.arms else None
  try:
    reports = run_study(f.workdir, _ints(f.scales), _ints(f.seeds), arms, f.steps_scale,
                        f.publish_dir or None, report_only=f.report_only)
  except (StudyError, StudyInterrupted) + errors.USER_ERRORS as e:
    logging.error('%s: %s', type(e).__name__, e)
    raise SystemExit(1) from None
  for scale, report in reports.items():
    for path in report.get('published', report['files']).values():
      print(path)


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'Directory of the study (runs and reports).')
  flags.DEFINE_string('scales', ','.join(map(str, DEFAULT_SCALES)), 'Comma-separated scales.')
  flags.DEFINE_string('seeds', ','.join(map(str, DEFAULT_SEEDS)), 'Comma-separated seeds.')
  flags.DEFINE_string('arms', ','.join(ARMS), f'Comma-separated arms of: {", ".join(ARMS)}.')
  flags.DEFINE_float('steps_scale', 1.0, 'Multiplies every step count of the budget.')
  flags.DEFINE_string('publish_dir', DEFAULT_PUBLISH_DIR,
                      'Where the reports (CSV, Markdown, PNG) are copied; "" for nowhere.')
  flags.DEFINE_bool('report_only', False, 'Train nothing; report the finished runs.')
  flags.mark_flags_as_required(['workdir'])


if __name__ == '__main__':
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  define_flags()
  _app.run(main)
