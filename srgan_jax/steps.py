"""The SRGAN's pure training steps: its objectives, the pretraining step and the GAN iteration.

Each step is a pure function of (states, batch, frozen networks) -> (states, metrics), so it
can be jitted, pmapped and tested on its own (flaxmodels' training_steps.py). The loop that
drives them is train.py.
"""

import functools
from typing import Any, Optional

from flax import struct
import jax
import jax.numpy as jnp

from srgan_jax import image_ops
from srgan_jax import losses
from srgan_jax import state as state_lib


@struct.dataclass
class Frozen:
  """Pretrained networks that steer the generator but are never trained.

  Their variables are arguments of the steps (not constants baked into the compiled code), and
  the modules are static.
  """
  classifier_vars: Any = None
  vgg_params: Any = None
  classifier: Any = struct.field(pytree_node=False, default=None)
  vgg_fn: Any = struct.field(pytree_node=False, default=None)


# ---------------------------------------------------------------------------------------------
# Steps.


def _content_feature_fn(config, frozen: Frozen):
  if config.loss.content == 'classifier':
    return lambda x: frozen.classifier.apply(frozen.classifier_vars, x, train=False)[1]
  if config.loss.content == 'vgg':
    return lambda x: frozen.vgg_fn(frozen.vgg_params, x)
  return None


def _content_layer_weights(config):
  if config.loss.content == 'classifier':
    return dict(config.loss.classifier_layers)
  if config.loss.content == 'vgg':
    return dict(config.loss.vgg.layers)
  return None


def classifier_auxiliary_loss(config, frozen: Frozen, sr, hr, batch):
  """The frozen classifier's cross-entropy on SR, against true or pseudo (HR argmax) labels."""
  sr_logits, _ = frozen.classifier.apply(frozen.classifier_vars, sr, train=False)
  if config.loss.auxiliary_labels == 'true':
    labels = batch['label']
  else:
    hr_logits, _ = frozen.classifier.apply(frozen.classifier_vars, hr, train=False)
    labels = losses.pseudo_labels(hr_logits)
  return losses.auxiliary_classifier_loss(sr_logits, labels)


def generator_objective(config, frozen: Frozen, sr, hr, batch, fake=None, real_logits=None):
  """l^SR = content + adversarial_weight * l_Gen + auxiliary_weight * l_aux, and its terms.

  `fake`: the discriminator's (logits, class logits) on SR, or None while pretraining (content
  loss, plus the classifier loss when config.loss.auxiliary_during_pretrain). `real_logits`:
  D on HR, which only the relativistic loss reads.
  """
  criterion = config.loss.vgg.criterion if config.loss.content == 'vgg' else 'mse'
  content = losses.content_loss(config.loss.content, sr, hr, _content_feature_fn(config, frozen),
                                _content_layer_weights(config), criterion)
  if config.loss.content == 'vgg':
    content = content * config.loss.vgg.scale
  total = config.loss.content_weight * content
  metrics = {'content': content}
  if fake is not None:
    fake_logits, fake_class = fake
    adv = losses.generator_adversarial_loss(config.loss.adversarial, real_logits, fake_logits)
    total = total + config.loss.adversarial_weight * adv
    metrics['adversarial'] = adv
    if config.loss.auxiliary == 'discriminator_head':
      aux = losses.classification_loss(fake_class, batch['label'])
      total = total + config.loss.auxiliary_weight * aux
      metrics['auxiliary'] = aux
  if config.loss.auxiliary == 'classifier' and (fake is not None or
                                                config.loss.auxiliary_during_pretrain):
    aux = classifier_auxiliary_loss(config, frozen, sr, hr, batch)
    total = total + config.loss.auxiliary_weight * aux
    metrics['auxiliary'] = aux
  metrics['generator'] = total
  return total, metrics


def discriminator_objective(config, real_logits, real_class, fake_logits, batch):
  """l_D: the adversarial loss on HR (real) and SR (fake), plus the AC-GAN class loss on HR.

  The auxiliary *classifier* loss is not here: it does not depend on D's parameters, so adding
  it to D's loss (as the seed did) would change nothing.
  """
  loss = losses.discriminator_loss(config.loss.adversarial, real_logits, fake_logits)
  metrics = {'discriminator_adversarial': loss}
  if config.loss.auxiliary == 'discriminator_head':
    aux = losses.classification_loss(real_class, batch['label'])
    metrics['discriminator_auxiliary'] = aux
    loss = loss + aux
  prob = config.loss.adversarial in ('vanilla', 'relativistic')
  out = jax.nn.sigmoid if prob else (lambda x: x)
  metrics.update(discriminator=loss, d_real=jnp.mean(out(real_logits)),
                 d_fake=jnp.mean(out(fake_logits)))
  return loss, metrics


