"""The study's reports: finished runs collected and summarised into Markdown and CSV tables.

Per scale, `report_scale` writes ``study_x<s>.md`` / ``.csv``, ``runs_x<s>.csv``,
``curves_x<s>.csv`` and the figures of `plots` into the workdir, and copies them to the
publish directory.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import shutil
from typing import Optional

from absl import logging
import jax
import numpy as np

from experiments.study import arms as arms_lib
from experiments.study import plots
from srgan_jax import checkpoints
from srgan_jax import config_utils
from srgan_jax import files
from srgan_jax import writers
from srgan_jax.errors import CheckpointError

JUDGE_THRESHOLDS = (0.90, 0.95)
DEFAULT_PUBLISH_DIR = 'results'
METRICS = (  # (summary key of SR, column title, format, multiplier)
    ('psnr', 'PSNR (dB)', '{:.2f}', 1.0),
    ('ssim', 'SSIM', '{:.4f}', 1.0),
    ('judge_accuracy', 'judge accuracy (%)', '{:.2f}', 100.0),
    ('fid', 'digit-FID', '{:.2f}', 1.0),
)


def classifier_accuracy(path) -> Optional[float]:
  """The test accuracy saved with the classifier in `path`; None when it has no checkpoint."""
  try:
    return checkpoints.read_config(path)[2].get('test_accuracy')
  except CheckpointError:
    return None


def first_step_reaching(curve: dict, threshold: float) -> Optional[int]:
  """The first eval step (of step -> value) whose value is >= threshold; None if none."""
  for step in sorted(curve):
    value = curve[step]
    if value is not None and value >= threshold:
      return step
  return None


def eval_curve(path: str, name: str) -> dict:
  """step -> value of 'eval/<name>' in a run's metrics.jsonl (the last record of a step)."""
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


def collect(workdir, scale, seeds, arms) -> dict:
  """arm -> {seed: {'summary', 'judge', 'psnr', 'path'}} of the finished runs."""
  out = {}
  for arm in arms:
    for seed in seeds:
      path = arms_lib.run_dir(workdir, scale, arm, seed)
      summary = files.read_json(os.path.join(path, 'results.json'))
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


def _csv_text(header, lines) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(header)
  writer.writerows(lines)
  return buf.getvalue()


def results_csv(rows, refs) -> str:
  header = ['arm', 'seeds']
  for key, *_ in METRICS:
    header += [f'{key}_mean', f'{key}_std']
  for t in JUDGE_THRESHOLDS:
    header += [f'steps_to_judge_{t:g}_mean', f'seeds_reaching_judge_{t:g}']
  lines = []
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
    lines.append(line)
  return _csv_text(header, lines)


def runs_csv(runs) -> str:
  keys = ('step', 'psnr_sr', 'ssim_sr', 'judge_accuracy_sr', 'fid_sr', 'psnr_bicubic',
          'ssim_bicubic', 'judge_accuracy_bicubic', 'fid_bicubic', 'judge_accuracy_hr')
  header = (['arm', 'seed', *keys] + [f'steps_to_judge_{t:g}' for t in JUDGE_THRESHOLDS] +
            ['train_seconds'])
  lines = []
  for arm, by_seed in runs.items():
    for seed, r in sorted(by_seed.items()):
      info = files.read_json(os.path.join(r['path'], arms_lib.RUN_INFO)) or {}
      steps = [first_step_reaching(r['judge'], t) for t in JUDGE_THRESHOLDS]
      lines.append([arm, seed] + [_num(r['summary'].get(k)) for k in keys] +
                   ['not reached' if s is None else s for s in steps] +
                   [_num(info.get('train_seconds'))])
  return _csv_text(header, lines)


def curves_csv(curves) -> str:
  lines = []
  for arm, c in curves.items():
    for step in sorted(set(c['judge']) | set(c['psnr'])):
      lines.append([arm, step, _num(c['judge'].get(step)), _num(c['psnr'].get(step))])
  return _csv_text(['arm', 'step', 'judge_accuracy_sr', 'psnr_sr'], lines)


