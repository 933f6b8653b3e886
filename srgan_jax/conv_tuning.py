"""Convolutions chosen by measurement: each distinct conv of the networks timed per phase and
implementation on this machine, the fastest kept in an explicit plan, decisions cached on disk.

Like cuDNN's autotuner: which implementation of a conv is fastest (XLA's convolution, im2col +
matmul, a gradient computed as a conv over the dilated output gradient, ...) depends on the
layer (kernel, channels, map size, stride, batch) and on the machine, so it is measured rather
than guessed. `tune` collects the conv signatures a network runs without running it
(jax.eval_shape with an interceptor on convolution.Conv) and times, pmapped over the devices as
training runs them, the forward pass, the input gradient and the kernel gradient of each with
XLA's convolution (or what stands in for it, convolution.phase_candidates), then with the other
candidates of convolution.PHASE_CANDIDATES for the phases that make up most of that time. It
returns a convolution.ConvPlan that the networks receive as their `conv_plan` attribute. Decisions
are cached in `conv_plans.json` under $SRGAN_JAX_CACHE_DIR (default ~/.cache/srgan_jax),
keyed by the CPU, jax and jaxlib versions, backend and signature, so a later run on the same
machine times nothing. A tuning stops at TIME_BUDGET_S: the phases it leaves keep their
reference in this process and a later run tunes them. Off CPU, XLA's convolution is used
everywhere (cuDNN tunes itself) and nothing is timed.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import inspect
import os
import platform
import time
from typing import Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import jaxlib
import numpy as np

from srgan_jax import convolution
from srgan_jax import direct_conv
from srgan_jax import files
from srgan_jax import native
from srgan_jax import onednn
from srgan_jax import platform as process_setup
from srgan_jax import winograd_native

CACHE_ENV = 'SRGAN_JAX_CACHE_DIR'
CACHE_FILE = 'conv_plans.json'
# Calls per contender after the first two (the fastest is kept: load only slows).
# 1 since 2026-12-02: with 2, the main job's three tunings took 10.1 s on an Intel Xeon.
RUNS = 1
# A candidate this many times slower than its phase's fastest after two calls is not called
# again. In the main job's tuning on an AVX2 AMD EPYC, the faster of two calls was within 1.25x
# of a third call for 102 of 106 candidates.
HOPELESS = 1.25
# Phases whose candidates came within this factor of the fastest are timed again at the end of
# a tuning, RETIME_ROUNDS calls each in rounds, and decided on those calls: on the 2-core AMD
# EPYC (Zen 4) VMs, a candidate's first 4-5 calls ran Winograd's at up to 2x their later times
# and XLA's at ~1.2x (the tuner makes 2 or 3 before), and one fresh tuning in three or four kept
# XLA's conv for a phase whose Winograd candidate was 1.9x faster once warm (the 3x3x64->64 conv
# at 7x7, forward and input gradient: the SRResNet step 1.13-1.15x as fast with Winograd's). The
# first round of calls is their warm-up (with one round: worse than without). Per step
# of each of the main job's networks, its fresh tunings lost a median 6.4 ms (0.3-14.6, 7
# tunings) against each phase's fastest timed warm, 0.2 ms (0.1-3.3, 8) with this.
DOUBTFUL = 2.5
RETIME_ROUNDS = 2
# The phases that make up this share of their reference's time are tuned; the rest keep the
# reference (tuning them could save at most the remaining share).
WORTH_TUNING = 0.95
LONG_CALL_S = 0.05  # a call this long is timed precisely enough once.
# A first call this long is counted: its one-time costs (tens of ms) cannot change a ranking,
# and calling again would cost as much (XLA's stride-2 3x3x512->512 input gradient: 0.66 s).
LONG_FIRST_CALL_S = 0.5
# How PhaseTimer measures; part of the cache key, so decisions timed another way are retimed
# (1: first calls counted; 2: each candidate's first call untimed; 3: the faster of the first
# two calls, contenders called again only where there are two; 4: the calls in rounds over the
# candidates timed together, not one candidate's calls back to back; 5: a phase's earlier
# candidates that could still win called again beside its later ones; 6: close phases timed
# again at the end of a tuning, DOUBTFUL).
TIMING_METHOD = 6
SHORT_NAMES = {'forward': 'fwd', 'input_grad': 'dx', 'kernel_grad': 'dw'}
# Compiling threads per core: tracing and lowering a candidate hold the GIL, so with one thread
# a core a core waits while another thread lowers. The main job's tunings on a 2-core AVX2 AMD
# EPYC, in turns: 4 threads 13.4, 11.9, 13.4, 12.7 s; 2 threads 16.3, 15.5; 8 threads 13.0,
# 14.1 (2026-12-04, a slow hour for that machine).
COMPILE_THREADS_PER_CORE = 2
# XLA:CPU options of the candidates' compiles. Unsplit code generation: each candidate is
# small, and XLA:CPU's parallel code generation (its module split into parts compiled on its
# own threads) only adds threads to the compiling threads' (the compiling pool already keeps
# the cores busy). The code is the same: the optimised LLVM IR of 7 candidates (Winograd's,
# kn2row, gather_t, matmul, gather) was identical but for names. The main job's tunings on a
# 2-core AVX2 AMD EPYC, in turns: 9.14 vs 9.52 s, and 12.11 vs 12.78 s in a slower hour
# (medians of 6, 2026-12-04).
COMPILE_OPTIONS = {'xla_cpu_parallel_codegen_split_count': 1}
# Seconds a tuning may spend (issue 12: under 10 s for the main job's networks). The references
# are always timed; then the other candidates of the phases worth tuning, the costliest phases
# first, as far as the budget's estimate allows. A phase left out keeps its reference for this
# process and is tuned by a later run (its cache entry says it was deferred, and by which
# process). The main job's tuning took 5.4-6.1 s on a 2-core Intel Xeon (89 candidates) and
# 6.8-14.6 s on a 2-core AVX2 AMD EPYC as that machine's speed drifted (2026-12-04).
TIME_BUDGET_S = 8.0
# Wall seconds of an alternative candidate (compile and calls) over a reference's: 69 vs 50-52
# ms each in the main job's tuning on a 2-core Intel Xeon (2026-12-05, two cold runs).
OTHER_CANDIDATE_COST = 1.4
# Names the deferrals this process made: a deferred decision stands for the rest of the process
# (its later tunings time nothing more) and is timed by the next process that needs it.
PROCESS = f'{os.getpid()}@{time.time_ns()}'

Job = Tuple[convolution.ConvSignature, str, str]  # (signature, phase, implementation)


@dataclasses.dataclass(frozen=True)
class Network:
  """A network whose convs are tuned, and what its training (or evaluation) computes.

  `input_shape`: one device's input, NHWC. `trained`: kernel gradients are computed.
  `input_grad`: the gradient w.r.t. the network's input is computed (a discriminator's, or a
  frozen classifier's that the generator learns through); without it, the convs that read the
  network's input directly need no input gradient.
  """
  name: str
  module: nn.Module
  input_shape: Tuple[int, ...]
  trained: bool = True
  input_grad: bool = False
  dtype: str = 'float32'


class ConvUse(NamedTuple):
  """What a network computes of the convs of one signature, and how many convs have it."""
  phases: Tuple[str, ...]
  calls: int


def conv_uses(network: Network) -> Dict[convolution.ConvSignature, ConvUse]:
  """{signature: its use} of the network's convs, in the order they run.

  Traced abstractly (jax.eval_shape of the module's init): nothing is computed, and the convs
  themselves are not called (each is replaced by a zero output of its shape).
  """
  uses = {}

  def intercept(network_input, next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, convolution.Conv) or context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    x = args[0]
    sig = convolution.conv_signature(x.shape, x.dtype, module.kernel_size, module.features,
                                module.strides)
    before = uses.get(sig, ConvUse((), 0))
    phases = set(before.phases) | {'forward'}
    if network.input_grad or (network.trained and x is not network_input):
      phases.add('input_grad')
    if network.trained:
      phases.add('kernel_grad')
    uses[sig] = ConvUse(tuple(p for p in convolution.CONV_PHASES if p in phases), before.calls + 1)
    return jnp.zeros(x.shape[:1] + sig.output_size + (module.features,), x.dtype)

  # Networks with a training mode (BatchNorm, dropout) run the same convs in either; VGG19 has
  # none.
  mode = ({'train': False} if 'train' in inspect.signature(network.module.__call__).parameters
          else {})

  def init(x):
    with nn.intercept_methods(functools.partial(intercept, x)):
      return network.module.init(jax.random.PRNGKey(0), x, **mode)

  jax.eval_shape(init, jax.ShapeDtypeStruct(network.input_shape, network.dtype))
  return uses


# ---------------------------------------------------------------------------------------------
# The cache.


def cache_path(directory: Optional[str] = None) -> str:
  directory = directory or os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'srgan_jax')
  return os.path.join(directory, CACHE_FILE)


def cpu_model() -> str:
  """The CPU: its model name, family, model and stepping (/proc/cpuinfo on Linux; a VM may
  name only the vendor) and the cores this process may use."""
  fields = native.cpuinfo()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  name = fields.get('model name') or platform.processor() or platform.machine() or 'unknown CPU'
  family = ' '.join(f'{k} {fields[k]}' for k in ('cpu family', 'model', 'stepping') if k in fields)
  return f'{name} ({family + ", " if family else ""}{cores} cores)'


def machine_key(cpu: str, backend: str, num_devices: int) -> str:
  """What a decision is valid for: the CPU model, jax and jaxlib versions, the backend and the
  devices timed on (they share the cores), the candidates it was made among (a digest of
  convolution.PHASE_CANDIDATES and convolution.CANDIDATES_REVISION), how they were timed
  (TIMING_METHOD) and, on CPU, the library XLA runs its convolutions on (what 'xla' means
  there: platform.configure_cpu_convolutions) and the code generator of its fusions (the other
  candidates' transforms and copies: platform.configure_cpu_fusion_emitters), whether
  oneDNN's candidate was among them (onednn.version()), whether Winograd's transforms were
  winograd_native's C++ passes or XLA's, whether the direct convs were (direct_conv), and what
  holds XLA or the C++ passes below the CPU's vector instructions, if anything does
  (platform.held_isa)."""
  held = process_setup.held_isa()
  candidates = hashlib.sha1(repr((convolution.CANDIDATES_REVISION, sorted(
      convolution.PHASE_CANDIDATES.items()))).encode()).hexdigest()
  library = (f' | xla convs on {process_setup.cpu_conv_library()}, fusions by its '
             f'{process_setup.cpu_fusion_emitters()} emitters | onednn {onednn.version()} | '
             f'winograd transforms {"native" if winograd_native.available() else "xla"} | '
             f'direct convs {"native" if direct_conv.available() else "none"}'
             f'{" | held to " + held if held else ""}'
             if backend == 'cpu' else '')
  return (f'{cpu} | jax {jax.__version__} | jaxlib {jaxlib.version.__version__} | '
          f'{num_devices} {backend} devices | candidates {candidates[:8]} | '
          f'timing {TIMING_METHOD}{library}')


def signature_key(sig: convolution.ConvSignature) -> str:
  return ','.join(str(v) for v in sig)


def read_cache(path: str) -> dict:
  cache = files.read_json(path)
  return cache if isinstance(cache, dict) else {}


# ---------------------------------------------------------------------------------------------
# Timing.


def _device_inputs(sig: convolution.ConvSignature, devices):
  """x, kernel and output gradient of `sig` on every device (a leading device axis); constant
  values: a conv's speed does not depend on them."""
  _, shapes = convolution.conv_phase('forward', 'xla', sig)
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray(devices), ('d',)),
                                        jax.sharding.PartitionSpec('d'))
  return [jax.device_put(np.full((len(devices),) + s, 0.5, sig.dtype), sharding)
          for s in shapes]