def _after(x, *earlier):
  """x, such that what is computed from it waits for every leaf of `earlier`: a data dependency
  (a zero added that XLA cannot fold; no gradient flows through it). An optimization barrier
  orders XLA's compilation, but XLA removes it before its CPU runtime, which runs a program's
  operations by their data dependencies alone, independent ones in either order: each device
  then takes its own order, and a device that reaches a BatchNorm all-reduce first waits there
  while the other runs the other branch."""
  zero = sum(jnp.where(jnp.isfinite(first), first, 0).astype(jnp.float32)
             for first in (leaf.ravel()[0] for leaf in jax.tree_util.tree_leaves(earlier))) * 0.0
  zero = jax.lax.stop_gradient(zero)
  return jax.tree_util.tree_map(lambda leaf: leaf + zero.astype(leaf.dtype), x)


def _in_order(first, then):
  """(first, then), what is computed from `then` after `first` on every device: the barrier
  orders XLA's compilation, the dependency (_after) the run."""
  return jax.lax.optimization_barrier((first, _after(then, first)))


def generator_loss(params, g_state, d_state, batch, frozen: Frozen, *, config, adversarial):
  """generator_objective of the generator with `params` on the batch; aux: SR, BN stats, metrics."""
  hr = image_ops.to_model_range(batch['hr'])
  lr = image_ops.to_model_range(batch['lr'])
  sr, g_updates = g_state.apply_fn({'params': params, 'batch_stats': g_state.batch_stats}, lr,
                                   train=True, mutable=['batch_stats'])
  # Every device runs the passes with BatchNorm all-reduces in one order, and the content
  # loss's frozen networks (VGG19 on HR reads nothing else) after them (_after).
  hr = _after(hr, sr)
  fake = real_logits = None
  if adversarial:
    d_vars = {'params': d_state.params, 'batch_stats': d_state.batch_stats}
    fake, _ = d_state.apply_fn(d_vars, sr, train=True, mutable=['batch_stats'])
    fake, hr = _in_order(fake, hr)  # See discriminator_step.
    if config.loss.adversarial == 'relativistic':
      (real_logits, _), _ = d_state.apply_fn(d_vars, hr, train=True, mutable=['batch_stats'])
    sr, hr = _after((sr, hr), (fake, real_logits))
  total, metrics = generator_objective(config, frozen, sr, hr, batch, fake, real_logits)
  return total, (sr, g_updates['batch_stats'], metrics)


def generator_step(g_state, d_state, batch, frozen: Frozen, *, config, adversarial,
                   axis_name: Optional[str] = state_lib.AXIS):
  """One Adam step of the generator (and its EMA); returns (g_state, SR, metrics).

  With `adversarial=False` this is an SRResNet (content-loss only) step: the pretraining step.
  With `adversarial=True`, followed by discriminator_step, it is the seed's GAN iteration in two
  calls (what gan_step computes in one). Gradients, BN statistics and metrics are averaged over
  `axis_name` when it is given.
  """
  grad_fn = jax.grad(generator_loss, has_aux=True)
  grads, (sr, batch_stats, metrics) = grad_fn(g_state.params, g_state, d_state, batch, frozen,
                                              config=config, adversarial=adversarial)
  grads, metrics = state_lib.pmean_once((grads, metrics), axis_name)
  new_state = state_lib.apply_averaged_gradients(g_state, grads, batch_stats, config.ema_decay)
  return new_state, jax.lax.stop_gradient(sr), metrics


def discriminator_step(d_state, batch, sr, *, config,
                       axis_name: Optional[str] = state_lib.AXIS):
  """One Adam step of the discriminator on HR (real) and the generator's SR (fake).

  As in the seed, SR comes from the generator step just taken (pre-update generator), so SR is
  computed once per iteration.
  """
  hr = image_ops.to_model_range(batch['hr'])

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': d_state.batch_stats}
    (real_logits, real_class), upd = d_state.apply_fn(variables, hr, train=True,
                                                      mutable=['batch_stats'])
    # D(fake) after D(real): their BatchNorm all-reduces must not be in flight together (see
    # pmean_once).
    real_logits, fake_input = _in_order(real_logits, sr)
    variables = {'params': params, 'batch_stats': upd['batch_stats']}
    (fake_logits, _), upd = d_state.apply_fn(variables, fake_input, train=True,
                                             mutable=['batch_stats'])
    loss, metrics = discriminator_objective(config, real_logits, real_class, fake_logits, batch)
    return loss, (upd['batch_stats'], metrics)

  grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(d_state.params)
  grads, metrics = state_lib.pmean_once((grads, metrics), axis_name)
  new_state = d_state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return new_state, metrics


