"""Benchmark of the SRGAN steps: compile time, throughput, FLOPs, utilisation, eval, memory.

  python -m srgan_jax.benchmark --config=configs/mnist_srgan.py
  python -m srgan_jax.benchmark --config=configs/seed_x2_rgb.py --config.loss.content=vgg \
      --random_vgg
  XLA_FLAGS=--xla_force_host_platform_device_count=1 python -m srgan_jax.benchmark ...

Every measured figure is printed as one line ``bench: <name> = <value> <unit>`` and the run
ends with one ``summary: key=value ...`` line. The steps timed are the ones training runs
(``train.make_pmapped_steps``), on the real data of ``config.data``; pretrained networks the
losses need (the guide classifier, VGG19) and the evaluation judge are randomly initialised
unless given, since the cost of a step does not depend on the values of frozen weights.
Alternative GAN iterations (``--variants``, see make_gan_iteration: the seed's two calls, G
step then D step, or one device only) are timed in turns with the training path, so that
changes to train.py can be judged by numbers from one run.

FLOPs come from XLA's cost analysis of the compiled steps (on GPU, whose compiled modules hide
convolutions in cuDNN calls, of the same steps compiled for the CPU). The peak is a
measured f32 matmul on the same machine, so utilisation is relative to what XLA reaches there.

Timings are medians of ``--runs`` runs of ``--steps`` steps after ``--warmup`` steps, each run
ended by ``jax.block_until_ready``; min and max show the spread. On a shared machine they are
noisy: compare figures from the same invocation only.
"""

import dataclasses
import functools
import math
import statistics
import sys
import time
import warnings
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

VARIANTS = ('two_steps', 'one_device')
PREFIX = 'bench: '
SUMMARY_PREFIX = 'summary: '

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


class Reporter:
  """Prints and keeps the figures."""

  def __init__(self, out=None):
    self.out = out or sys.stdout
    self.figures = {}

  def figure(self, name: str, value: float, unit: str = '', note: str = ''):
    value = float(value)
    self.figures[name] = value
    line = f'{PREFIX}{name} = {value:.6g} {unit}'.rstrip()
    if note:
      line += f'  # {note}'
    print(line, file=self.out, flush=True)

  def info(self, text: str):
    print(f'info: {text}', file=self.out, flush=True)

  def warning(self, text: str):
    print(f'WARNING: {text}', file=self.out, flush=True)

  def summary(self, keys: Sequence[str]):
    parts = [f'{k}={self.figures[k]:.4g}' for k in keys if k in self.figures]
    print(SUMMARY_PREFIX + ' '.join(parts), file=self.out, flush=True)


def parse_figures(text: str) -> dict:
  """{name: value} of the ``bench:`` lines in a benchmark's output (for tests and scripts)."""
  out = {}
  for line in text.splitlines():
    if line.startswith(PREFIX):
      name, _, rest = line[len(PREFIX):].partition(' = ')
      out[name.strip()] = float(rest.split()[0])
  return out


# ---------------------------------------------------------------------------------------------
# Timing helpers.


def _time_runs(step_fn: Callable[[], None], steps: int, runs: int, warmup: int):
  """Seconds per step of `runs` runs of `steps` calls (each ended by block_until_ready)."""
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    jax.block_until_ready(step_fn())
  per_step = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = None
    for _ in range(steps):
      out = step_fn()
    jax.block_until_ready(out)
    per_step.append((time.perf_counter() - t0) / steps)
  return per_step


def _report_rate(rep: Reporter, prefix: str, per_step: Sequence[float], batch_size: int):
  med = statistics.median(per_step)
  rep.figure(f'{prefix}/steps_per_s', 1.0 / med, 'steps/s',
             f'median of {len(per_step)} runs')
  rep.figure(f'{prefix}/steps_per_s_min', 1.0 / max(per_step), 'steps/s')
  rep.figure(f'{prefix}/steps_per_s_max', 1.0 / min(per_step), 'steps/s')
  rep.figure(f'{prefix}/images_per_s', batch_size / med, 'images/s')
  return med


def _cost_flops(analysis) -> float:
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', float('nan')))


