"""The conv tuner: what it collects, what it picks, what it caches, and what it logs."""

import collections
import json
import os
import types

import jax
import numpy as np
import pytest

from srgan_jax import conv_tuning
from srgan_jax import convolution
from srgan_jax import errors
from srgan_jax import models
from srgan_jax import native
from srgan_jax import validation

GENERATOR = models.Generator(scale=2, num_res_blocks=1, features=4)


def _networks():
  return [conv_tuning.Network('generator', GENERATOR, (2, 5, 5, 1)),
          conv_tuning.Network('judge', models.LeNetJudge(), (3, 28, 28, 1), trained=False)]


class FakeTimer:
  """measure() for tune: 'gather' fastest for forward, 'xla_t' for the input gradient, 'xla'
  otherwise; remembers what it was asked to time."""

  SECONDS = {'forward': {'gather': 0.001}, 'input_grad': {'xla_t': 0.001}}

  def __init__(self):
    self.jobs = []

  def seconds(self, job):
    return self.SECONDS.get(job[1], {}).get(job[2], 0.002 if job[2] == 'xla' else 0.003)

  def __call__(self, jobs):
    self.jobs.extend(jobs)
    return {job: self.seconds(job) for job in jobs}


class RetimingTimer(FakeTimer):
  """FakeTimer with PhaseTimer's retime(), in whose calls XLA's forward conv is the fastest (a
  candidate slow in a tuning's first calls); times scaled by `scale`."""

  def __init__(self, scale=1.0):
    super().__init__()
    self.scale, self.retimed = scale, []

  def seconds(self, job):
    return self.scale * super().seconds(job)

  def retime(self, jobs):
    self.retimed.extend(jobs)
    return {job: self.scale * 0.0005 if job[1:] == ('forward', 'xla') else self.seconds(job)
            for job in jobs}


def _tune(tmp_path, timer, cpu='Test CPU', log=None):
  lines = []
  plan = conv_tuning.tune(_networks(), jax.local_devices()[:1], measure=timer, cpu=cpu,
                          directory=str(tmp_path), log=log or lines.append)
  return plan, lines


def test_conv_uses_are_collected_without_running_the_network():
  uses = conv_tuning.conv_uses(conv_tuning.Network('generator', GENERATOR, (2, 5, 5, 1)))
  sig = lambda *a: convolution.ConvSignature(2, *a, 'float32')
  assert list(uses) == [sig(5, 5, 1, 4, 9, 1), sig(5, 5, 4, 4, 3, 1), sig(5, 5, 4, 16, 3, 1),
                        sig(10, 10, 4, 1, 9, 1)]
  # The first conv reads the network's input, which needs no gradient.
  assert uses[sig(5, 5, 1, 4, 9, 1)] == (('forward', 'kernel_grad'), 1)
  # The residual block's two convs and the one after the blocks.
  assert uses[sig(5, 5, 4, 4, 3, 1)] == (convolution.CONV_PHASES, 3)
  frozen = conv_tuning.conv_uses(conv_tuning.Network('d', models.LeNetJudge(), (1, 28, 28, 1),
                                                     trained=False, input_grad=True))
  assert {use.phases for use in frozen.values()} == {('forward', 'input_grad')}


