"""The CPU speed targets of this machine in one command: the side-by-side ratios with PyTorch,
the main job's time and quality floor, the conv tuning's time and the test suite's time.

  python -m benchmarks.targets [--workdir=DIR] [--stages=compare,main,suite] [--isa=avx2]

Runs, each in a subprocess from the repository root, its output kept under DIR (a new or
empty folder; default a new one under the system's temp folder):
1. `python -m benchmarks.compare --runs=5`, twice with one fresh tuning cache (the first run
   tunes the convs, the second reuses the decisions);
2. the main job, `python main.py --config=configs/mnist_cnn.py --workdir=DIR/main`, with an
   empty tuning cache, as a user's first run, timed;
3. the test suite, `python -m pytest`, last: a benchmark right after the suite would time a
   machine still busy. A pause (--pause_s) goes before each stage after the first.
Then prints one table, each target with its figure and whether it is met, under the CPU it ran
on, and writes it to DIR/targets.json. Exit status: 0 when every measured target is met, 1
when one is not, 2 when a stage failed to run (its log says why).

`--isa=avx2` runs every stage held to AVX2 on a CPU with AVX-512: XLA's code, PyTorch's kernels
(ATen, oneDNN, MKL) and the C++ passes (built -march=haswell). A stand-in for an AVX2-only CPU
of the same cores, not a measurement of one: fair where the two widths reach the same matmul
peak (an AMD EPYC of Zen 4 runs 512-bit vectors on 256-bit units), not where AVX-512's units
are twice as wide (the Intel Xeon's).
"""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, TextIO

from absl import app
from absl import flags

from benchmarks import compare
from srgan_jax import native
from srgan_jax import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('compare', 'main', 'suite')

# The targets (the CPU speed issue): each side-by-side ratio, the main job's wall time (set for
# the AVX2 AMD EPYC class, the slowest seen), its quality floor, and the suite's time.
RATIO = 1.2
MAIN_JOB_S = 15 * 60
JUDGE_FLOOR = 0.98
PSNR_OVER_BICUBIC_DB = 7.0
TUNING_S = 10.0
SUITE_S = 5 * 60

TUNING_LINE = re.compile(r'Conv tuning: (\d+) candidates of (\d+) conv phases timed in '
                         r'([\d.]+) s\b')
PYTEST_COUNTS = re.compile(r'(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)\b')
PYTEST_SECONDS = re.compile(r' in ([\d.]+)s\b')


# What --isa=avx2 sets in each stage's environment (XLA_FLAGS gets XLA_AVX2_FLAG too).
AVX2_ENV = {**compare.TORCH_AVX2_ENV, native.MARCH_ENV: 'haswell'}
XLA_AVX2_FLAG = f'{platform.XLA_MAX_ISA_FLAG}=AVX2'
ISAS = ('native', 'avx2')


