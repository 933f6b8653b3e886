"""The speed benchmark of a config: compile times, step rates, FLOPs, utilisation, eval, memory.

The steps timed are the ones training runs (``steps.make_pmapped_steps``), on the real data of
``config.data`` (workloads.py). Alternative GAN iterations (``Options.variants``, see
workloads.make_gan_iteration: the seed's two calls, G step then D step, or one device only) are
timed in turns with the training path, so that changes to the steps can be judged by numbers
from one run.

Timings are medians of ``runs`` runs of ``steps`` steps after ``warmup`` steps; min and max
show the spread. On a shared machine they are noisy: compare figures from the same run only.
"""

import dataclasses
import math
import statistics
import time
import warnings
from typing import Optional, Sequence

import jax

from benchmarks import breakdown
from benchmarks import timing
from benchmarks import workloads
from srgan_jax import distributed
from srgan_jax import evaluate as evaluate_lib
from srgan_jax import input_pipeline
from srgan_jax import models
from srgan_jax import steps
from srgan_jax import train
from srgan_jax import validation
from srgan_jax.state import AXIS

# Figures every run prints (the variants and the eval add theirs); tests check these.
CORE_FIGURES = (
    'compile_s/pretrain', 'compile_s/gan',
    'pretrain/steps_per_s', 'pretrain/steps_per_s_min', 'pretrain/steps_per_s_max',
    'pretrain/images_per_s',
    'gan/steps_per_s', 'gan/steps_per_s_min', 'gan/steps_per_s_max', 'gan/images_per_s',
    'flops_per_step/pretrain', 'flops_per_step/gan',
    'achieved_gflops/pretrain', 'achieved_gflops/gan',
    'peak_gflops/one_device', 'peak_gflops/all_devices',
    'utilisation_pct/pretrain', 'utilisation_pct/gan',
    'input_pipeline/ms_per_step', 'input_pipeline/fraction_of_gan_step',
    'input_pipeline/fraction_of_pretrain_step',
    'memory/peak_rss_mib',
)
EVAL_FIGURES = ('eval/seconds', 'eval/images_per_s')
SUMMARY_FIGURES = (
    'gan/steps_per_s', 'gan/images_per_s', 'pretrain/steps_per_s', 'pretrain/images_per_s',
    'flops_per_step/gan', 'achieved_gflops/gan', 'peak_gflops/all_devices',
    'utilisation_pct/gan', 'eval/images_per_s', 'input_pipeline/fraction_of_gan_step',
    'memory/peak_rss_mib')


@dataclasses.dataclass
class Options:
  """What to measure and how long; the defaults give >= 5 runs per figure."""
  steps: int = 5              # K steps per timed run.
  runs: int = 5               # timed runs (median, min, max).
  warmup: int = 1             # untimed steps after compilation.
  peak_matmul_size: int = 2048
  peak_runs: int = 5
  eval: bool = True
  eval_runs: int = 1
  judge_workdir: str = ''     # a judge checkpoint; '' = random LeNet (cost only).
  random_vgg: bool = False
  variants: Sequence[str] = ()
  # FLOPs from XLA:CPU's analysis of the same steps; None: when not running on CPU.
  flops_on_cpu: Optional[bool] = None
  input_pipeline_steps: int = 50
  breakdown: bool = False     # time each network's pass alone (where the time goes).