def test_tune_picks_the_fastest_and_the_plan_runs(tmp_path):
  timer = FakeTimer()
  plan, lines = _tune(tmp_path, timer)
  choices = dict(plan)
  first = convolution.ConvSignature(2, 5, 5, 1, 4, 9, 1, 'float32')
  assert choices[first] == convolution.ConvChoice('gather', 'xla', 'xla')
  block = convolution.ConvSignature(2, 5, 5, 4, 4, 3, 1, 'float32')
  assert choices[block] == convolution.ConvChoice('gather', 'xla_t', 'xla')
  # Every candidate of every phase needed was timed once, each within its workspace bounds.
  assert len(timer.jobs) == len(set(timer.jobs))
  assert (block, 'kernel_grad', 'gather') in timer.jobs
  # The judge runs forward only, so no gradient of its convs is timed.
  judge_sig = convolution.ConvSignature(3, 28, 28, 1, 32, 5, 1, 'float32')
  assert {p for s, p, _ in timer.jobs if s == judge_sig} == {'forward'}
  # A line before the timing (it takes seconds), one after, then one per network naming the
  # choices.
  assert lines[0].startswith('Conv tuning: timing the implementations of each conv')
  assert lines[0].endswith(f'cached in {tmp_path / conv_tuning.CACHE_FILE}).')
  assert lines[1].startswith('Conv tuning: ') and ' timed in ' in lines[1]
  assert lines[2].startswith('Convs tuned for the generator (measured): 9x9x1->4 @5x5 b2: '
                             'fwd gather, dw xla, 3x3x4->4 @5x5 b2: fwd gather, dx xla_t, dw xla')
  assert lines[3].startswith('Convs tuned for the judge (measured): 5x5x1->32 @28x28 b3: gather')
  # The networks run with the plan, with the same parameters as with 'auto'.
  lr = jax.numpy.zeros((2, 5, 5, 1))
  tuned = GENERATOR.clone(conv='tuned', conv_plan=plan)
  variables = GENERATOR.init(jax.random.PRNGKey(0), lr)
  assert jax.tree_util.tree_structure(tuned.init(jax.random.PRNGKey(0), lr)) == (
      jax.tree_util.tree_structure(variables))
  assert tuned.apply(variables, lr).shape == (2, 10, 10, 1)


def test_the_candidates_are_those_of_the_conv_library_xla_runs_on(tmp_path, monkeypatch):
  """'gather' on the LeNet's 32-feature conv is timed where XLA's convs run on YNNPACK, not on
  Eigen (convolution.phase_candidates)."""
  wide = convolution.ConvSignature(4, 14, 14, 32, 64, 5, 1, 'float32')
  gathers = {}
  for library in ('eigen', 'ynnpack'):
    monkeypatch.setattr(conv_tuning.process_setup, 'cpu_conv_library', lambda: library)
    timer = FakeTimer()
    conv_tuning.tune([conv_tuning.Network('judge', models.LeNetJudge(), (4, 28, 28, 1))],
                     jax.local_devices()[:1], measure=timer, cpu='Test CPU',
                     directory=str(tmp_path / library), log=lambda line: None)
    gathers[library] = {phase for sig, phase, impl in timer.jobs
                        if sig == wide and impl == 'gather'}
  assert gathers == {'eigen': set(), 'ynnpack': {'forward', 'kernel_grad'}}


def test_phases_where_the_reference_takes_next_to_nothing_are_not_tuned(tmp_path):
  """A phase's reference time (XLA's, or xla_t for a stride-1 input gradient) times its calls
  bounds what tuning it can save: only the phases that make up WORTH_TUNING of it get their
  other candidates compiled and timed; the others keep the reference."""
  big = convolution.ConvSignature(2, 10, 10, 4, 1, 9, 1, 'float32')
  reference = lambda sig, phase: convolution.phase_candidates(sig, phase)[0]

  def timer(jobs):
    return {job: (0.1 if job[0] == big else 0.0001) if job[2] == reference(*job[:2])
            else 0.00005 for job in jobs}
  timed = []
  plan = conv_tuning.tune(_networks()[:1], jax.local_devices()[:1],
                          measure=lambda jobs: timed.extend(jobs) or timer(jobs),
                          cpu='Test CPU', directory=str(tmp_path), log=lambda line: None)
  assert {sig for sig, phase, impl in timed if impl != reference(sig, phase)} == {big}
  # Its other candidates were faster.
  assert all(impl != reference(big, phase) for phase, impl in dict(plan)[big]._asdict().items())
  assert dict(plan)[convolution.ConvSignature(2, 5, 5, 4, 4, 3, 1, 'float32')] == (
      convolution.ConvChoice('xla', 'xla_t', 'xla'))


class _Clock:
  """conv_tuning's `time`: its seconds pass only as a fake measure says."""

  def __init__(self):
    self.now = 0.0

  def perf_counter(self):
    return self.now


