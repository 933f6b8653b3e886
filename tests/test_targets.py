"""benchmarks.targets: each stage's figures judged against its target, in a table and a file.

The suite stage runs a real pytest on a few tests of its own; compare's lines are
compare.format_line's; the main job's figures are read from the shrunk main job's workdir in
test_auxiliary.py (beside the other tests of one_command_run, which share its xdist group).
"""

import io
import json
import os
import re
import subprocess
import sys

import jax
import pytest

from benchmarks import compare
from benchmarks import targets
from srgan_jax import conv_tuning
from srgan_jax import models
from srgan_jax import native
from srgan_jax import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = '''
import pytest

def test_one():
  assert 1 + 1 == 2

def test_two():
  assert 'a' < 'b'

@pytest.mark.skip(reason='counted as skipped')
def test_skipped():
  pass
'''
FAILING = '''
def test_failing():
  assert 1 + 1 == 3
'''


def _suite_args(path):
  """pytest on `path` alone: none of the repository's options (workers, durations)."""
  return [str(path), '-p', 'no:cacheprovider', '-o', 'addopts=', '-q']


def test_suite_stage_counts_the_tests_and_times_them(tmp_path):
  tests = tmp_path / 'tiny_tests.py'
  tests.write_text(TESTS)
  out = io.StringIO()
  result = targets.run(targets.Options(workdir=str(tmp_path / 'w'), stages=('suite',),
                                       suite_args=_suite_args(tests), pause_s=0), out)
  suite = result['figures']['suite']
  assert (suite['passed'], suite['skipped'], suite.get('failed')) == (2, 1, None), suite
  assert 0 < suite['seconds'] <= suite['wall'] < targets.SUITE_S
  [row] = result['rows']
  assert row['met'] is True and '2 passed, 1 skipped' in row['figure'], row
  assert targets.exit_status(result) == 0
  with open(tmp_path / 'w' / 'targets.json') as f:
    assert json.load(f)['rows'] == result['rows']
  with open(tmp_path / 'w' / 'suite.log') as f:
    assert '2 passed, 1 skipped' in f.read()
  text = out.getvalue()
  assert f'CPU: {compare.cpu_model()}' in text and '| suite < 5 min, no failure |' in text


def test_command_line_reports_a_failing_test_as_a_target_not_met(tmp_path):
  tests = tmp_path / 'failing_tests.py'
  tests.write_text(TESTS + FAILING)
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.targets', '--stages=suite', '--pause_s=0',
       f'--workdir={workdir}', '--suite_args=' + ' '.join(_suite_args(tests))],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert '1 failed, 2 passed, 1 skipped' in proc.stdout and '| **no** |' in proc.stdout
  assert re.search(r'^targets: suite: [.sF]{4} +\[100%\]$', proc.stdout, re.M)  # Progress.
  with open(workdir / 'targets.json') as f:
    assert json.load(f)['figures']['suite']['failed'] == 1


def test_a_stage_that_does_not_run_is_reported(tmp_path):
  tests = tmp_path / 'tiny_tests.py'
  tests.write_text(TESTS)
  result = targets.run(targets.Options(
      workdir=str(tmp_path / 'w'), stages=('suite',), pause_s=0,
      suite_args=_suite_args(tests) + ['--no-such-option']), io.StringIO())  # A usage error.
  assert 'suite' not in result['figures'] and targets.exit_status(result) == 2
  [row] = result['rows']
  assert row['met'] is False and 'exit status 4' in row['figure'] and 'suite.log' in row['figure']


def test_progress_shows_the_training_line_and_its_eta():
  """A stage's progress echoes main.py's progress line (writers.Progress, logged by train as
  '<progress> | <metrics>' behind absl's prefix) without prefix or metrics."""
  clock = iter([0.0, 10.0]).__next__
  line = writers.Progress(2600, stages=((0, 'pretraining'), (2400, 'GAN')), clock=clock).update(50)
  assert 'ETA' in line
  logged = f'I1205 06:23:49.591943 1403 train.py:502] {line} | content=0.1522 stage=0\n'
  assert targets.progress(logged) == line == (
      'step 50/2600 (1.9%) 5.0 steps/s, pretraining ETA 7m50s, then 200 GAN steps')
  assert targets.progress(compare.format_line('cnn', 3.0, 2.0, 'x')).startswith('compare: cnn')
  assert targets.progress('info: cpu: Some CPU\n') is None


def test_the_workdir_must_be_new_or_empty_and_the_stages_known(tmp_path):
  (tmp_path / 'old.txt').write_text('a previous run')
  with pytest.raises(targets.TargetsError, match='not empty'):
    targets.run(targets.Options(workdir=str(tmp_path), stages=('suite',)), io.StringIO())
  with pytest.raises(targets.TargetsError, match='unknown'):
    targets.run(targets.Options(workdir=str(tmp_path / 'new'), stages=('tests',)), io.StringIO())
  assert os.listdir(tmp_path) == ['old.txt']  # Nothing ran, nothing was written.


def test_ratios_are_met_only_when_every_run_is():
  def runs(*pairs):  # Each run's output as compare prints it, parsed back.
    return [compare.parse_lines(compare.format_line('gan', jax_rate, torch_rate, 'images/s'))
            for jax_rate, torch_rate in pairs]
  [row] = targets.judge({'compare': runs((130.0, 100.0), (125.0, 100.0))})
  assert row['met'] is True and '1.30x' in row['figure'] and '1.25x' in row['figure']
  [row] = targets.judge({'compare': runs((130.0, 100.0), (115.0, 100.0))})
  assert row['met'] is False
  [row] = targets.judge({'compare': runs((130.0, None))})
  assert row['met'] is None and 'pip install torch' in row['figure']