def run(config, options: Optional[Options] = None, out=None) -> dict:
  """Runs every measurement for `config`; prints the figures and returns {name: value}."""
  options = options or Options()
  workloads.check_variants(options.variants)
  if options.runs < 1 or options.steps < 1:
    raise ValueError('runs and steps must be >= 1')
  rep = timing.Reporter(out)
  devices = jax.local_devices()
  _prepare_config(config, options, devices, rep)
  workload = workloads.make_workload(config, devices, rep)
  batch = workload.batch(0)
  pmapped = _named_steps(config, devices)
  compiled = _compile(workload, batch, pmapped, rep)
  counter = _flop_counter(options, devices, rep)
  flops = _count_flops(workload, batch, compiled, counter, rep)
  # The machine's matmul peak, measured before the step timings and again after them (the
  # larger is kept: on a shared machine the load in between can halve either).
  peak_before = timing.measure_peak(options.peak_matmul_size, options.peak_runs, devices)
  # Timed with the steps compiled above: calling the pmapped functions would compile each again.
  seconds = {'pretrain': _time_pretrain(workload, batch, compiled['pretrain'], options, rep),
             'gan': _time_gan_iterations(workload, counter is not None, options, rep,
                                         compiled['gan'])}
  peak_after = timing.measure_peak(options.peak_matmul_size, options.peak_runs, devices)
  peak_one, peak_all = _report_peaks(peak_before, peak_after, len(devices), options, rep)
  _report_utilisation(flops, seconds, peak_all, rep)
  if options.breakdown:
    breakdown.report(workload, batch, options, rep, peak_one, seconds['gan'])
  _time_input_pipeline(workload, seconds, options, rep)
  if options.eval:
    _time_eval(workload, options, rep)
  _finish(options, rep)
  return rep.figures


def _prepare_config(config, options: Options, devices, rep: timing.Reporter) -> None:
  """Applies --random_vgg, validates `config` and describes the run."""
  if options.random_vgg:
    config.loss.vgg.random_weights_for_benchmark = True
    if config.loss.content != 'vgg':
      rep.info(f'--random_vgg has no effect: config.loss.content is {config.loss.content!r}')
  validation.validate_config(config, jax.device_count())
  rep.info(f'{len(devices)} {devices[0].platform} devices ({devices[0].device_kind}); batch '
           f'{config.batch_size}, x{config.data.scale}, {config.data.channels} channel(s), '
           f'content {config.loss.content}, auxiliary {config.loss.auxiliary}, generator '
           f'{config.generator.num_res_blocks} blocks x {config.generator.features}')
  rep.info(f'K={options.steps} steps per run, {options.runs} runs, {options.warmup} warm-up '
           'steps; timings on a shared machine are noisy')


def _named_steps(config, devices) -> dict:
  """steps.make_pmapped_steps over `devices`, by name: {'pretrain': ..., 'gan': ...}."""
  return dict(zip(('pretrain', 'gan'), steps.make_pmapped_steps(config, devices)))


def _compile(workload: workloads.Workload, batch, pmapped: dict,
             rep: timing.Reporter) -> dict:
  """Compiles (lower + compile) each pmapped training step: {name: compiled}."""
  compiled = {}
  for name, step in pmapped.items():
    compiled[name], lo, co = timing.lower_compile(step, workload.g_state, workload.d_state, batch,
                                                  workload.frozen)
    rep.figure(f'compile_s/{name}', lo + co, 's', f'lower {lo:.2f} s + compile {co:.2f} s')
  return compiled


def _flop_counter(options: Options, devices, rep: timing.Reporter):
  """The CpuFlopCounter when FLOPs are counted on XLA:CPU (off CPU, or --flops_on_cpu), else
  None."""
  platform = devices[0].platform
  if not (options.flops_on_cpu if options.flops_on_cpu is not None else platform != 'cpu'):
    return None
  why = ('--flops_on_cpu' if platform == 'cpu' else
         f'the {platform} modules hide convolutions in library calls')
  rep.info('FLOPs: XLA:CPU cost analysis of the same steps on the per-device shapes, times '
           f'{len(devices)} devices ({why})')
  return timing.CpuFlopCounter(len(devices))


def _count_flops(workload: workloads.Workload, batch, compiled: dict, counter,
                 rep: timing.Reporter) -> dict:
  """FLOPs per call of each compiled training step over all devices: {name: FLOPs}."""
  if counter is None:
    flops = {name: timing.flops(c, len(workload.devices)) for name, c in compiled.items()}
  else:
    cpu_steps = _named_steps(workload.config, counter.devices)
    flops = {name: counter.flops(cpu_steps[name], workload.g_state, workload.d_state, batch,
                                 workload.frozen, batch_args=(2,)) for name in compiled}
  for name, value in flops.items():
    rep.figure(f'flops_per_step/{name}', value / 1e9, 'GFLOP', 'XLA cost analysis, all devices')
  return flops