def _budget_case(monkeypatch):
  """(the costliest conv, measure, the jobs it timed, a phase's reference) for the tiny
  generator: each job takes one fake second of conv_tuning's wall time; a reference call takes
  1 ms, 10 ms for the 9x9x4->1 conv's phases, and every other candidate 0.5 ms."""
  clock, timed = _Clock(), []
  monkeypatch.setattr(conv_tuning, 'time', clock)
  big = convolution.ConvSignature(2, 10, 10, 4, 1, 9, 1, 'float32')
  reference = lambda sig, phase: convolution.phase_candidates(sig, phase)[0]

  def measure(jobs):
    timed.extend(jobs)
    clock.now += len(jobs)
    return {job: (0.010 if job[0] == big else 0.001) if job[2] == reference(*job[:2])
            else 0.0005 for job in jobs}
  return big, measure, timed, reference


def _deferred(tmp_path):
  """{(signature, phase)} the cache records as deferred, and by which process."""
  entries = next(iter(json.loads((tmp_path / conv_tuning.CACHE_FILE).read_text()).values()))
  return {(conv_tuning._parse_signature(key), phase): entry['deferred']
          for key, phases in entries.items() for phase, entry in phases.items()
          if 'deferred' in entry}


def test_tuning_stops_at_its_budget_costliest_phases_first(tmp_path, monkeypatch):
  """The references take N s for N contested phases, so each other candidate is estimated at
  OTHER_CANDIDATE_COST s: with a budget that fits the costliest conv's other candidates and not
  one more, only those are timed, and every other phase worth tuning keeps its reference,
  logged and cached as deferred by this process."""
  big, measure, timed, reference = _budget_case(monkeypatch)
  lines = []
  refs = len([1 for sig, use in conv_tuning.conv_uses(_networks()[0]).items()
              for phase in use.phases if len(convolution.phase_candidates(sig, phase)) > 1])
  big_others = sum(len(convolution.phase_candidates(big, phase)) - 1
                   for phase in convolution.CONV_PHASES)
  budget = refs + conv_tuning.OTHER_CANDIDATE_COST * (big_others + 0.5)
  plan = conv_tuning.tune(_networks()[:1], jax.local_devices()[:1], measure=measure,
                          cpu='Test CPU', directory=str(tmp_path), log=lines.append,
                          budget_s=budget)
  others = {job[:2] for job in timed if job[2] != reference(*job[:2])}
  assert others == {(big, phase) for phase in convolution.CONV_PHASES}
  choices = dict(plan)
  assert all(impl != reference(big, phase) for phase, impl in choices[big]._asdict().items())
  block = convolution.ConvSignature(2, 5, 5, 4, 4, 3, 1, 'float32')
  assert choices[block] == convolution.ConvChoice('xla', 'xla_t', 'xla')
  deferred = _deferred(tmp_path)
  assert (block, 'forward') in deferred and set(deferred.values()) == {conv_tuning.PROCESS}
  assert not any(sig == big for sig, _ in deferred)
  assert f'its {budget:g} s budget' in lines[1]
  assert f' {len(deferred)} phases worth tuning' in lines[1]


def test_deferred_phases_stand_in_this_process_and_a_later_one_tunes_them(tmp_path,
                                                                           monkeypatch):
  big, measure, timed, reference = _budget_case(monkeypatch)
  kwargs = dict(devices=jax.local_devices()[:1], cpu='Test CPU', directory=str(tmp_path),
                log=lambda line: None)
  plan = conv_tuning.tune(_networks()[:1], measure=measure, budget_s=0, **kwargs)
  assert all(impl == reference(sig, phase) for sig, phase, impl in timed)
  deferred = _deferred(tmp_path)
  assert (big, 'forward') in deferred and set(deferred.values()) == {conv_tuning.PROCESS}
  assert all(getattr(dict(plan)[sig], phase) == reference(sig, phase) for sig, phase in deferred)

  def no_timing(jobs):
    raise AssertionError(f'timed {jobs}')
  assert conv_tuning.tune(_networks()[:1], measure=no_timing, **kwargs) == plan
  # Another process (a later run) tunes what was deferred (those of its phases worth it), only
  # that, and decides it for good.
  monkeypatch.setattr(conv_tuning, 'PROCESS', 'a later run')
  timed.clear()
  later = conv_tuning.tune(_networks()[:1], measure=measure, budget_s=1e9, **kwargs)
  assert {job[:2] for job in timed} == set(deferred)
  tuned = {(sig, phase) for sig, phase, impl in timed if impl != reference(sig, phase)}
  assert {(big, phase) for phase in convolution.CONV_PHASES} <= tuned <= set(deferred)
  assert all(impl != reference(big, phase) for phase, impl in dict(later)[big]._asdict().items())
  assert not _deferred(tmp_path)


