r"""The study's command line: runs (or resumes, or only reports) the study; prints its reports.

  python -m experiments.study --workdir=runs/study [--scales=4,2] [--seeds=0,1] \
      [--steps_scale=1.0] [--arms=srresnet,srgan,...] [--publish_dir=results] [--report_only]

What it runs and writes: the docstring of experiments/study/__init__.py.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax

from experiments.study import arms as arms_lib
from experiments.study import report
from experiments.study import runner
from srgan_jax import errors
from srgan_jax import platform


def _ints(text: str) -> list:
  return [int(x) for x in text.split(',') if x.strip()]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  platform.quiet_logs()
  platform.configure_cpu_devices(True)
  platform.configure_cpu_convolutions()
  platform.keep_freed_memory()
  jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.abspath(f.workdir),
                                                              'jax_cache'))
  arms = [a.strip() for a in f.arms.split(',') if a.strip()] if f.arms else None
  try:
    reports = runner.run_study(f.workdir, _ints(f.scales), _ints(f.seeds), arms, f.steps_scale,
                               f.publish_dir or None, report_only=f.report_only)
  except (arms_lib.StudyError, runner.StudyInterrupted) + errors.USER_ERRORS as e:
    logging.error('%s: %s', type(e).__name__, e)
    raise SystemExit(1) from None
  for scale_report in reports.values():
    for path in scale_report.get('published', scale_report['files']).values():
      print(path)


def define_flags():
  flags.DEFINE_string('workdir', None, 'Directory of the study (runs and reports).')
  flags.DEFINE_string('scales', ','.join(map(str, arms_lib.DEFAULT_SCALES)),
                      'Comma-separated scales.')
  flags.DEFINE_string('seeds', ','.join(map(str, arms_lib.DEFAULT_SEEDS)),
                      'Comma-separated seeds.')
  flags.DEFINE_string('arms', ','.join(arms_lib.ARMS),
                      f'Comma-separated arms of: {", ".join(arms_lib.ARMS)}.')
  flags.DEFINE_float('steps_scale', 1.0, 'Multiplies every step count of the budget.')
  flags.DEFINE_string('publish_dir', report.DEFAULT_PUBLISH_DIR,
                      'Where the reports (CSV, Markdown, PNG) are copied; "" for nowhere.')
  flags.DEFINE_bool('report_only', False, 'Train nothing; report the finished runs.')
  flags.mark_flags_as_required(['workdir'])


if __name__ == '__main__':
  platform.freeze_imported_objects()
  define_flags()
  app.run(main)