def _call_seconds(fn, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


class PhaseTimer:
  """measure() for tune: seconds per call of each job (its fastest call), pmapped over
  `devices` as training runs.

  Each job is compiled (on a thread pool of COMPILE_THREADS_PER_CORE threads a core: XLA
  compiles outside the GIL, and compiling is most of the cost), then called twice, the faster
  call kept: a first call pays one-time costs (on an AMD EPYC, XLA's 3x3x64->128 conv took
  37-66 ms on its first call and 11 ms after, so timing first calls alone chose a 30 ms im2col
  instead), unless it took LONG_FIRST_CALL_S.

  A phase's candidates are compared by calls made together: the calls go in rounds (every
  candidate's first call, then every second call, ...), so that a burst of load slows one call
  of many candidates rather than every call of one (on a noisy 2-core AMD EPYC, three tunings
  with back-to-back calls took three different sets of decisions for the seed CNN's 3x3x32->64
  conv). The candidates timed earlier in the phase (tune times each phase's reference first,
  the others after) that could still win, those not HOPELESS times slower than the new ones'
  fastest, are called again twice right after, and with them in the contenders' rounds, their
  times from those calls only: a reference timed in a quiet moment and the others in a slow one
  had kept XLA's conv or gather_t in 6 of the main job's generator phases, the others timed at
  1.5-2.4x their usual (Winograd's 7x7x64->64 forward at 2.15 ms against 0.90 in another
  tuning, XLA's at 1.67 and 1.61; an AMD EPYC, 2026-12-05).

  A call can be slowed by load, so a phase's contenders, its candidates within HOPELESS times
  its fastest, are called `runs` times more (unless a call took LONG_CALL_S), but only when
  there are two: a call only lowers a time, so it cannot change a phase with one contender.
  """

  def __init__(self, devices, runs: int = RUNS):
    self.devices, self.runs = list(devices), runs
    self._inputs, self._compiled, self._calls = {}, {}, collections.Counter()
    self.seconds: Dict[Job, float] = {}

  def _compile(self, job):
    sig, phase, impl = job
    fn, _ = convolution.conv_phase(phase, impl, sig)
    return jax.pmap(fn, devices=self.devices).lower(*self._inputs[sig]).compile(COMPILE_OPTIONS)

  def _call(self, job) -> float:
    self._calls[job] += 1
    return _call_seconds(self._compiled[job], self._inputs[job[0]])

  def __call__(self, jobs: Sequence[Job]) -> Dict[Job, float]:
    """Times `jobs`; returns their seconds and those of the earlier jobs of their phases that
    were timed again beside them."""
    new = [job for job in dict.fromkeys(jobs) if job not in self._compiled]
    for sig in dict.fromkeys(job[0] for job in new):
      if sig not in self._inputs:
        self._inputs[sig] = _device_inputs(sig, self.devices)
    workers = COMPILE_THREADS_PER_CORE * max(1, min(len(self.devices), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      self._compiled.update(zip(new, pool.map(self._compile, new)))
    times = {job: self._call(job) for job in new}
    times.update((job, min(times[job], self._call(job)))
                 for job in new if times[job] < LONG_FIRST_CALL_S)
    phases = {job[:2]: [] for job in new}  # Each with every job compiled for it.
    for job in self._compiled:
      if job[:2] in phases:
        phases[job[:2]].append(job)
    # The earlier candidates that could still win are timed again, in two rounds, their times
    # from these calls only; the others are hopeless even with their earlier times.
    again = [job for phase_jobs in phases.values() for job in phase_jobs if job not in times
             and self.seconds[job] <= HOPELESS * min(times.get(j, np.inf) for j in phase_jobs)]
    times.update((job, self._call(job)) for job in again)
    times.update((job, min(times[job], self._call(job)))
                 for job in again if times[job] < LONG_CALL_S)
    contenders = []
    for phase_jobs in phases.values():
      timed = [job for job in phase_jobs if job in times]
      fastest = min(times[job] for job in timed)
      close = [job for job in timed if times[job] <= HOPELESS * fastest]
      contenders += close if len(close) > 1 else []
    for _ in range(self.runs):
      for job in contenders:
        if times[job] < LONG_CALL_S:
          times[job] = min(times[job], self._call(job))
    self.seconds.update(times)
    return {job: self.seconds[job] for job in set(jobs) | set(times)}

  def retime(self, jobs: Sequence[Job]) -> Dict[Job, float]:
    """Times compiled `jobs` again, RETIME_ROUNDS calls each in rounds; their fastest of these
    calls (the earlier ones forgotten)."""
    times = {job: np.inf for job in jobs}
    for _ in range(RETIME_ROUNDS):
      for job in jobs:
        times[job] = min(times[job], self._call(job))
    self.seconds.update(times)
    return times


def time_phases(jobs: Sequence[Job], devices, runs: int = RUNS) -> Dict[Job, float]:
  """Seconds per call of each job, as PhaseTimer times them in one call."""
  return PhaseTimer(devices, runs)(jobs)


# ---------------------------------------------------------------------------------------------
# Tuning.


def describe(choice: convolution.ConvChoice, phases: Iterable[str]) -> str:
  """'xla' when every phase computed uses one implementation, else 'fwd xla, dw gather'."""
  impls = [getattr(choice, p) for p in phases]
  if len(set(impls)) == 1:
    return impls[0]
  return ', '.join(f'{SHORT_NAMES[p]} {i}' for p, i in zip(phases, impls))


def _short(sig: convolution.ConvSignature) -> str:
  return str(sig).replace(' float32', '')


def _parse_signature(key: str) -> convolution.ConvSignature:
  *numbers, dtype = key.split(',')
  return convolution.ConvSignature(*map(int, numbers), dtype)


def _same_layer(entries: dict, sig: convolution.ConvSignature,
                phase: str) -> Optional[convolution.ConvSignature]:
  """The signature with a decision for `phase` in `entries` that differs from `sig` by its
  batch only, the nearest batch first; None when there is none."""
  layer = sig._replace(batch=0)
  relatives = [s for s in map(_parse_signature, entries) if s._replace(batch=0) == layer
               and phase in entries[signature_key(s)]]
  return min(relatives, key=lambda s: abs(s.batch - sig.batch), default=None)


def _borrowed_note(sig: convolution.ConvSignature, phases: Sequence[str], borrowed: Mapping) -> str:
  """' (as at b64)' when every phase of `sig` took the decision of the same layer at batch 64,
  ' (dx as at b64)' when some did; '' when none did."""
  batches = {p: borrowed[sig, p].batch for p in phases if (sig, p) in borrowed}
  if not batches:
    return ''
  if len(batches) == len(phases) and len(set(batches.values())) == 1:
    return f' (as at b{batches[phases[0]]})'
  return ' (' + ', '.join(f'{SHORT_NAMES[p]} as at b{b}' for p, b in batches.items()) + ')'


class Measured(NamedTuple):
  """What _measure_into did: candidates timed, wall seconds, and the phases it deferred (the
  budget ran out) with their references' seconds a step (reference time x calls)."""
  candidates: int
  seconds: float
  deferred: Tuple[Tuple[convolution.ConvSignature, str], ...] = ()
  deferred_seconds: float = 0.0


def _measure_into(entries: dict, todo, calls: Mapping, measure,
                  budget_s: float = float('inf')) -> Measured:
  """Times the candidates of the (signature, phase) pairs `todo` and records the fastest of
  each in `entries`.

  Each phase's reference implementation (the first of convolution.phase_candidates: XLA's, or what
  stands in for it) is timed first. Its time, times the `calls` of the signature, bounds what
  tuning the phase can save, so the other candidates are only tried for the phases that make up
  WORTH_TUNING of that total, the costliest first, while the estimated wall time (the
  references' per candidate, times OTHER_CANDIDATE_COST) stays within `budget_s`; a phase
  that does not fit keeps its reference, recorded as deferred by this PROCESS. The rest keep
  the reference. A phase with one candidate is not timed.
  """
  library = process_setup.cpu_conv_library()
  candidates = {key: convolution.phase_candidates(*key, library) for key in sorted(todo)}
  contested = [key for key, impls in candidates.items() if len(impls) > 1]
  t0 = time.perf_counter()
  seconds = dict(measure([key + candidates[key][:1] for key in contested])) if contested else {}
  spent = time.perf_counter() - t0
  each = OTHER_CANDIDATE_COST * spent / max(len(contested), 1)
  cost = {key: seconds[key + candidates[key][:1]] * calls[key[0]] for key in contested}
  covered, others, deferred = 0.0, [], []
  for key in sorted(contested, key=cost.get, reverse=True):
    if covered >= WORTH_TUNING * sum(cost.values()):
      break
    covered += cost[key]
    more = [key + (impl,) for impl in candidates[key][1:]]
    if spent + each * (len(others) + len(more)) > budget_s:
      deferred.append(key)
    else:
      others += more
  seconds.update(measure(others) if others else {})
  elapsed = time.perf_counter() - t0
  by_phase = {key: {impls[0]: 0.0} for key, impls in candidates.items() if len(impls) == 1}
  for (sig, phase, impl), t in seconds.items():
    by_phase.setdefault((sig, phase), {})[impl] = t
  for (sig, phase), times in by_phase.items():
    entries.setdefault(signature_key(sig), {})[phase] = {
        'choice': min(times, key=times.get),
        'ms': {impl: round(1e3 * t, 4) for impl, t in times.items()},
        **({'deferred': PROCESS} if (sig, phase) in deferred else {})}
  return Measured(len(seconds), elapsed, tuple(deferred), sum(cost[key] for key in deferred))


def _retime_close(entries: dict, todo, calls: Mapping, measure, budget_s: float) -> Measured:
  """Times again, with measure.retime (when it has one), the candidates of the phases of `todo`
  that came within DOUBTFUL of their phase's fastest, and decides those phases on these calls
  (a tuning's first calls can run some candidates far slower than later ones: DOUBTFUL). The
  phases that cost most a step (their choice's time x the `calls` of the signature) first, as
  far as their calls fit in `budget_s`; those that do not fit keep their first decision and are
  returned as deferred."""
  retime = getattr(measure, 'retime', None)
  if retime is None:
    return Measured(0, 0.0)
  phases = []
  for sig, phase in sorted(todo):
    entry = entries.get(signature_key(sig), {}).get(phase)
    if entry is None or 'deferred' in entry:
      continue
    ms = entry['ms']
    close = [impl for impl, t in ms.items() if t <= DOUBTFUL * ms[entry['choice']]]
    if len(close) > 1:
      phases.append((ms[entry['choice']] * calls[sig], (sig, phase),
                     RETIME_ROUNDS * sum(ms[impl] for impl in close) / 1e3, close))
  jobs, cost_s, left_out = [], 0.0, []
  for _, key, phase_cost_s, close in sorted(phases, key=lambda p: p[0], reverse=True):
    if cost_s + phase_cost_s > budget_s:
      left_out.append(key)
      continue
    cost_s += phase_cost_s
    jobs += [key + (impl,) for impl in close]
  if not jobs:
    return Measured(0, 0.0, tuple(left_out))
  t0 = time.perf_counter()
  for (sig, phase, impl), t in retime(jobs).items():
    entry = entries[signature_key(sig)][phase]
    entry['ms'][impl] = round(1e3 * t, 4)
    entry['choice'] = min(entry['ms'], key=entry['ms'].get)
  return Measured(len(jobs), time.perf_counter() - t0, tuple(left_out))


def _decided(entry: Optional[dict]) -> bool:
  """Whether a cache entry of a phase is a decision for this process: measured, or deferred by
  this process (another process's deferral is timed again)."""
  return entry is not None and entry.get('deferred', PROCESS) == PROCESS


def tune(networks: Sequence[Network], devices=None, *,
         measure: Optional[Callable[[Sequence[Job]], Mapping[Job, float]]] = None,
         cpu: Optional[str] = None, directory: Optional[str] = None,
         log: Callable[[str], None] = logging.info,
         budget_s: float = TIME_BUDGET_S) -> convolution.ConvPlan:
  """The plan of the fastest implementation of each phase of the networks' convs.

  Phases already in the cache for this machine are read, not timed; the others are timed by
  `measure(jobs) -> {job: seconds}` (default: a PhaseTimer on `devices`, the local devices by
  default) and added to the cache; phases whose candidates came close are timed again at the
  end (measure.retime, where it has one), the costliest first as far as the budget allows, and
  decided on those calls (DOUBTFUL). A conv that is not trained here (evaluation at its own
  batch, or a frozen network's forward pass and input gradient) takes the decisions of the same
  layer at another batch when they are known, e.g. the guide CNN's from its own training at
  twice the batch: timing a large evaluation batch would cost more than it can save, and a
  layer's fastest implementation seldom changes with the batch (the main job's guide at b32
  and b64: the same choices in its 4 timed phases on an AVX2 AMD EPYC). Off CPU nothing is
  timed: XLA's convolution everywhere. Logs a line when it starts timing (seconds, on a first
  run) and one when it is done, then one per network with what it uses.
  """
  devices = list(devices or jax.local_devices())
  backend = devices[0].platform
  uses = {net.name: conv_uses(net) for net in networks}
  needed, calls = collections.defaultdict(set), collections.Counter()
  for net_uses in uses.values():
    for sig, use in net_uses.items():
      needed[sig].update(use.phases)
      calls[sig] += use.calls
  if backend != 'cpu':
    for name in uses:
      log(f'Convs of the {name}: XLA\'s convolution on {backend} (it tunes its own), not timed.')
    return tuple(sorted((sig, convolution.ConvChoice()) for sig in needed))

  measure = measure or PhaseTimer(devices)
  path = cache_path(directory)
  cache = read_cache(path)
  entries = cache.setdefault(machine_key(cpu or cpu_model(), backend, len(devices)), {})
  missing = lambda sigs: {(sig, phase) for sig in sigs for phase in needed[sig]
                          if not _decided(entries.get(signature_key(sig), {}).get(phase))}
  untrained = {sig for sig, phases in needed.items() if 'kernel_grad' not in phases}
  todo = missing(set(needed) - untrained)
  announce = lambda: log(f'Conv tuning: timing the implementations of each conv on this '
                         f'machine, once (the decisions are cached in {path}).')
  if todo:
    announce()
  # The layers trained here are timed first: their decisions serve the others too.
  timed = _measure_into(entries, todo, calls, measure, budget_s)
  relatives = {key: _same_layer(entries, *key) for key in missing(untrained)}
  borrowed = {key: relative for key, relative in relatives.items() if relative}
  untimed = missing(untrained) - set(borrowed)
  if untimed and not todo:
    announce()
  more = _measure_into(entries, untimed, calls, measure, budget_s - timed.seconds)
  todo |= untimed
  retimed = _retime_close(entries, todo, calls, measure,
                          budget_s - timed.seconds - more.seconds)
  if todo:
    files.write_json(path, cache)
    deferred = timed.deferred + more.deferred
    deferred_ms = 1e3 * (timed.deferred_seconds + more.deferred_seconds)
    log(f'Conv tuning: {timed.candidates + more.candidates} candidates of {len(todo)} conv '
        f'phases timed in {timed.seconds + more.seconds + retimed.seconds:.1f} s'
        f' ({retimed.candidates} of the closest timed again at the end' + (
            f'; {len(retimed.deferred)} close phases not, past the budget'
            if retimed.deferred else '') + ').' + (
            f' {len(deferred)} phases worth tuning ({deferred_ms:.1f} ms a step at their '
            f'reference) keep it in this run: the tuning stops at its {budget_s:g} s budget '
            f'(conv_tuning.TIME_BUDGET_S); a later run tunes them.' if deferred else ''))

  def choice(sig):
    return convolution.ConvChoice(**{
        p: entries[signature_key(borrowed.get((sig, p), sig))][p]['choice']
        for p in convolution.CONV_PHASES
        if (sig, p) in borrowed or p in entries.get(signature_key(sig), {})})

  plan = agreed(tuple(sorted((sig, choice(sig)) for sig in needed)))
  choices = dict(plan)
  for name, net_uses in uses.items():
    measured = any((sig, phase) in todo for sig, use in net_uses.items() for phase in use.phases)
    log(f'Convs tuned for the {name} ({"measured" if measured else "cached"}): ' + ', '.join(
        f'{_short(sig)}: {describe(choices[sig], use.phases)}'
        + _borrowed_note(sig, use.phases, borrowed) for sig, use in net_uses.items()))
  return plan


def agreed(plan: convolution.ConvPlan) -> convolution.ConvPlan:
  """Process 0's choices on every process (the same signatures everywhere): the processes of a
  multi-host run must all compile the same steps, whatever their own timings said."""
  if jax.process_count() == 1:
    return plan
  names = [convolution.PHASE_CANDIDATES[phase] for phase in convolution.CONV_PHASES]
  codes = np.array([[n.index(impl) for n, impl in zip(names, choice)] for _, choice in plan],
                   np.int32).reshape(len(plan), len(names))
  codes = np.asarray(multihost_utils.broadcast_one_to_all(codes))
  return tuple((sig, convolution.ConvChoice(*(n[i] for n, i in zip(names, row))))
               for (sig, _), row in zip(plan, codes))


def plan_to_json(plan: convolution.ConvPlan) -> dict:
  """{signature key: {phase: implementation}}: a plan as a run saves it."""
  return {signature_key(sig): choice._asdict() for sig, choice in plan}


def plan_from_json(data: dict) -> convolution.ConvPlan:
  return tuple(sorted((_parse_signature(key), convolution.ConvChoice(**choice))
                      for key, choice in data.items()))


def plan_for(implementation: str, networks: Sequence[Network], devices=None,
             **kwargs) -> Optional[convolution.ConvPlan]:
  """tune(networks) when `implementation` is 'tuned' (config.conv_implementation), else None."""
  return tune(networks, devices, **kwargs) if implementation == 'tuned' else None