def gan_step(g_state, d_state, batch, frozen: Frozen, *, config,
             axis_name: Optional[str] = state_lib.AXIS):
  """One GAN iteration: generator_step then discriminator_step, with D's pass over SR run once.

  The same maths as the two steps (the seed's iteration: D's step sees the SR of the
  pre-update generator and starts from the pre-update D): in train mode BatchNorm normalises
  with the statistics of the batch it is given, so D(SR) in the G step and in the D step give
  the same numbers. Here it is computed once and differentiated twice (w.r.t. SR for G's loss,
  w.r.t. D's parameters for D's loss), which saves one forward pass of D per iteration (and the
  D(HR) pass of the relativistic G loss). D's running statistics are updated HR first, then SR.
  Passes that hold BatchNorm all-reduces are chained by optimization barriers and by data
  dependencies (_after) so that no two are in flight at once (see pmean_once) and every device
  runs them, and the content loss's frozen networks (no all-reduce), in one order: between D's
  forward passes and its backward ones. Without the dependencies the GAN iteration's devices
  waited up to 330 ms at D's BatchNorm all-reduces while the other ran VGG19's passes (an AMD
  EPYC, 2 devices, 2026-12-05: 70.2 images/s; 81.8 with the dependencies in place of the
  barriers, 84.4 with both). Gradients and metrics go in one all-reduce.
  Returns (g_state, d_state, metrics).
  """
  hr = image_ops.to_model_range(batch['hr'])
  lr = image_ops.to_model_range(batch['lr'])

  # Forward passes, one after the other: G(LR), D(HR), D(SR).
  def g_forward(params):
    sr, upd = g_state.apply_fn({'params': params, 'batch_stats': g_state.batch_stats}, lr,
                               train=True, mutable=['batch_stats'])
    return sr, upd['batch_stats']
  sr, g_vjp, g_batch_stats = jax.vjp(g_forward, g_state.params, has_aux=True)

  def d_forward(params, stats, images):
    out, upd = d_state.apply_fn({'params': params, 'batch_stats': stats}, images, train=True,
                                mutable=['batch_stats'])
    return out, upd['batch_stats']
  sr, hr_in = _in_order(sr, hr)
  (real_logits, real_class), real_vjp, stats = jax.vjp(
      lambda p: d_forward(p, d_state.batch_stats, hr_in), d_state.params, has_aux=True)
  real_logits, sr = _in_order(real_logits, sr)
  (fake_logits, fake_class), fake_vjp, stats = jax.vjp(
      lambda p, x: d_forward(p, stats, x), d_state.params, sr, has_aux=True)

  # Each loss as a function of SR and of D's outputs; the content loss after D's forward passes.
  relativistic_real = real_logits if config.loss.adversarial == 'relativistic' else None
  hr_after = _after(hr, fake_logits)  # Its frozen networks too (VGG19 on HR reads HR alone).
  (c_sr, c_fake_logits, c_fake_class), g_metrics = jax.grad(
      lambda x, fl, fc: generator_objective(config, frozen, x, hr_after, batch, (fl, fc),
                                            relativistic_real),
      argnums=(0, 1, 2), has_aux=True)(_after(sr, fake_logits), fake_logits, fake_class)
  (d_real_logits, d_real_class, d_fake_logits), d_metrics = jax.grad(
      lambda rl, rc, fl: discriminator_objective(config, rl, rc, fl, batch),
      argnums=(0, 1, 2), has_aux=True)(real_logits, real_class, fake_logits)

  # Backward passes, one after the other, after the content loss's: D(SR) for G, D(SR) and
  # D(HR) for D, then G.
  _, c_sr_through_d = fake_vjp((_after(c_fake_logits, c_sr), c_fake_class))
  c_sr_through_d, d_fake_logits = _in_order(c_sr_through_d, d_fake_logits)
  zero_class = None if fake_class is None else jnp.zeros_like(fake_class)
  d_grads_fake, _ = fake_vjp((d_fake_logits, zero_class))
  d_grads_fake, d_real_logits = _in_order(d_grads_fake, d_real_logits)
  (d_grads_real,) = real_vjp((d_real_logits, d_real_class))
  d_grads = jax.tree_util.tree_map(jnp.add, d_grads_real, d_grads_fake)
  d_grads, c_sr_total = _in_order(d_grads, c_sr + c_sr_through_d)
  (g_grads,) = g_vjp(c_sr_total)

  g_grads, d_grads, metrics = state_lib.pmean_once(
      (g_grads, d_grads, {**g_metrics, **d_metrics}), axis_name)
  new_g = state_lib.apply_averaged_gradients(g_state, g_grads, g_batch_stats,
                                                config.ema_decay)
  new_d = d_state.apply_gradients(grads=d_grads, batch_stats=stats)
  return new_g, new_d, metrics


def make_pmapped_steps(config, devices, donate: bool = True):
  """The pretraining step (generator_step, content loss) and the GAN iteration (gan_step),
  pmapped over `devices`: (pretrain, gan).

  States and frozen networks are broadcast (in_axes None) and come back as one copy
  (out_axes None): gradients and BN statistics are averaged over the devices, so every device
  holds the same values. Only the batch is split over devices. With `donate`, the states given
  to a step are consumed (their buffers hold the new states): keep only the returned ones.
  """
  pmap = functools.partial(jax.pmap, axis_name=state_lib.AXIS, devices=devices)
  pretrain = pmap(functools.partial(generator_step, config=config, adversarial=False),
                  in_axes=(None, None, 0, None), out_axes=(None, 0, None),
                  donate_argnums=(0,) if donate else ())
  gan = pmap(functools.partial(gan_step, config=config),
             in_axes=(None, None, 0, None), out_axes=(None, None, None),
             donate_argnums=(0, 1) if donate else ())
  return pretrain, gan