def test_evaluation_takes_the_forward_decisions_of_the_layers_trained(tmp_path):
  timer, lines = FakeTimer(), []
  networks = [conv_tuning.Network('generator', GENERATOR, (2, 5, 5, 1)),
              conv_tuning.Network('generator in evaluation', GENERATOR, (8, 5, 5, 1),
                                  trained=False)]
  plan = conv_tuning.tune(networks, jax.local_devices()[:1], measure=timer, cpu='Test CPU',
                          directory=str(tmp_path), log=lines.append)
  assert {sig.batch for sig, _, _ in timer.jobs} == {2}
  choices = dict(plan)
  assert choices[convolution.ConvSignature(8, 5, 5, 1, 4, 9, 1, 'float32')].forward == 'gather'
  assert lines[3].startswith('Convs tuned for the generator in evaluation (cached): '
                             '9x9x1->4 @5x5 b8: gather (as at b2), ')


def test_frozen_networks_take_the_decisions_of_the_layers_trained(tmp_path):
  """A frozen network (forward and input gradient, like the guide CNN in an SRGAN run) takes
  the decisions of its layers trained at another batch; a phase not decided there is timed:
  the input gradient of the first conv, which training does not compute (it reads images)."""
  judge = models.LeNetJudge()
  kwargs = dict(devices=jax.local_devices()[:1], cpu='Test CPU', directory=str(tmp_path))
  conv_tuning.tune([conv_tuning.Network('judge', judge, (4, 28, 28, 1))], measure=FakeTimer(),
                   log=lambda line: None, **kwargs)
  timer, lines = FakeTimer(), []
  plan = conv_tuning.tune([conv_tuning.Network('frozen judge', judge, (2, 28, 28, 1),
                                               trained=False, input_grad=True)],
                          measure=timer, log=lines.append, **kwargs)
  first = convolution.ConvSignature(2, 28, 28, 1, 32, 5, 1, 'float32')
  assert {job[:2] for job in timer.jobs} == {(first, 'input_grad')}
  assert dict(plan)[first] == convolution.ConvChoice('gather', 'xla_t', 'xla')
  assert lines[2:] == ['Convs tuned for the frozen judge (measured): 5x5x1->32 @28x28 b2: fwd '
                       'gather, dx xla_t (fwd as at b4), 5x5x32->64 @14x14 b2: fwd xla, dx '
                       'xla_t (as at b4)']


def test_a_second_tuning_reads_the_cache_and_times_nothing(tmp_path):
  plan, _ = _tune(tmp_path, FakeTimer())
  cache = json.loads((tmp_path / conv_tuning.CACHE_FILE).read_text())
  assert list(cache) == [conv_tuning.machine_key('Test CPU', 'cpu', 1)]

  def no_timing(jobs):
    raise AssertionError(f'timed {jobs}')
  again, lines = _tune(tmp_path, no_timing)
  assert again == plan
  assert [line.split(':')[0] for line in lines] == ['Convs tuned for the generator (cached)',
                                                    'Convs tuned for the judge (cached)']


def test_close_phases_are_timed_again_at_the_end_and_decided_on_those_calls(tmp_path):
  timer = RetimingTimer()
  plan, lines = _tune(tmp_path, timer)
  block = convolution.ConvSignature(2, 5, 5, 4, 4, 3, 1, 'float32')
  # Timed again: the candidates within DOUBTFUL of their phase's fastest, where there are two
  # or more (the forward conv's XLA at 2x, not the others at 3x, against DOUBTFUL = 2.5).
  assert conv_tuning.DOUBTFUL == 2.5
  phases = collections.defaultdict(list)
  for job in timer.jobs:
    phases[job[:2]].append(job)
  close = [[job for job in jobs if timer.seconds(job) <= 2.5 * min(map(timer.seconds, jobs))]
           for jobs in phases.values()]
  assert sorted(timer.retimed) == sorted(job for jobs in close if len(jobs) > 1 for job in jobs)
  assert set(timer.retimed) >= {(block, 'forward', 'gather'), (block, 'forward', 'xla')}
  assert len(timer.retimed) < len(timer.jobs)
  # Decided on those calls, and so cached.
  assert dict(plan)[block] == convolution.ConvChoice('xla', 'xla_t', 'xla')
  cache = json.loads((tmp_path / conv_tuning.CACHE_FILE).read_text())
  entry = cache[conv_tuning.machine_key('Test CPU', 'cpu', 1)][
      conv_tuning.signature_key(block)]['forward']
  assert entry == {'choice': 'xla', 'ms': {
      impl: 0.5 if impl == 'xla' else 1e3 * timer.seconds((block, 'forward', impl))
      for impl in convolution.phase_candidates(block, 'forward')}}
  assert f'({len(timer.retimed)} of the closest timed again at the end)' in lines[1]