def _as_run(config, runs):
  """`config` with the budget and data the finished runs were made with (from RUN_INFO), so
  that a report (e.g. --report_only) describes the runs, whatever the flags now say."""
  infos = []
  for arm, by_seed in runs.items():
    for r in by_seed.values():
      info = files.read_json(os.path.join(r['path'], arms_lib.RUN_INFO))
      if info and 'fields' in info:
        infos.append((arms_lib.ARMS[arm].content_only, info['fields']))
  if not infos:
    return config
  content_only, fields = sorted(infos, key=lambda x: x[0])[0]  # A GAN arm when there is one.
  config = copy.deepcopy(config)
  for key, value in fields.items():
    if key.startswith('loss.') or key == 'seed':
      continue
    if content_only and key in ('pretrain_steps', 'num_train_steps'):
      continue
    config_utils.set_field(config, key, value)
  return config


def report_scale(workdir, scale, seeds, arms, steps_scale=1.0, publish_dir=DEFAULT_PUBLISH_DIR,
                 override_fn=None, command: Optional[str] = None) -> dict:
  """Writes the tables, curves and grid of one scale from its finished runs.

  Returns {'files': {name: path in workdir}, 'rows', 'refs', 'curves', 'missing': [(arm, seed)]}.
  """
  arms = arms_lib.parse_arms(arms)
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
  written = {}

  def path_of(key, ext):
    p = os.path.join(workdir, f'{key}_x{scale}.{ext}')
    written[f'{key}.{ext}'] = p
    return p

  files.atomic_write(path_of('study', 'csv'), results_csv(rows, refs))
  files.atomic_write(path_of('runs', 'csv'), runs_csv(runs))
  files.atomic_write(path_of('curves', 'csv'), curves_csv(curves))
  base = _as_run(arms_lib.build_config('srgan', scale, 0, workdir, steps_scale, override_fn),
                 runs)
  gan_start = base.pretrain_steps if base.num_train_steps else None
  ref = {r['arm']: r for r in refs}
  plots.plot_curves(curves, 'judge', path_of('judge_accuracy', 'png'),
                    f'x{scale}: judge accuracy of SR test digits (mean over seeds)',
                    'judge accuracy (%)', [('HR', ref['HR']['judge_accuracy'][0]),
                                           ('bicubic', ref['bicubic']['judge_accuracy'][0])],
                    gan_start, 100.0)
  plots.plot_curves(curves, 'psnr', path_of('psnr', 'png'),
                    f'x{scale}: PSNR of SR test digits (mean over seeds)', 'PSNR (dB)',
                    [('bicubic', ref['bicubic']['psnr'][0])], gan_start)
  grid_dirs = {arm: runs[arm][min(runs[arm])]['path'] for arm in arms if arm in runs}
  grid_seed = sorted({min(runs[arm]) for arm in grid_dirs})
  names_, rows_ = plots.sample_rows(base, grid_dirs)
  plots.plot_grid(
      names_, rows_, path_of('samples', 'png'),
      f'x{scale}: first test digit of each class (SR: seed {", ".join(map(str, grid_seed))})')
  classifiers = {role: classifier_accuracy(p) for role, p in
                 (('guide', base.loss.classifier_workdir), ('judge', base.eval.judge_workdir))}
  md = study_markdown(scale, rows, refs, missing, base, classifiers, command, arms)
  files.atomic_write(path_of('study', 'md'), md)
  out['files'] = written
  if publish_dir:
    os.makedirs(publish_dir, exist_ok=True)
    out['published'] = {}
    for key, p in written.items():
      dest = os.path.join(publish_dir, os.path.basename(p))
      shutil.copyfile(p, dest)
      out['published'][key] = dest
  return out


def study_markdown(scale, rows, refs, missing, config, classifiers, command, arms) -> str:
  """The report of one scale: the command, the protocol, the tables, figures and arms."""
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
    spec = arms_lib.ARMS[arm]
    lines.append(f'| {arm} | `{spec.source}` | {spec.description} |')
  lines += ['', f'Files: `study_x{scale}.csv` (this table), `runs_x{scale}.csv` (every run), '
            f'`curves_x{scale}.csv` (the curves).', '']
  return '\n'.join(lines)