def _time_pretrain(workload: workloads.Workload, batch, pretrain_step, options: Options,
                   rep: timing.Reporter) -> float:
  """Steady state of the pretrain step; returns its median seconds per step."""
  state = {'g': workloads.fresh_copy(workload.g_state, workload.devices)}  # It is consumed.

  def once():
    state['g'], _, metrics = pretrain_step(state['g'], workload.d_state, batch, workload.frozen)
    return metrics
  per_step = timing.time_runs(once, options.steps, options.runs, options.warmup)
  return timing.report_rate(rep, 'pretrain', per_step, workload.config.batch_size)


class _Iteration:
  """A GAN iteration variant, its batch, and the states it consumes and carries call to call."""

  def __init__(self, workload: workloads.Workload, variant: str, fn=None):
    self.variant = variant
    self.devices = workload.devices[:1] if variant == 'one_device' else workload.devices
    self.fn = fn or workloads.make_gan_iteration(workload.config, self.devices, variant)
    self.batch = workload.batch(0, len(self.devices))
    self.g_state = workloads.fresh_copy(workload.g_state, self.devices)
    self.d_state = workloads.fresh_copy(workload.d_state, self.devices)
    self.frozen = distributed.replicate(workload.frozen, self.devices, AXIS)

  def args(self):
    return self.g_state, self.d_state, self.batch, self.frozen

  def __call__(self):
    self.g_state, self.d_state, metrics = self.fn(*self.args())
    return metrics


def _prepare_iteration(workload: workloads.Workload, variant: str, flops_on_cpu: bool,
                       rep: timing.Reporter, fn=None) -> _Iteration:
  """The variant's iteration after its first call (reported, with the compile time and FLOPs
  of one_device, whose pmapped call has other shapes than the training path's); `fn`: the
  variant's function when it is compiled already."""
  iteration = _Iteration(workload, variant, fn)
  if variant == 'one_device':
    compiled, lo, co = timing.lower_compile(iteration.fn, *iteration.args())
    rep.figure(f'variant/{variant}/compile_s', lo + co, 's')
    if flops_on_cpu:
      counter = timing.CpuFlopCounter(len(iteration.devices))
      cpu_fn = workloads.make_gan_iteration(workload.config, counter.devices, variant)
      v_flops = counter.flops(cpu_fn, *iteration.args(), batch_args=(2,))
    else:
      v_flops = timing.flops(compiled, len(iteration.devices))
    rep.figure(f'variant/{variant}/flops_per_step', v_flops / 1e9, 'GFLOP',
               'XLA cost analysis, all devices')
  t0 = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "Some donated buffers were not usable".
    jax.block_until_ready(iteration())
  if variant != 'train':
    rep.figure(f'variant/{variant}/first_call_s', time.perf_counter() - t0, 's')
  return iteration


def _time_gan_iterations(workload: workloads.Workload, flops_on_cpu: bool, options: Options,
                         rep: timing.Reporter, compiled_train=None) -> float:
  """Steady state of the GAN iteration, per variant; returns the training path's median
  seconds per step.

  All variants are compiled and warmed up first, then timed in turns (run r of every variant
  before run r+1) so that drifting load on a shared machine biases none of them.
  """
  order = ['train'] + [v for v in dict.fromkeys(options.variants) if v != 'train']
  if 'one_device' in order and len(workload.devices) == 1:
    rep.info('variant one_device skipped: there is only one device')
    order.remove('one_device')
  iterations = [_prepare_iteration(workload, variant, flops_on_cpu, rep,
                                   compiled_train if variant == 'train' else None)
                for variant in order]
  per_step = {v: [] for v in order}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for iteration in iterations:
      timing.time_runs(iteration, 1, 0, options.warmup)
    for _ in range(options.runs):
      for iteration in iterations:
        per_step[iteration.variant] += timing.time_runs(iteration, options.steps, 1, 0)
  seconds = {v: timing.report_rate(rep, 'gan' if v == 'train' else f'variant/{v}',
                                   per_step[v], workload.config.batch_size) for v in order}
  for variant in order[1:]:
    rep.figure(f'variant/{variant}/speedup', seconds['train'] / seconds[variant], 'x',
               'images/s of the variant over the training path\'s, timed in turns')
  return seconds['train']