def test_close_phases_are_not_timed_again_past_the_budget(tmp_path):
  timer = RetimingTimer(scale=3e3)  # 2 rounds of any close phase's candidates: past 8 s.
  plan, lines = _tune(tmp_path, timer)
  assert not timer.retimed
  block = convolution.ConvSignature(2, 5, 5, 4, 4, 3, 1, 'float32')
  assert dict(plan)[block] == convolution.ConvChoice('gather', 'xla_t', 'xla')
  assert '(0 of the closest timed again at the end; ' in lines[1], lines[1]
  assert ' close phases not, past the budget).' in lines[1], lines[1]


def test_the_close_phases_that_cost_most_are_timed_again_first(tmp_path):
  """Where the calls of every close phase would pass the budget, those of the phase that costs
  most a step (its fastest time x its calls) are made, and the others' that still fit."""
  first = FakeTimer()  # The first calls, as RetimingTimer makes them.
  _tune(tmp_path / 'first', first)
  close = collections.defaultdict(list)
  for job in first.jobs:
    close[job[:2]].append(job)
  # Calls of seconds each: the budget left after the first calls (the tuning's own wall time,
  # milliseconds here) cannot decide which phases fit.
  scale = 1e3
  seconds = RetimingTimer(scale).seconds
  fastest = {key: min(map(seconds, jobs)) for key, jobs in close.items()}
  close = {key: [job for job in jobs if seconds(job) <= conv_tuning.DOUBTFUL * fastest[key]]
           for key, jobs in close.items()}
  close = {key: jobs for key, jobs in close.items() if len(jobs) > 1}
  calls = collections.Counter()
  for net in _networks():
    for sig, use in conv_tuning.conv_uses(net).items():
      calls[sig] += use.calls
  cost = {key: conv_tuning.RETIME_ROUNDS * sum(map(seconds, jobs)) for key, jobs in close.items()}
  costliest = max(close, key=lambda key: fastest[key] * calls[key[0]])
  margin = min(c for key, c in cost.items() if key != costliest) / 2
  timer = RetimingTimer(scale)
  conv_tuning.tune(_networks(), jax.local_devices()[:1], measure=timer, cpu='Test CPU',
                   directory=str(tmp_path), log=lambda line: None,
                   budget_s=cost[costliest] + margin)
  assert sorted(timer.retimed) == sorted(close[costliest]), (timer.retimed, close[costliest])


def test_phase_timer_times_again_in_rounds_forgetting_the_earlier_calls(monkeypatch):
  calls = _fake_calls(monkeypatch, {'xla': [0.010, 0.011, 0.013, 0.012],
                                    'matmul': [0.02, 0.02, 0.005]})
  order = []
  call_seconds = conv_tuning._call_seconds  # pylint: disable=protected-access
  monkeypatch.setattr(conv_tuning, '_call_seconds',
                      lambda fn, args: order.append(fn.impl) or call_seconds(fn, args))
  sig = convolution.ConvSignature(2, 6, 6, 3, 4, 3, 1, 'float32')
  jobs = [(sig, 'input_grad', 'xla'), (sig, 'input_grad', 'matmul')]
  timer = conv_tuning.PhaseTimer(jax.local_devices()[:2], runs=1)
  assert timer(jobs) == {jobs[0]: 0.010, jobs[1]: 0.02}
  order.clear()
  assert timer.retime(jobs) == {jobs[0]: 0.012, jobs[1]: 0.005}
  assert order == ['xla', 'matmul'] * conv_tuning.RETIME_ROUNDS
  assert calls == {'xla': 4, 'matmul': 4}
  assert timer.seconds == {jobs[0]: 0.012, jobs[1]: 0.005}