def test_a_stage_reports_its_own_peak_memory(tmp_path):
  """run_stage's peak resident memory is the command's, not the caller's. From a small caller:
  Linux counts the spawning process's resident set in the child's peak until the child runs
  its command, and a pytest worker is larger than the command here."""
  caller = (
      'import sys\n'
      'from benchmarks import targets\n'
      f'stage = targets.run_stage("alloc", [sys.executable, "-c", "x = b\'1\' * (600 << 20)"], '
      f'{str(tmp_path)!r}, sys.stderr)\n'
      'rss = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS:")][0]\n'
      'print(stage.returncode, stage.peak_rss_mib, int(rss) / 1024)\n')
  proc = subprocess.run([sys.executable, '-c', caller], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  returncode, peak, caller_rss = proc.stdout.split()
  assert int(returncode) == 0 and float(caller_rss) < 600 <= float(peak) < 1000, proc.stdout


HELD_TO_AVX2 = """
import os

def test_held_to_avx2():
  assert os.environ['ATEN_CPU_CAPABILITY'] == 'avx2'
  assert os.environ['ONEDNN_MAX_CPU_ISA'] == os.environ['MKL_ENABLE_INSTRUCTIONS'] == 'AVX2'
  assert os.environ['SRGAN_JAX_NATIVE_MARCH'] == 'haswell'
  assert '--xla_cpu_max_isa=AVX2' in os.environ['XLA_FLAGS']
"""


def test_isa_avx2_is_refused_on_a_cpu_without_avx512(monkeypatch, tmp_path):
  monkeypatch.setattr(native, 'cpuinfo', lambda: {'flags': 'sse4_2 avx avx2 fma'})
  with pytest.raises(targets.TargetsError, match='no AVX-512: run without --isa'):
    targets.run(targets.Options(workdir=str(tmp_path / 'w'), stages=('suite',), isa='avx2'),
                io.StringIO())
  assert not os.path.exists(tmp_path / 'w')  # Refused before anything ran or was written.


@pytest.mark.skipif('avx512f' not in native.cpuinfo().get('flags', '').split(),
                    reason='an AVX2 CPU is not held to AVX2: it is one')
def test_isa_avx2_holds_every_stage_to_avx2_and_says_so(tmp_path):
  tests = tmp_path / 'held_tests.py'
  tests.write_text(HELD_TO_AVX2)
  options = targets.Options(workdir=str(tmp_path / 'w'), stages=('suite',), pause_s=0,
                            suite_args=_suite_args(tests), isa='avx2')
  out = io.StringIO()
  result = targets.run(options, out)
  assert result['figures']['suite']['passed'] == 1, result['figures']
  assert 'held to AVX2' in result['header'] and 'held to AVX2' in out.getvalue()
  with pytest.raises(targets.TargetsError, match='use one of native, avx2'):
    targets.run(targets.Options(workdir=str(tmp_path / 'x'), stages=('suite',), isa='sse'),
                io.StringIO())


def test_a_march_for_the_cxx_passes_builds_them_apart_from_the_native_build(monkeypatch, tmp_path):
  """SRGAN_JAX_NATIVE_MARCH (what --isa=avx2 sets) replaces -march=native in the compiler's
  command and in the build's cache key, so the two builds never stand in for each other."""
  flags = ('-O3', '-march=native')
  monkeypatch.delenv(native.MARCH_ENV, raising=False)  # Whatever the suite runs under.
  native_path = native.module_path('adam_update.cc', 'adam', flags)
  commands = []

  def compile_(command, **kwargs):
    del kwargs
    commands.append(command)
    return subprocess.CompletedProcess(command, 1, '', 'not compiled in this test')

  monkeypatch.setattr(native.subprocess, 'run', compile_)
  monkeypatch.setenv(native.MARCH_ENV, 'haswell')
  assert native.compile_flags(flags) == ('-O3', '-march=haswell')
  assert native.module_path('adam_update.cc', 'adam', flags) != native_path
  with pytest.raises(RuntimeError, match='not compiled in this test'):
    native._compile('adam_update.cc', 'adam', flags,  # pylint: disable=protected-access
                    str(tmp_path / 'adam.so'))
  assert '-march=haswell' in commands[0] and '-march=native' not in commands[0]
  assert os.listdir(tmp_path) == []  # The failed build left nothing behind.


def test_tuning_seconds_are_read_from_the_tuners_own_log_lines(tmp_path):
  """The main job's tuning figure comes from the line conv_tuning.tune logs (with and without
  phases timed again at the end), summed over the tunings of one log."""
  lines = []
  net = conv_tuning.Network('generator', models.Generator(scale=2, num_res_blocks=1, features=4),
                            (2, 5, 5, 1))
  conv_tuning.tune([net], jax.local_devices()[:1], cpu='Test CPU', directory=str(tmp_path),
                   measure=lambda jobs: {job: 0.001 for job in jobs}, log=lines.append)
  timed = [line for line in lines if ' timed in ' in line]
  assert len(timed) == 1 and re.search(r' timed in [\d.]+ s \(', timed[0]), lines
  with_retimes = re.sub(r' timed in [\d.]+ s', ' timed in 1.5 s', timed[0])
  without_retimes = re.sub(r' s \(.*', ' s.', with_retimes.replace('1.5', '2.25'))
  log = '\n'.join(['I1205 conv_tuning.py:475] ' + with_retimes, 'other line',
                   'I1205 conv_tuning.py:475] ' + without_retimes])
  assert targets.tuning_seconds(log) == pytest.approx(3.75)
  assert targets.tuning_seconds('no tuning here') is None
