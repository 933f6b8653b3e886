"""Where a GAN iteration's time goes: each network's forward + backward pass timed alone.

Each pass runs on one device's share of the batch, compiled and timed alone, and is reported
with its XLA FLOPs and its share of the one-device matmul peak. The passes are those the
iteration needs: the generator's w.r.t. its parameters; the discriminator's w.r.t. its
parameters and its input (it runs on HR and on SR: two passes per iteration); the frozen
classifier's and VGG's w.r.t. their input only.
"""

import statistics

import jax
import jax.numpy as jnp

from benchmarks import timing
from benchmarks import workloads
from srgan_jax import image_ops
from srgan_jax import models


def _sum_of_outputs(out):
  return sum(jnp.sum(o) for o in jax.tree_util.tree_leaves(out))


def _train_mode_pass(model, variables, wrt_input: bool):
  """The jitted gradient of a train-mode apply of `model` (w.r.t. params, and input)."""
  def loss(params, x):
    out, _ = model.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
    return _sum_of_outputs(out)
  return jax.jit(jax.grad(loss, argnums=(0, 1) if wrt_input else 0))


def _frozen_pass(fn):
  """The jitted gradient of a frozen network's `fn(params, x)` w.r.t. its input."""
  return jax.jit(jax.grad(lambda params, x: _sum_of_outputs(fn(params, x)), argnums=1))


def _parts(workload: workloads.Workload, batch, device) -> dict:
  """{part: (gradient fn, params, input)} of the passes of one iteration, on `device`."""
  put = lambda tree: jax.device_put(jax.device_get(tree), device)
  hr = put(image_ops.to_model_range(batch['hr'][0]))
  lr = put(image_ops.to_model_range(batch['lr'][0]))
  g_state, d_state, frozen = workload.g_state, workload.d_state, workload.frozen
  g_vars = put({'params': g_state.params, 'batch_stats': g_state.batch_stats})
  d_vars = put({'params': d_state.params, 'batch_stats': d_state.batch_stats})
  parts = {
      'generator': (_train_mode_pass(models.create_generator(workload.config), g_vars, False),
                    g_vars['params'], lr),
      'discriminator': (
          _train_mode_pass(models.create_discriminator(workload.config), d_vars, True),
          d_vars['params'], hr)}
  if frozen.classifier is not None:
    classify = lambda v, x: frozen.classifier.apply(v, x, train=False)
    parts['classifier'] = (_frozen_pass(classify), put(frozen.classifier_vars), hr)
  if frozen.vgg_fn is not None:
    parts['vgg'] = (_frozen_pass(frozen.vgg_fn), put(frozen.vgg_params), hr)
  return parts


def report(workload: workloads.Workload, batch, options, rep: timing.Reporter,
           peak_one: float, gan_seconds: float) -> None:
  """Times each part on the first device (`options`: steps, runs, warmup) and reports it, and
  the parts' share of the pmapped iteration's `gan_seconds`."""
  seconds = {}
  for name, (fn, params, x) in _parts(workload, batch, workload.devices[0]).items():
    flops = timing.cost_flops(fn.lower(params, x).compile().cost_analysis())
    per_pass = statistics.median(timing.time_runs(lambda fn=fn, p=params, x=x: fn(p, x),
                                                  options.steps, options.runs, options.warmup))
    seconds[name] = per_pass
    rep.figure(f'breakdown/{name}/ms', 1e3 * per_pass, 'ms',
               f'fwd+bwd, one device, batch {x.shape[0]}')
    rep.figure(f'breakdown/{name}/gflop', flops / 1e9, 'GFLOP')
    rep.figure(f'breakdown/{name}/utilisation_pct', 100.0 * flops / per_pass / 1e9 / peak_one,
               '%', f'{flops / per_pass / 1e9:.4g} GFLOP/s of the one-device peak')
  # Per iteration, every device runs G once, D twice (HR and SR), the frozen networks once.
  per_device = seconds.pop('generator') + 2 * seconds.pop('discriminator') + sum(
      seconds.values())
  rep.figure('breakdown/parts_share_of_gan_step_pct', 100.0 * per_device / gan_seconds, '%',
             'the parts timed alone, as run in one iteration, over the pmapped iteration')