class TargetsError(ValueError):
  """A setting of this command that cannot work; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Options:
  workdir: str = ''
  stages: Sequence[str] = STAGES
  compare_runs: int = 2
  compare_args: Sequence[str] = ('--runs=5',)
  main_args: Sequence[str] = ()
  suite_args: Sequence[str] = ()
  pause_s: float = 30.0
  isa: str = 'native'


@dataclasses.dataclass
class Stage:
  """What one subprocess did: its command, exit status, wall seconds, log file and peak
  resident memory (MiB; None where the OS does not report a child's)."""
  name: str
  command: List[str]
  returncode: int
  seconds: float
  log: str
  peak_rss_mib: Optional[float] = None

  def output(self) -> str:
    with open(self.log) as f:
      return f.read()


def cpu_description() -> str:
  """The CPU's model name, family and model, and its widest vector instructions: what tells the
  machine classes apart (the Intel Xeon and AMD EPYC guests differ by these)."""
  fields = native.cpuinfo()
  flags_ = set(fields.get('flags', '').split())
  isa = ('AVX-512' + (' + AMX' if 'amx_tile' in flags_ else '') if 'avx512f' in flags_ else
         'AVX2' if 'avx2' in flags_ else 'no AVX2')
  family = (f', cpu family {fields["cpu family"]} model {fields["model"]}'
            if 'cpu family' in fields and 'model' in fields else '')
  return f'{compare.cpu_model()}{family}, {isa}, {os.cpu_count()} cores'


def isa_env(isa: str) -> Dict[str, str]:
  """The environment every stage gets for `isa` ('native': nothing; 'avx2': AVX2_ENV and XLA
  held to AVX2 beside this process's XLA_FLAGS)."""
  if isa not in ISAS:
    raise TargetsError(f'--isa={isa}: use one of {", ".join(ISAS)}.')
  if isa == 'native':
    return {}
  if 'avx512f' not in native.cpuinfo().get('flags', '').split():
    raise TargetsError('--isa=avx2 holds a CPU with AVX-512 to AVX2; this one has no AVX-512: '
                       'run without --isa (its own figures are the real ones).')
  return {**AVX2_ENV,
          'XLA_FLAGS': ' '.join(filter(None, (os.environ.get('XLA_FLAGS', ''), XLA_AVX2_FLAG)))}


def tree_revision() -> str:
  """The repository's commit (with '+changes' if the tree differs from it), or ''."""
  try:
    rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ''
  return rev + (' +changes' if dirty else '')


def progress(line: str) -> Optional[str]:
  """What of a stage's output line to echo while it runs: a training progress line (with its
  ETA) without its log prefix and metrics, pytest's progress, compare's results; else None."""
  line = line.rstrip()
  if line.startswith(compare.PREFIX):
    return line
  if ' ETA ' in line:
    return line.split('] ', 1)[-1].split(' | ')[0]
  if line.endswith('%]'):
    return line
  return None


def run_stage(name: str, command: List[str], workdir: str, out: TextIO,
              env: Optional[Dict[str, str]] = None, every_s: float = 30.0) -> Stage:
  """Runs `command` from the repository root, stdout and stderr into workdir/<name>.log,
  echoing its progress (progress(); the first at once, then at most every `every_s` seconds)
  and its results."""
  log = os.path.join(workdir, f'{name}.log')
  out.write(f'targets: {name}: {shlex.join(command)}  (log: {log})\n')
  out.flush()
  start = time.perf_counter()
  last = start - every_s
  with open(log, 'w') as f:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, text=True)
    for line in proc.stdout:
      f.write(line)
      shown = progress(line)
      now = time.perf_counter()
      if shown and (shown.startswith(compare.PREFIX) or now - last >= every_s):
        out.write(f'targets: {name}: {shown}\n')
        out.flush()
        last = now
    peak_rss_mib = None
    if hasattr(os, 'wait4'):  # The child's own resource usage (Linux: ru_maxrss in KiB).
      _, status, usage = os.wait4(proc.pid, 0)
      proc.returncode = os.waitstatus_to_exitcode(status)
      peak_rss_mib = usage.ru_maxrss / 1024
    returncode = proc.wait()
  seconds = time.perf_counter() - start
  out.write(f'targets: {name}: exit status {returncode} after {_minutes(seconds)}\n')
  out.flush()
  return Stage(name, command, returncode, seconds, log, peak_rss_mib)


def tuning_seconds(log_text: str) -> Optional[float]:
  """The seconds the conv tuner spent timing candidates (all its tunings in one log); None
  when it timed nothing (every decision came from the cache)."""
  seconds = [float(m.group(3)) for m in TUNING_LINE.finditer(log_text)]
  return sum(seconds) if seconds else None


def main_job_figures(workdir: str, log_text: str, seconds: float) -> dict:
  """The main job's wall seconds, final SR figures (its results.json) and tuning seconds."""
  path = os.path.join(workdir, 'results.json')
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    raise TargetsError(f'the main job left no readable {path} ({e}); see its log.') from e
  return {'seconds': seconds, 'tuning_seconds': tuning_seconds(log_text),
          **{k: results[k] for k in ('judge_accuracy_sr', 'psnr_sr', 'ssim_sr', 'psnr_bicubic',
                                     'fid_sr')}}


def pytest_summary(text: str) -> dict:
  """{'passed': n, 'failed': n, ..., 'seconds': s} from pytest's last summary line."""
  lines = [l for l in text.splitlines() if PYTEST_SECONDS.search(l) and PYTEST_COUNTS.search(l)]
  if not lines:
    return {}
  counts = {'errors' if kind == 'error' else kind: int(n)
            for n, kind in PYTEST_COUNTS.findall(lines[-1])}
  return {**counts, 'seconds': float(PYTEST_SECONDS.search(lines[-1]).group(1))}


def _minutes(seconds: float) -> str:
  minutes, seconds = divmod(round(seconds), 60)
  return f'{minutes} min {seconds:02d} s'