def test_the_cache_key_names_the_cpu_and_the_versions(tmp_path, monkeypatch):
  # Nothing held, whatever the suite runs under (e.g. the C++ built for AVX2 to test that).
  monkeypatch.delenv(native.MARCH_ENV, raising=False)
  monkeypatch.setenv('XLA_FLAGS', ' '.join(
      f for f in os.environ.get('XLA_FLAGS', '').split() if 'max_isa' not in f))
  key = conv_tuning.machine_key('Test CPU', 'cpu', 1)
  assert 'Test CPU' in key and jax.__version__ in key and 'cpu' in key
  assert conv_tuning.machine_key('Other CPU', 'cpu', 1) != key
  assert conv_tuning.machine_key('Test CPU', 'cpu', 2) != key
  monkeypatch.setattr(conv_tuning, 'TIMING_METHOD', conv_tuning.TIMING_METHOD - 1)
  assert conv_tuning.machine_key('Test CPU', 'cpu', 1) != key
  monkeypatch.undo()
  monkeypatch.setattr(convolution, 'CANDIDATES_REVISION', convolution.CANDIDATES_REVISION - 1)
  assert conv_tuning.machine_key('Test CPU', 'cpu', 1) != key
  monkeypatch.undo()
  monkeypatch.setattr(jax, '__version__', '0.0.1')
  assert conv_tuning.machine_key('Test CPU', 'cpu', 1) != key
  monkeypatch.undo()
  # XLA:CPU's fusion code generator (what the candidates' transforms compile to).
  keys = []
  for emitters in ('true', 'false'):
    monkeypatch.setenv('XLA_FLAGS', f'--xla_cpu_use_fusion_emitters={emitters}')
    keys.append(conv_tuning.machine_key('Test CPU', 'cpu', 1))
  assert keys[0] != keys[1]
  monkeypatch.undo()
  # Code held below the CPU's vector instructions (benchmarks.targets --isa=avx2) times apart;
  # nothing held leaves the key as it was.
  assert 'held to' not in key
  monkeypatch.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_max_isa=AVX2')
  monkeypatch.setenv(native.MARCH_ENV, 'haswell')
  held = conv_tuning.machine_key('Test CPU', 'cpu', 1)
  assert held.endswith(' | held to XLA max ISA AVX2, C++ -march=haswell'), held
  assert held.partition(' | held to ')[0] == key
  monkeypatch.undo()
  # Another machine's decisions are not used: it times again, in the same file.
  _tune(tmp_path, FakeTimer())
  timer = FakeTimer()
  _tune(tmp_path, timer, cpu='Other CPU')
  assert timer.jobs
  assert len(json.loads((tmp_path / conv_tuning.CACHE_FILE).read_text())) == 2


def test_off_cpu_tuned_means_xla_and_times_nothing(tmp_path):
  def no_timing(jobs):
    raise AssertionError(f'timed {jobs}')
  lines = []
  gpu = types.SimpleNamespace(platform='gpu')
  plan = conv_tuning.tune(_networks(), [gpu], measure=no_timing, directory=str(tmp_path),
                          log=lines.append)
  assert {choice for _, choice in plan} == {convolution.ConvChoice('xla', 'xla', 'xla')}
  assert len(plan) == 6 and len(lines) == 2 and 'not timed' in lines[0]
  assert not (tmp_path / conv_tuning.CACHE_FILE).exists()
  # The tuned generator then is the 'xla' one, op for op: its value and both gradients lower
  # to the same program (GPU behaviour unchanged: cuDNN still sees XLA's convolutions).
  lr = np.ones((2, 5, 5, 1), np.float32)
  variables = GENERATOR.init(jax.random.PRNGKey(0), lr, train=True)

  def program(net):
    def loss(params, x):
      sr, _ = net.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
      return sr.sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables['params'], lr).as_text()

  tuned = GENERATOR.clone(conv='tuned', conv_plan=plan)
  assert program(tuned) == program(GENERATOR.clone(conv='xla'))
  assert program(tuned) != program(GENERATOR.clone(conv='matmul'))


