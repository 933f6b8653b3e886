"""Running the study: the shared classifiers, then every arm x seed, resumably, then the reports."""

from __future__ import annotations

import os
import shlex
import time
from typing import Callable, Optional, Sequence

from absl import logging
import jax

from experiments.study import arms as arms_lib
from experiments.study import report
from experiments.study.arms import StudyError
from srgan_jax import classifier_train
from srgan_jax import files
from srgan_jax import train
from srgan_jax import validation


class StudyInterrupted(RuntimeError):
  """A run was stopped by SIGTERM / Ctrl-C; its checkpoint was saved."""


def prepare_classifiers(scale, workdir, arms, steps_scale, override_fn):
  """Trains (when missing) the scale's shared guide (when an arm needs it) and judge."""
  config = arms_lib.classifier_config(scale, workdir, steps_scale, override_fn)
  roles = [('judge', config.eval.judge_workdir)]
  if any(validation.needs_guide(arms_lib.build_config(a, scale, 0, workdir, steps_scale,
                                                      override_fn))
         for a in arms):
    roles.insert(0, ('guide', config.loss.classifier_workdir))
  for role, path in roles:
    classifier_train.load_or_train(config, path, role)


def check_run_info(path: str, fields: dict) -> float:
  """The training seconds recorded in a run's RUN_INFO (0 when new); a run made under another
  budget / setting is an error, not a silent mix of results."""
  info = files.read_json(os.path.join(path, arms_lib.RUN_INFO))
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


def _write_run_info(path: str, fields: dict, seconds: float):
  files.write_json(os.path.join(path, arms_lib.RUN_INFO),
                   {'fields': fields, 'train_seconds': seconds}, sort_keys=True)


def run_one(config, path: str) -> dict:
  """Trains (or resumes, or skips when finished) one run; returns its final summary."""
  fields = arms_lib.run_fields(config)
  seconds = check_run_info(path, fields)
  results = files.read_json(os.path.join(path, 'results.json'))
  if results is not None:
    logging.info('Study: %s is finished (results.json); skipping it.', path)
    return results
  _write_run_info(path, fields, seconds)
  t0 = time.time()
  summary = train.train_and_evaluate(config, path)
  seconds += time.time() - t0
  _write_run_info(path, fields, seconds)
  if 'interrupted_at_step' in summary:
    raise StudyInterrupted(f'{path} was stopped at step {summary["interrupted_at_step"]}; its '
                           f'checkpoint is saved. Run the same command again to go on.')
  return files.read_json(os.path.join(path, 'results.json')) or summary


def study_command(workdir, scales, seeds, arms, steps_scale, publish_dir) -> str:
  """The command line that runs this study, for the reports."""
  parts = ['python', '-m', 'experiments.study', f'--workdir={workdir}',
           f'--scales={",".join(map(str, scales))}', f'--seeds={",".join(map(str, seeds))}',
           f'--steps_scale={steps_scale:g}', f'--arms={",".join(arms)}',
           f'--publish_dir={publish_dir}']
  return ' '.join(shlex.quote(p) for p in parts)


def run_study(workdir: str, scales: Sequence[int] = arms_lib.DEFAULT_SCALES,
              seeds: Sequence[int] = arms_lib.DEFAULT_SEEDS,
              arms: Optional[Sequence[str]] = None, steps_scale: float = 1.0,
              publish_dir: Optional[str] = report.DEFAULT_PUBLISH_DIR,
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
    scale -> the report of that scale (see `report.report_scale`).
  """
  scales = [int(s) for s in scales]
  seeds = [int(s) for s in seeds]
  arms = arms_lib.parse_arms(arms)
  for scale in scales:
    arms_lib.budget_for(scale, steps_scale)
  command = command or study_command(workdir, scales, seeds, arms, steps_scale,
                                     publish_dir or report.DEFAULT_PUBLISH_DIR)
  if override_fn is not None:
    command += '  # with config overrides (override_fn)'
  reports = {}
  for scale in scales:
    if not report_only:
      prepare_classifiers(scale, workdir, arms, steps_scale, override_fn)
      total = len(seeds) * len(arms)
      for i, (seed, arm) in enumerate((s, a) for s in seeds for a in arms):
        path = arms_lib.run_dir(workdir, scale, arm, seed)
        logging.info('Study x%d: run %d/%d: %s seed %d in %s', scale, i + 1, total, arm, seed,
                     path)
        run_one(arms_lib.build_config(arm, scale, seed, workdir, steps_scale, override_fn),
                path)
        # Each run compiles its own steps; drop them, or a long study exhausts the memory
        # XLA:CPU maps for compiled code (seen: "LLVM compilation error: Cannot allocate
        # memory" and a crash after ~24 runs). The persistent cache still serves seed 2.
        jax.clear_caches()
    reports[scale] = report.report_scale(workdir, scale, seeds, arms, steps_scale, publish_dir,
                                         override_fn, command)
  return reports