def _row(target: str, figure: str, met: Optional[bool]) -> dict:
  return {'target': target, 'figure': figure, 'met': met}


def judge(figures: dict) -> List[dict]:
  """One row per target of what `figures` measured: the target, the figure, and met (True,
  False, or None where it could not be judged)."""
  rows = []
  runs = figures.get('compare', [])
  for step in compare.STEPS:
    measured = [run[step] for run in runs if step in run]
    if not measured:
      continue
    ratios = [m['ratio'] for m in measured]
    text = ', '.join(f'{m["jax"]:.4g} / {m["torch"]:.4g} images/s = {m["ratio"]:.2f}x'
                     if m['ratio'] is not None else f'{m["jax"]:.4g} images/s' for m in measured)
    if any(r is None for r in ratios):
      rows.append(_row(f'{step} step >= {RATIO}x PyTorch',
                       f'{text} (no PyTorch side: pip install torch==2.13.0)', None))
    else:
      rows.append(_row(f'{step} step >= {RATIO}x PyTorch (every run)', text,
                       min(ratios) >= RATIO))
  main = figures.get('main')
  if main:
    rows.append(_row(f'main job <= {MAIN_JOB_S // 60} min (the AVX2 AMD class\'s target)',
                     _minutes(main['seconds']) + (
                         f', peak RSS {main["peak_rss_mib"] / 1024:.1f} GiB'
                         if main.get('peak_rss_mib') else ''),
                     main['seconds'] <= MAIN_JOB_S))
    rows.append(_row(f'judge on SR >= {JUDGE_FLOOR:.0%}', f'{main["judge_accuracy_sr"]:.2%}',
                     main['judge_accuracy_sr'] >= JUDGE_FLOOR))
    floor = main['psnr_bicubic'] + PSNR_OVER_BICUBIC_DB
    rows.append(_row(f'PSNR >= bicubic + {PSNR_OVER_BICUBIC_DB:g} dB',
                     f'{main["psnr_sr"]:.2f} dB (bicubic {main["psnr_bicubic"]:.2f})',
                     main['psnr_sr'] >= floor))
    tuning = main['tuning_seconds']
    rows.append(_row(f'conv tuning < {TUNING_S:g} s',
                     'nothing timed (all cached)' if tuning is None else f'{tuning:.1f} s',
                     tuning is None or tuning < TUNING_S))
  suite = figures.get('suite')
  if suite:
    counts = ', '.join(f'{n} {k}' for k, n in suite.items() if k not in ('seconds', 'wall'))
    rows.append(_row(f'suite < {SUITE_S // 60} min, no failure',
                     f'{_minutes(suite["wall"])} ({counts})',
                     suite['wall'] < SUITE_S and not suite.get('failed') and
                     not suite.get('errors')))
  for name, why in figures.get('failed', {}).items():
    rows.append(_row(f'{name} ran', why, False))
  return rows


def table(rows: List[dict], header: str) -> str:
  """The rows as a Markdown table under `header`."""
  mark = {True: 'yes', False: '**no**', None: 'n/a'}
  lines = [header, '', '| target | figure | met |', '|---|---|---|']
  lines += [f'| {r["target"]} | {r["figure"]} | {mark[r["met"]]} |' for r in rows]
  return '\n'.join(lines) + '\n'


def prepare_workdir(workdir: str) -> str:
  """A new or empty folder for the stages' logs, caches and the main job's workdir."""
  if not workdir:
    return tempfile.mkdtemp(prefix='srgan_targets_')
  if os.path.isdir(workdir) and os.listdir(workdir):
    raise TargetsError(f'--workdir={workdir} is not empty: the main job must start from a '
                       'fresh workdir and the tunings from empty caches; give a new folder.')
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise TargetsError(f'--workdir={workdir} cannot be written ({e}); give a writable '
                       'folder.') from e
  return workdir