def test_plan_for_tunes_only_tuned():
  assert conv_tuning.plan_for('auto', _networks()) is None


def test_time_phases_times_real_candidates():
  sig = convolution.ConvSignature(2, 6, 6, 3, 4, 3, 2, 'float32')
  jobs = [(sig, 'input_grad', impl) for impl in convolution.phase_candidates(sig, 'input_grad')]
  seconds = conv_tuning.time_phases(jobs, jax.local_devices()[:2], runs=1)
  assert set(seconds) == set(jobs) and all(0 < t < 10 for t in seconds.values())


def _fake_calls(monkeypatch, seconds, compiled=None):
  """Candidates that take seconds[impl][i] on their i-th call (the last value after that), as
  PhaseTimer compiles and calls them; returns the Counter of calls per implementation. Appends
  the XLA options of each compile to `compiled`."""
  calls = collections.Counter()

  def fake_call_seconds(fn, args):
    calls[fn.impl] += 1
    return seconds[fn.impl][min(calls[fn.impl], len(seconds[fn.impl])) - 1]

  class Compiled:  # What PhaseTimer._compile returns, tagged with its implementation.
    def __init__(self, impl):
      self.impl = impl

  def compile_with(impl, options):
    if compiled is not None:
      compiled.append(options)
    return Compiled(impl)

  monkeypatch.setattr(conv_tuning, '_call_seconds', fake_call_seconds)
  monkeypatch.setattr(jax, 'pmap', lambda fn, devices: types.SimpleNamespace(
      lower=lambda *args: types.SimpleNamespace(
          compile=lambda options=None: compile_with(fn.impl, options))))
  monkeypatch.setattr(convolution, 'conv_phase', lambda phase, impl, sig: (
      types.SimpleNamespace(impl=impl), None))
  monkeypatch.setattr(conv_tuning, '_device_inputs', lambda sig, devices: ())
  return calls


def test_time_phases_drops_a_first_call_that_paid_one_time_costs(monkeypatch):
  # A first call pays one-time costs (XLA's conv: 37-66 ms, then 11 ms, on an AMD EPYC): timed
  # alone, it would decide for the wrong candidate.
  compiled = []
  calls = _fake_calls(monkeypatch, {'xla': [0.4, 0.001], 'matmul': [0.4, 0.002]}, compiled)
  sig = convolution.ConvSignature(2, 6, 6, 3, 4, 3, 2, 'float32')
  jobs = [(sig, 'input_grad', 'xla'), (sig, 'input_grad', 'matmul')]
  seconds = conv_tuning.time_phases(jobs, jax.local_devices()[:2], runs=1)
  assert seconds == {jobs[0]: 0.001, jobs[1]: 0.002}
  # Compiled with the tuner's XLA options (unsplit code generation: the same code, cheaper).
  assert compiled == [conv_tuning.COMPILE_OPTIONS] * 2
  # A first call as long as LONG_FIRST_CALL_S is counted, not repeated.
  calls.clear()
  monkeypatch.setattr(conv_tuning, 'LONG_FIRST_CALL_S', 0.3)
  assert conv_tuning.time_phases(jobs[:1], jax.local_devices()[:2], runs=1) == {jobs[0]: 0.4}
  assert sum(calls.values()) == 1


def test_phase_timer_calls_again_only_where_a_call_can_change_the_decision(monkeypatch):
  calls = _fake_calls(monkeypatch, {'xla': [0.010, 0.011, 0.013, 0.012],
                                    'matmul': [0.0115, 0.011], 'xla_t': [0.05, 0.04, 0.001]})
  sig = convolution.ConvSignature(2, 6, 6, 3, 4, 3, 1, 'float32')
  job = lambda impl: (sig, 'input_grad', impl)
  timer = conv_tuning.PhaseTimer(jax.local_devices()[:2], runs=1)
  # Alone in its phase, the reference is not called again: nothing to compare it with yet.
  assert timer([job('xla')]) == {job('xla'): 0.010}
  assert calls == {'xla': 2}
  # The later candidates are compared with the reference called again beside them, in a
  # slower moment: matmul is faster than those calls (0.011 vs 0.012), though not than the
  # reference's earlier ones (0.010), which are not used. matmul comes within HOPELESS of it,
  # so both are called once more; xla_t, 3x slower, is not.
  assert timer([job('matmul'), job('xla_t')]) == {
      job('xla'): 0.012, job('matmul'): 0.011, job('xla_t'): 0.04}
  assert calls == {'xla': 2 + 2 + 1, 'matmul': 2 + 1, 'xla_t': 2}
  # Nothing is compiled or called twice over.
  calls.clear()
  assert timer([job('matmul')]) == {job('matmul'): 0.011}
  assert not calls