def _flops(compiled, num_devices: int) -> float:
  """FLOPs of one call of a compiled pmapped step over all devices (XLA cost analysis).

  The pmapped module is the per-device program (on CPU it agrees within 0.1% with jit(vmap)
  of the global batch), so the global cost is that times the device count.
  """
  return _cost_flops(compiled.cost_analysis()) * num_devices


def _abstract(tree, per_device_batch: bool = False):
  """ShapeDtypeStructs of `tree`'s arrays ((1, ...) leading dim for a per-device batch)."""
  import jax  # pylint: disable=g-import-not-at-top

  def leaf(x):
    if not hasattr(x, 'dtype'):
      return x
    shape = ((1,) + tuple(x.shape[1:])) if per_device_batch else tuple(x.shape)
    return jax.ShapeDtypeStruct(shape, x.dtype)
  return jax.tree.map(leaf, tree)


def _lower_compile(fn, *args):
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t1


class CpuFlopCounter:
  """FLOPs of a step by XLA:CPU's cost analysis, whatever device the step runs on.

  On GPU the compiled module hides convolutions in cuDNN calls, which XLA's cost analysis
  does not count (it reported ~1% of the real figure on an H200); so the same step is
  compiled for one CPU device on its per-device shapes, and the count scaled by the number of
  devices. On CPU the compiled training steps themselves are analysed instead.
  """

  def __init__(self, num_devices: int):
    import jax  # pylint: disable=g-import-not-at-top
    self.num_devices = num_devices
    self.cpu = jax.devices('cpu')[:1]

  def pmapped_steps(self, config):
    from srgan_jax import train  # pylint: disable=g-import-not-at-top
    return train.make_pmapped_steps(config, self.cpu)

  def iteration(self, config, variant):
    return make_gan_iteration(config, self.cpu, variant)

  def flops(self, fn, *args, batch_args=()) -> float:
    abstract = [_abstract(a, per_device_batch=i in batch_args) for i, a in enumerate(args)]
    return _flops(fn.lower(*abstract).compile(), 1) * self.num_devices


def measure_peak(size: int, runs: int, devices):
  """Measured f32 matmul GFLOP/s (one device, pmapped over all `devices`): medians of `runs`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  n = len(devices)
  key = jax.random.PRNGKey(0)
  a = jax.random.normal(key, (size, size), jnp.float32)
  b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), jnp.float32)
  flops = 2.0 * size ** 3
  one = jax.jit(jnp.matmul)
  a1, b1 = jax.device_put(a, devices[0]), jax.device_put(b, devices[0])
  peak_one = flops / statistics.median(_time_runs(lambda: one(a1, b1), 1, runs, 1)) / 1e9
  many = jax.pmap(jnp.matmul, axis_name='peak', devices=devices)
  stacked = NamedSharding(Mesh(np.asarray(devices), ('peak',)), PartitionSpec('peak'))
  an = jax.device_put(jnp.stack([a] * n), stacked)
  bn = jax.device_put(jnp.stack([b] * n), stacked)
  peak_all = n * flops / statistics.median(_time_runs(lambda: many(an, bn), 1, runs, 1)) / 1e9
  return peak_one, peak_all


# ---------------------------------------------------------------------------------------------
# Frozen networks with random weights.


def random_frozen(config, rep: Reporter):
  """train.Frozen with randomly initialised networks where the losses need them (cost only)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from srgan_jax import models  # pylint: disable=g-import-not-at-top
  from srgan_jax import train  # pylint: disable=g-import-not-at-top
  frozen = train.Frozen()
  if config.loss.auxiliary == 'classifier' or config.loss.content == 'classifier':
    rep.warning(f'the {config.classifier.architecture!r} loss classifier has RANDOM weights: '
                'timings only, never results.')
    model = models.create_classifier(config.classifier.architecture)
    shape = (1, 28, 28, config.data.channels)
    variables = jax.jit(lambda r: model.init(r, jnp.zeros(shape), train=False))(
        jax.random.PRNGKey(1))
    frozen = frozen.replace(classifier=model, classifier_vars=variables)
  if config.loss.content == 'vgg':
    if config.loss.vgg.random_weights_for_benchmark:
      rep.warning('VGG19 with RANDOM weights (--random_vgg / '
                  'config.loss.vgg.random_weights_for_benchmark): timings only, never results.')
    params, fn = train.load_vgg(config.loss.vgg)
    frozen = frozen.replace(vgg_params=params, vgg_fn=fn)
  return frozen