def run(options: Options, out: TextIO = sys.stdout) -> dict:
  """Runs the stages of options.stages; prints and returns {'rows', 'figures', ...}."""
  unknown = set(options.stages) - set(STAGES)
  if unknown:
    raise TargetsError(f'--stages={",".join(options.stages)}: unknown {sorted(unknown)}; use some '
                       f'of {",".join(STAGES)}.')
  held = isa_env(options.isa)
  workdir = prepare_workdir(options.workdir)
  header = (f'CPU: {cpu_description()}'
            f'{" held to AVX2 (XLA, PyTorch, the C++ passes): a stand-in" if held else ""}; '
            f'tree {tree_revision() or "unknown"}; '
            f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}')
  out.write(f'targets: {header}; logs in {workdir}\n')
  figures = {'compare': [], 'failed': {}}
  first = True

  def stage(name, command, env=None):
    nonlocal first
    if not first:
      time.sleep(options.pause_s)
    first = False
    return run_stage(name, command, workdir, out, {**held, **(env or {})})

  def failed(done):
    figures['failed'][done.name] = f'exit status {done.returncode}: see {done.log}'

  if 'compare' in options.stages:
    cache = {native.CACHE_ENV: os.path.join(workdir, 'compare_cache')}
    for i in range(options.compare_runs):
      done = stage(f'compare{i + 1}', [sys.executable, '-m', 'benchmarks.compare',
                                       *options.compare_args], cache)
      if done.returncode:
        failed(done)
      else:
        figures['compare'].append(compare.parse_lines(done.output()))
  if 'main' in options.stages:
    main_dir = os.path.join(workdir, 'main')
    done = stage('main', [sys.executable, 'main.py', '--config=configs/mnist_cnn.py',
                          f'--workdir={main_dir}', *options.main_args],
                 {native.CACHE_ENV: os.path.join(workdir, 'main_cache')})
    if done.returncode:
      failed(done)
    else:
      try:
        figures['main'] = {**main_job_figures(main_dir, done.output(), done.seconds),
                           'peak_rss_mib': done.peak_rss_mib}
      except TargetsError as e:
        figures['failed']['main'] = str(e)
  if 'suite' in options.stages:
    done = stage('suite', [sys.executable, '-m', 'pytest', *options.suite_args])
    summary = pytest_summary(done.output())
    if summary:  # Failed tests are a figure (the target is not met), not a failed stage.
      figures['suite'] = {**summary, 'wall': done.seconds}
    else:
      failed(done)
  rows = judge(figures)
  text = table(rows, header)
  out.write('\n' + text)
  result = {'header': header, 'rows': rows, 'figures': figures, 'workdir': workdir}
  with open(os.path.join(workdir, 'targets.json'), 'w') as f:
    json.dump(result, f, indent=2)
  return result


def exit_status(result: dict) -> int:
  """0: every measured target met; 1: one is not; 2: a stage failed to run."""
  if result['figures']['failed']:
    return 2
  return 1 if any(r['met'] is False for r in result['rows']) else 0


FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs as a command: modules that a test process
  imports beside this one (main.py, srgan_jax.upscale) define a --workdir of their own."""
  flags.DEFINE_string('workdir', '', 'A new or empty folder for the logs, caches, the main '
                      'job\'s workdir and targets.json; default: a new temp folder.')
  flags.DEFINE_list('stages', list(STAGES), f'Stages to run: some of {", ".join(STAGES)}.')
  flags.DEFINE_integer('compare_runs', Options.compare_runs, 'Runs of benchmarks.compare, one '
                       'tuning cache.')
  flags.DEFINE_string('compare_args', shlex.join(Options.compare_args),
                      'Arguments of benchmarks.compare.')
  flags.DEFINE_string('main_args', '', 'More arguments of main.py (e.g. --config.seed=1).')
  flags.DEFINE_string('suite_args', '', 'Arguments of pytest.')
  flags.DEFINE_float('pause_s', Options.pause_s, 'Seconds of quiet before each stage after '
                     'the first.')
  flags.DEFINE_enum('isa', Options.isa, ISAS, "'avx2': every stage held to AVX2 (XLA, PyTorch, "
                    'the C++ passes), a stand-in for an AVX2-only CPU on an AVX-512 one.')


def main(argv):
  del argv
  try:
    result = run(Options(workdir=FLAGS.workdir, stages=tuple(FLAGS.stages),
                         compare_runs=FLAGS.compare_runs,
                         compare_args=shlex.split(FLAGS.compare_args),
                         main_args=shlex.split(FLAGS.main_args),
                         suite_args=shlex.split(FLAGS.suite_args), pause_s=FLAGS.pause_s,
                         isa=FLAGS.isa))
  except TargetsError as e:
    sys.exit(f'{type(e).__name__}: {e}')
  sys.exit(exit_status(result))


if __name__ == '__main__':
  platform.freeze_imported_objects()
  define_flags()
  app.run(main)