def test_phase_timer_calls_the_candidates_in_rounds(monkeypatch):
  """A burst of load should slow one call of several candidates, not every call of one: the
  first calls of the candidates timed together, then their second calls, then the contenders'
  further calls, round after round."""
  _fake_calls(monkeypatch, {'xla': [0.010], 'matmul': [0.011], 'gather': [0.012],
                            'xla_t': [0.05]})
  order = []
  call_seconds = conv_tuning._call_seconds  # pylint: disable=protected-access
  monkeypatch.setattr(conv_tuning, '_call_seconds',
                      lambda fn, args: order.append(fn.impl) or call_seconds(fn, args))
  sig = convolution.ConvSignature(2, 6, 6, 3, 4, 3, 1, 'float32')
  jobs = [(sig, 'input_grad', impl) for impl in ('xla', 'matmul', 'gather', 'xla_t')]
  conv_tuning.PhaseTimer(jax.local_devices()[:2], runs=2)(jobs)
  assert order == (['xla', 'matmul', 'gather', 'xla_t'] * 2  # Every candidate's first two.
                   + ['xla', 'matmul', 'gather'] * 2)  # The contenders', xla_t 5x slower.


def test_phase_timer_does_not_time_again_a_reference_that_cannot_win(monkeypatch):
  """A reference HOPELESS times slower than the later candidates' fastest, even with its
  earlier calls, is not called again; one that would win is, beside them."""
  calls = _fake_calls(monkeypatch, {'xla': [0.03], 'matmul': [0.010], 'xla_t': [0.002],
                                    'gather_t': [0.003]})
  sig = convolution.ConvSignature(2, 6, 6, 3, 4, 3, 1, 'float32')
  timer = conv_tuning.PhaseTimer(jax.local_devices()[:2], runs=1)
  timer([(sig, 'forward', 'xla'), (sig, 'input_grad', 'xla_t')])
  assert timer([(sig, 'forward', 'matmul'), (sig, 'input_grad', 'gather_t')]) == {
      (sig, 'forward', 'matmul'): 0.010, (sig, 'input_grad', 'xla_t'): 0.002,
      (sig, 'input_grad', 'gather_t'): 0.003}
  assert calls == {'xla': 2, 'matmul': 2, 'xla_t': 2 + 2, 'gather_t': 2}


def test_the_default_cache_is_under_the_environment_directory(tmp_path, monkeypatch):
  monkeypatch.setenv(conv_tuning.CACHE_ENV, str(tmp_path))
  assert conv_tuning.cache_path() == str(tmp_path / conv_tuning.CACHE_FILE)
  monkeypatch.delenv(conv_tuning.CACHE_ENV)
  assert conv_tuning.cache_path().endswith('.cache/srgan_jax/conv_plans.json')


def test_the_config_names_an_implementation(tiny_config):
  tiny_config.conv_implementation = 'fastest'
  with pytest.raises(errors.ConfigError, match='conv_implementation'):
    validation.validate_config(tiny_config)


def test_every_process_takes_process_0s_choices(monkeypatch):
  sig = convolution.ConvSignature(2, 5, 5, 4, 4, 3, 1, 'float32')
  mine = ((sig, convolution.ConvChoice('gather', 'matmul', 'gather_t')),)
  assert conv_tuning.agreed(mine) == mine  # One process: its own.
  process_0 = np.array([[0, 2, 2]], np.int32)  # xla, xla_t, gather.
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(conv_tuning.multihost_utils, 'broadcast_one_to_all', lambda x: process_0)
  assert conv_tuning.agreed(mine) == ((sig, convolution.ConvChoice('xla', 'xla_t', 'gather')),)