def make_judge(config, judge_workdir: str, rep: Reporter):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from srgan_jax import models  # pylint: disable=g-import-not-at-top
  if judge_workdir:
    from srgan_jax import classifier_train  # pylint: disable=g-import-not-at-top
    model, variables, _ = classifier_train.load(judge_workdir)
    return model, variables
  rep.warning('the evaluation judge is a RANDOM LeNet: eval timings only.')
  model = models.create_classifier('lenet')
  shape = (1, 28, 28, config.data.channels)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros(shape), train=False))(
      jax.random.PRNGKey(2))
  return model, variables


# ---------------------------------------------------------------------------------------------
# GAN iterations (same maths as train.make_pmapped_steps).


def replicate(tree, devices):
  """`tree` placed once on every device of the pmap mesh (distributed.replicate)."""
  from srgan_jax import distributed  # pylint: disable=g-import-not-at-top
  from srgan_jax import train  # pylint: disable=g-import-not-at-top
  return distributed.replicate(tree, devices, train.AXIS)


def make_gan_iteration(config, devices, variant: str = 'train'):
  """A function (g_state, d_state, batch, frozen) -> (g_state, d_state, metrics) that consumes
  (donates) the states it is given.

  'train': train.make_pmapped_steps's GAN iteration (gan_step, one pmapped call), as trained.
  'two_steps': the seed's iteration as two pmapped calls, train.generator_step then
    train.discriminator_step (the same maths; D's pass over SR runs twice).
  'one_device': 'train' pmapped over the first device only (the caller gives devices[:1]).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from srgan_jax import train  # pylint: disable=g-import-not-at-top
  if variant not in ('train',) + VARIANTS:
    raise ValueError(f'unknown variant {variant!r}: use some of {VARIANTS}')
  if variant != 'two_steps':
    return train.make_pmapped_steps(config, devices)[1]
  pmap = functools.partial(jax.pmap, axis_name=train.AXIS, devices=devices)
  gen = pmap(functools.partial(train.generator_step, config=config, adversarial=True),
             in_axes=(None, None, 0, None), out_axes=(None, 0, None), donate_argnums=(0,))
  disc = pmap(functools.partial(train.discriminator_step, config=config),
              in_axes=(None, 0, 0), out_axes=(None, None), donate_argnums=(0,))

  def iteration(g_state, d_state, batch, frozen):
    g_state, sr, metrics = gen(g_state, d_state, batch, frozen)
    d_state, d_metrics = disc(d_state, batch, sr)
    return g_state, d_state, {**metrics, **d_metrics}
  return iteration


def breakdown(config, g_state, d_state, batch, frozen, device, options, rep, peak_one):
  """Where a GAN iteration's time goes: each network's forward + backward pass, on one
  device's share of the batch, compiled and timed alone (XLA FLOPs, GFLOP/s, share of the
  one-device matmul peak). Returns {part: seconds per pass}.

  The passes are those the iteration needs: the generator's w.r.t. its parameters; the
  discriminator's w.r.t. its parameters and its input (it runs on HR and on SR: two passes
  per iteration); the frozen classifier's and VGG's w.r.t. their input only.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from srgan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from srgan_jax import models  # pylint: disable=g-import-not-at-top
  put = lambda tree: jax.device_put(jax.device_get(tree), device)
  hr = put(input_pipeline.to_model_range(batch['hr'][0]))
  lr = put(input_pipeline.to_model_range(batch['lr'][0]))

  def train_mode_pass(model, variables, wrt_input):
    def loss(params, x):
      out, _ = model.apply({**variables, 'params': params}, x, train=True,
                           mutable=['batch_stats'])
      return sum(jnp.sum(o) for o in jax.tree_util.tree_leaves(out))
    return jax.jit(jax.grad(loss, argnums=(0, 1) if wrt_input else 0))

  def frozen_pass(fn):
    return jax.jit(jax.grad(lambda params, x: sum(
        jnp.sum(o) for o in jax.tree_util.tree_leaves(fn(params, x))), argnums=1))

  g_vars = put({'params': g_state.params, 'batch_stats': g_state.batch_stats})
  d_vars = put({'params': d_state.params, 'batch_stats': d_state.batch_stats})
  parts = {
      'generator': (train_mode_pass(models.create_generator(config), g_vars, False),
                    g_vars['params'], lr),
      'discriminator': (train_mode_pass(models.create_discriminator(config), d_vars, True),
                        d_vars['params'], hr)}
  if frozen.classifier is not None:
    classify = lambda v, x: frozen.classifier.apply(v, x, train=False)
    parts['classifier'] = (frozen_pass(classify), put(frozen.classifier_vars), hr)
  if frozen.vgg_fn is not None:
    parts['vgg'] = (frozen_pass(frozen.vgg_fn), put(frozen.vgg_params), hr)
  seconds = {}
  for name, (fn, params, x) in parts.items():
    flops = _cost_flops(fn.lower(params, x).compile().cost_analysis())
    per_pass = statistics.median(_time_runs(lambda fn=fn, p=params, x=x: fn(p, x),
                                            options.steps, options.runs, options.warmup))
    seconds[name] = per_pass
    rep.figure(f'breakdown/{name}/ms', 1e3 * per_pass, 'ms',
               f'fwd+bwd, one device, batch {x.shape[0]}')
    rep.figure(f'breakdown/{name}/gflop', flops / 1e9, 'GFLOP')
    rep.figure(f'breakdown/{name}/utilisation_pct', 100.0 * flops / per_pass / 1e9 / peak_one,
               '%', f'{flops / per_pass / 1e9:.4g} GFLOP/s of the one-device peak')
  return seconds