def _report_peaks(peak_before, peak_after, num_devices: int, options: Options,
                  rep: timing.Reporter):
  """Reports the larger of each matmul peak measured before and after the step timings;
  returns (one device, all devices) GFLOP/s."""
  size = options.peak_matmul_size
  peaks = []
  for i, name in enumerate(('one_device', 'all_devices')):
    where = '1 device' if i == 0 else f'pmapped over {num_devices} devices'
    peaks.append(max(peak_before[i], peak_after[i]))
    rep.figure(f'peak_gflops/{name}', peaks[i], 'GFLOP/s',
               f'{size}x{size} f32 matmul, {where}; max of before ({peak_before[i]:.4g}) and '
               f'after ({peak_after[i]:.4g}) the step timings, medians of {options.peak_runs}')
  return tuple(peaks)


def _report_utilisation(flops: dict, seconds: dict, peak_all: float,
                        rep: timing.Reporter) -> None:
  """The FLOP rate each step achieved, and its share of the measured all-devices peak."""
  for name in ('pretrain', 'gan'):
    achieved = flops[name] / seconds[name] / 1e9
    rep.figure(f'achieved_gflops/{name}', achieved, 'GFLOP/s')
    rep.figure(f'utilisation_pct/{name}', 100.0 * achieved / peak_all, '%',
               'of the measured matmul peak over all devices')


def _time_input_pipeline(workload: workloads.Workload, seconds: dict, options: Options,
                         rep: timing.Reporter) -> None:
  """The input pipeline (host work per step) as a fraction of each step's time."""
  t0 = time.perf_counter()
  for step in range(options.input_pipeline_steps):
    workload.batch(step)
  sec_input = (time.perf_counter() - t0) / options.input_pipeline_steps
  rep.figure('input_pipeline/ms_per_step', 1e3 * sec_input, 'ms',
             'batch_indices + get_batch + shard')
  rep.figure('input_pipeline/fraction_of_gan_step', sec_input / seconds['gan'], '')
  rep.figure('input_pipeline/fraction_of_pretrain_step', sec_input / seconds['pretrain'], '')


def _time_eval(workload: workloads.Workload, options: Options, rep: timing.Reporter) -> None:
  """Evaluation throughput: SR + PSNR/SSIM + judge (+ FID statistics) over the test images."""
  config, n = workload.config, len(workload.devices)
  judge, judge_vars = workloads.make_judge(config, options.judge_workdir, rep)
  test_split = input_pipeline.load_split(config, 'test')
  eval_fn = evaluate_lib.make_eval_fn(models.create_generator(config), judge,
                                      config.data.scale, config.eval.crop_border,
                                      workload.devices)
  g_vars = train.inference_variables(workload.g_state)
  eb = config.eval.batch_size
  # Compiles.
  evaluate_lib.evaluate(eval_fn, g_vars, judge_vars, input_pipeline.head(test_split, eb), eb, n)
  times = []
  for _ in range(options.eval_runs):
    t0 = time.perf_counter()
    evaluate_lib.evaluate(eval_fn, g_vars, judge_vars, test_split, eb, n)
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  rep.figure('eval/seconds', sec, 's', f'{test_split.num_examples} test images')
  rep.figure('eval/images_per_s', test_split.num_examples / sec, 'images/s')


def _finish(options: Options, rep: timing.Reporter) -> None:
  """Peak memory, a warning for any non-finite figure, and the summary line."""
  rep.figure('memory/peak_rss_mib', train.peak_rss_mib(), 'MiB', 'ru_maxrss of this process')
  bad = [k for k, v in rep.figures.items() if not math.isfinite(v)]
  if bad:
    rep.warning(f'non-finite figures: {bad}')
  rep.summary(list(SUMMARY_FIGURES) +
              [f'variant/{v}/speedup' for v in options.variants if v != 'train'])