def _fresh_copy(tree, devices):
  """A replicated copy of `tree` that a donating step may consume."""
  import jax  # pylint: disable=g-import-not-at-top
  return replicate(jax.device_get(tree), devices)


# ---------------------------------------------------------------------------------------------
# The benchmark.


def run(config, options: Optional[Options] = None, out=None) -> dict:
  """Runs every measurement for `config`; prints the figures and returns {name: value}."""
  import jax  # pylint: disable=g-import-not-at-top
  from srgan_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from srgan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from srgan_jax import models  # pylint: disable=g-import-not-at-top
  from srgan_jax import train  # pylint: disable=g-import-not-at-top
  from srgan_jax import validation  # pylint: disable=g-import-not-at-top

  options = options or Options()
  for v in options.variants:
    if v not in VARIANTS:
      raise ValueError(f'unknown variant {v!r}: use some of {VARIANTS}')
  if options.runs < 1 or options.steps < 1:
    raise ValueError('runs and steps must be >= 1')
  rep = Reporter(out)
  if options.random_vgg:
    config.loss.vgg.random_weights_for_benchmark = True
    if config.loss.content != 'vgg':
      rep.info(f'--random_vgg has no effect: config.loss.content is {config.loss.content!r}')
  devices = jax.local_devices()
  n = len(devices)
  validation.validate_config(config, jax.device_count())
  input_pipeline.validate_data_config(config.data)
  bs = config.batch_size
  rep.info(f'{n} {devices[0].platform} devices ({devices[0].device_kind}); batch {bs}, '
           f'x{config.data.scale}, {config.data.channels} channel(s), content '
           f'{config.loss.content}, auxiliary {config.loss.auxiliary}, generator '
           f'{config.generator.num_res_blocks} blocks x {config.generator.features}')
  rep.info(f'K={options.steps} steps per run, {options.runs} runs, {options.warmup} warm-up '
           'steps; timings on a shared machine are noisy')

  frozen = random_frozen(config, rep)
  train_split = input_pipeline.load_split(config, 'train')
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(config.seed))
  rep.info(f'parameters: generator {models.count_params(g_state.params)}, discriminator '
           f'{models.count_params(d_state.params)}')

  def make_batch(step):
    idx = input_pipeline.batch_indices(config.seed, step, bs, train_split.num_examples,
                                       jax.process_index(), jax.process_count())
    return input_pipeline.shard(input_pipeline.get_batch(train_split, idx), n)

  batch = make_batch(0)
  # States as every step after the first sees them (pmap's out_axes=None outputs live on all
  # devices of its mesh). Passing the host-made states of create_train_states instead makes
  # jax 0.10 compile each step twice: once for the first call, once for the second.
  g_state, d_state = replicate((g_state, d_state), devices)

  # Compile (lower + compile) the two training steps, and their XLA cost analysis.
  pretrain_step, gan_step = train.make_pmapped_steps(config, devices)
  compiled_pre, lo, co = _lower_compile(pretrain_step, g_state, d_state, batch, frozen)
  rep.figure('compile_s/pretrain', lo + co, 's', f'lower {lo:.2f} s + compile {co:.2f} s')
  compiled_gan, lo, co = _lower_compile(gan_step, g_state, d_state, batch, frozen)
  rep.figure('compile_s/gan', lo + co, 's', f'lower {lo:.2f} s + compile {co:.2f} s')
  if options.flops_on_cpu if options.flops_on_cpu is not None else devices[0].platform != 'cpu':
    counter = CpuFlopCounter(n)
    why = ('--flops_on_cpu' if devices[0].platform == 'cpu' else
           f'the {devices[0].platform} modules hide convolutions in library calls')
    rep.info('FLOPs: XLA:CPU cost analysis of the same steps on the per-device shapes, times '
             f'{n} devices ({why})')
    c_pre, c_gan = counter.pmapped_steps(config)
    flops = {'pretrain': counter.flops(c_pre, g_state, d_state, batch, frozen, batch_args=(2,)),
             'gan': counter.flops(c_gan, g_state, d_state, batch, frozen, batch_args=(2,))}
  else:
    counter = None
    flops = {'pretrain': _flops(compiled_pre, n), 'gan': _flops(compiled_gan, n)}
  for name in ('pretrain', 'gan'):
    rep.figure(f'flops_per_step/{name}', flops[name] / 1e9, 'GFLOP',
               'XLA cost analysis, all devices')

  # The machine's matmul peak, measured before the step timings and again after them (the
  # larger is kept: on a shared machine the load in between can halve either).
  peak_before = measure_peak(options.peak_matmul_size, options.peak_runs, devices)

  # Steady state of the pretrain step (it consumes the states it is given: a copy).
  state = {'g': _fresh_copy(g_state, devices)}

  def pretrain_once():
    state['g'], _, metrics = pretrain_step(state['g'], d_state, batch, frozen)
    return metrics
  sec_pre = _report_rate(rep, 'pretrain',
                         _time_runs(pretrain_once, options.steps, options.runs, options.warmup),
                         bs)

  # Steady state of the GAN iteration, per variant. All variants are compiled and warmed up
  # first, then timed in turns (run r of every variant before run r+1) so that drifting load
  # on a shared machine biases none of them.
  order = ['train'] + [v for v in dict.fromkeys(options.variants) if v != 'train']
  if 'one_device' in order and n == 1:
    rep.info('variant one_device skipped: there is only one device')
    order.remove('one_device')
  gan_once = {}
  for variant in order:
    v_devices = devices[:1] if variant == 'one_device' else devices
    v_batch = make_batch(0) if len(v_devices) == n else input_pipeline.shard(
        jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch), len(v_devices))
    iteration = make_gan_iteration(config, v_devices, variant)
    state = {'g': _fresh_copy(g_state, v_devices), 'd': _fresh_copy(d_state, v_devices),
             'frozen': replicate(frozen, v_devices)}

    def once(iteration=iteration, state=state, v_batch=v_batch):
      state['g'], state['d'], metrics = iteration(state['g'], state['d'], v_batch,
                                                  state['frozen'])
      return metrics
    gan_once[variant] = once
    if variant == 'one_device':  # One pmapped call on other shapes: compile it, count FLOPs.
      compiled, lo, co = _lower_compile(iteration, state['g'], state['d'], v_batch,
                                        state['frozen'])
      rep.figure(f'variant/{variant}/compile_s', lo + co, 's')
      if counter is None:
        v_flops = _flops(compiled, len(v_devices))
      else:
        v_flops = counter.flops(counter.iteration(config, variant), state['g'], state['d'],
                                v_batch, state['frozen'], batch_args=(2,))
      rep.figure(f'variant/{variant}/flops_per_step', v_flops / 1e9, 'GFLOP',
                 'XLA cost analysis, all devices')
    t0 = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # "Some donated buffers were not usable".
      jax.block_until_ready(once())
    if variant != 'train':
      rep.figure(f'variant/{variant}/first_call_s', time.perf_counter() - t0, 's')
  per_step = {v: [] for v in order}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for variant in order:
      _time_runs(gan_once[variant], 1, 0, options.warmup)
    for _ in range(options.runs):
      for variant in order:
        per_step[variant] += _time_runs(gan_once[variant], options.steps, 1, 0)
  gan_seconds = {}
  for variant in order:
    prefix = 'gan' if variant == 'train' else f'variant/{variant}'
    gan_seconds[variant] = _report_rate(rep, prefix, per_step[variant], bs)
  sec_gan = gan_seconds['train']
  for variant in order[1:]:
    rep.figure(f'variant/{variant}/speedup', sec_gan / gan_seconds[variant], 'x',
               'images/s of the variant over the training path\'s, timed in turns')

  # Achieved FLOP rate against the measured matmul peak.
  peak_after = measure_peak(options.peak_matmul_size, options.peak_runs, devices)
  size = options.peak_matmul_size
  for i, name in enumerate(('one_device', 'all_devices')):
    where = '1 device' if i == 0 else f'pmapped over {n} devices'
    rep.figure(f'peak_gflops/{name}', max(peak_before[i], peak_after[i]), 'GFLOP/s',
               f'{size}x{size} f32 matmul, {where}; max of before ({peak_before[i]:.4g}) and '
               f'after ({peak_after[i]:.4g}) the step timings, medians of {options.peak_runs}')
  peak = max(peak_before[1], peak_after[1])
  for name, sec in (('pretrain', sec_pre), ('gan', sec_gan)):
    achieved = flops[name] / sec / 1e9
    rep.figure(f'achieved_gflops/{name}', achieved, 'GFLOP/s')
    rep.figure(f'utilisation_pct/{name}', 100.0 * achieved / peak, '%',
               'of the measured matmul peak over all devices')

  if options.breakdown:
    parts = breakdown(config, g_state, d_state, batch, frozen, devices[0], options, rep,
                      max(peak_before[0], peak_after[0]))
    # Per iteration, every device runs G once, D twice (HR and SR), the frozen networks once.
    per_device = parts['generator'] + 2 * parts['discriminator'] + sum(
        v for k, v in parts.items() if k not in ('generator', 'discriminator'))
    rep.figure('breakdown/parts_share_of_gan_step_pct', 100.0 * per_device / sec_gan, '%',
               'the parts timed alone, as run in one iteration, over the pmapped iteration')

  # Input pipeline (host work per step) as a fraction of the step time.
  t0 = time.perf_counter()
  for step in range(options.input_pipeline_steps):
    make_batch(step)
  sec_input = (time.perf_counter() - t0) / options.input_pipeline_steps
  rep.figure('input_pipeline/ms_per_step', 1e3 * sec_input, 'ms',
             'batch_indices + get_batch + shard')
  rep.figure('input_pipeline/fraction_of_gan_step', sec_input / sec_gan, '')
  rep.figure('input_pipeline/fraction_of_pretrain_step', sec_input / sec_pre, '')

  # Evaluation throughput: SR + PSNR/SSIM + judge (+ FID statistics) over the test images.
  if options.eval:
    judge, judge_vars = make_judge(config, options.judge_workdir, rep)
    test_split = input_pipeline.load_split(config, 'test')
    eval_fn = evaluate_lib.make_eval_fn(models.create_generator(config), judge,
                                        config.data.scale, config.eval.crop_border, devices)
    g_vars = train.inference_variables(g_state)
    eb = config.eval.batch_size
    warm = input_pipeline.Split(test_split.hr[:eb], test_split.lr[:eb],
                                None if test_split.labels is None else test_split.labels[:eb])
    evaluate_lib.evaluate(eval_fn, g_vars, judge_vars, warm, eb, n)  # compiles
    times = []
    for _ in range(options.eval_runs):
      t0 = time.perf_counter()
      evaluate_lib.evaluate(eval_fn, g_vars, judge_vars, test_split, eb, n)
      times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    rep.figure('eval/seconds', sec, 's', f'{test_split.num_examples} test images')
    rep.figure('eval/images_per_s', test_split.num_examples / sec, 'images/s')

  rep.figure('memory/peak_rss_mib', train.peak_rss_mib(), 'MiB', 'ru_maxrss of this process')
  bad = [k for k, v in rep.figures.items() if not math.isfinite(v)]
  if bad:
    rep.warning(f'non-finite figures: {bad}')
  rep.summary(['gan/steps_per_s', 'gan/images_per_s', 'pretrain/steps_per_s',
               'pretrain/images_per_s', 'flops_per_step/gan', 'achieved_gflops/gan',
               'peak_gflops/all_devices', 'utilisation_pct/gan', 'eval/images_per_s',
               'input_pipeline/fraction_of_gan_step', 'memory/peak_rss_mib'] +
              [f'variant/{v}/speedup' for v in options.variants if v != 'train'])
  return rep.figures


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program, so that importing this
  module next to main.py, which defines --config too, is harmless)."""
  config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                  lock_config=True)
  flags.DEFINE_bool('random_vgg', False, 'Random VGG19 weights for a VGG content loss (cost '
                    'only; sets config.loss.vgg.random_weights_for_benchmark). Prints a warning.')
  flags.DEFINE_integer('steps', Options.steps, 'Steps per timed run (K).')
  flags.DEFINE_integer('runs', Options.runs, 'Timed runs per figure (median, min, max).')
  flags.DEFINE_integer('warmup', Options.warmup, 'Untimed steps after compilation.')
  flags.DEFINE_integer('peak_matmul_size', Options.peak_matmul_size,
                       'Size n of the n x n f32 matmul that measures the peak FLOP rate.')
  flags.DEFINE_integer('peak_runs', Options.peak_runs, 'Timed matmuls for the peak.')
  flags.DEFINE_bool('eval', Options.eval, 'Measure evaluation throughput.')
  flags.DEFINE_integer('eval_runs', Options.eval_runs, 'Timed passes over the test images.')
  flags.DEFINE_string('judge_workdir', '', 'A judge classifier workdir; default: a random LeNet.')
  flags.DEFINE_list('variants', list(Options.variants),
                    f'GAN iterations to time besides the training path: {", ".join(VARIANTS)}.')
  flags.DEFINE_bool('flops_on_cpu', None, 'Count FLOPs by compiling the steps for the CPU '
                    '(default: only when the devices are not CPUs).')
  flags.DEFINE_integer('input_pipeline_steps', Options.input_pipeline_steps,
                       'Batches timed for the input-pipeline cost.')
  flags.DEFINE_bool('breakdown', Options.breakdown, 'Also time each network\'s forward + '
                    'backward pass alone on one device (where the time goes).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from srgan_jax import platform  # pylint: disable=g-import-not-at-top
  platform.configure_cpu_devices(FLAGS.config.cpu_devices_per_core)
  options = Options(steps=FLAGS.steps, runs=FLAGS.runs, warmup=FLAGS.warmup,
                    peak_matmul_size=FLAGS.peak_matmul_size, peak_runs=FLAGS.peak_runs,
                    eval=FLAGS.eval, eval_runs=FLAGS.eval_runs,
                    judge_workdir=FLAGS.judge_workdir, random_vgg=FLAGS.random_vgg,
                    variants=tuple(FLAGS.variants), flops_on_cpu=FLAGS.flops_on_cpu,
                    input_pipeline_steps=FLAGS.input_pipeline_steps,
                    breakdown=FLAGS.breakdown)
  run(FLAGS.config, options)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
