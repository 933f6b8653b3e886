"""SRGAN training: pure, pmapped generator and discriminator steps and the loop around them.

Order, as in flax examples/imagenet: create models -> train steps -> train state ->
train_and_evaluate. The steps are pure functions of (states, batch, frozen networks); the data
at step k is a pure function of (seed, k); so a run resumed from a checkpoint repeats exactly
what an uninterrupted run would have done.
"""

import functools
import os
import resource
import signal
import time
from typing import Any, Optional

from absl import logging
from flax import struct
from flax.training import train_state
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from srgan_jax import checkpoints
from srgan_jax import distributed
from srgan_jax import evaluate as evaluate_lib
from srgan_jax import images as images_lib
from srgan_jax import input_pipeline
from srgan_jax import losses
from srgan_jax import models
from srgan_jax import validation
from srgan_jax import writers

AXIS = 'batch'


class TrainState(train_state.TrainState):
  batch_stats: Any = None


class GeneratorState(TrainState):
  """The generator's state, with the EMA of its parameters (the ones evaluated and saved)."""
  ema_params: Any = None


class NonFiniteError(FloatingPointError):
  """Training produced a NaN or inf; the state of that step is never saved."""


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


def pmean_once(tree, axis_name):
  """Averages a pytree over `axis_name` in ONE all-reduce of its flattened leaves.

  On CPU, XLA runs each host device's collectives on a shared thread pool with as many threads
  as cores; one all-reduce per gradient leaf lets a device block every pool thread in
  collectives that wait for another device, which then cannot run (seen as a 40 s rendezvous
  timeout on 2 cores). A single all-reduce after the backward pass cannot starve that way, and
  is also cheaper.
  """
  if axis_name is None:
    return tree
  flat, unravel = jax.flatten_util.ravel_pytree(tree)
  return unravel(jax.lax.pmean(flat, axis_name))


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


def generator_loss(params, g_state, d_state, batch, frozen: Frozen, *, config, adversarial):
  """generator_objective of the generator with `params` on the batch; aux: SR, BN stats, metrics."""
  hr = input_pipeline.to_model_range(batch['hr'])
  lr = input_pipeline.to_model_range(batch['lr'])
  sr, g_updates = g_state.apply_fn({'params': params, 'batch_stats': g_state.batch_stats}, lr,
                                   train=True, mutable=['batch_stats'])
  fake = real_logits = None
  if adversarial:
    d_vars = {'params': d_state.params, 'batch_stats': d_state.batch_stats}
    fake, _ = d_state.apply_fn(d_vars, sr, train=True, mutable=['batch_stats'])
    if config.loss.adversarial == 'relativistic':
      fake, hr = jax.lax.optimization_barrier((fake, hr))  # See discriminator_step.
      (real_logits, _), _ = d_state.apply_fn(d_vars, hr, train=True, mutable=['batch_stats'])
  total, metrics = generator_objective(config, frozen, sr, hr, batch, fake, real_logits)
  return total, (sr, g_updates['batch_stats'], metrics)


def ema_update(ema_params, params, decay, step):
  """The exponential moving average of parameters after `step` updates.

  With the usual warm-up (TF's ExponentialMovingAverage with num_updates): early on, the
  average must not stay anchored to the random initialisation of a short run.
  """
  step = jnp.asarray(step, jnp.float32)
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)


def _apply_generator_update(config, g_state, grads, batch_stats):
  new_state = g_state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return new_state.replace(ema_params=ema_update(g_state.ema_params, new_state.params,
                                                 config.ema_decay, new_state.step))


def generator_step(g_state, d_state, batch, frozen: Frozen, *, config, adversarial,
                   axis_name: Optional[str] = AXIS):
  """One Adam step of the generator (and its EMA); returns (g_state, SR, metrics).

  With `adversarial=False` this is an SRResNet (content-loss only) step: the pretraining step.
  With `adversarial=True`, followed by discriminator_step, it is the seed's GAN iteration in two
  calls (what gan_step computes in one). Gradients, BN statistics and metrics are averaged over
  `axis_name` when it is given.
  """
  grad_fn = jax.grad(generator_loss, has_aux=True)
  grads, (sr, batch_stats, metrics) = grad_fn(g_state.params, g_state, d_state, batch, frozen,
                                              config=config, adversarial=adversarial)
  grads, metrics = pmean_once((grads, metrics), axis_name)
  new_state = _apply_generator_update(config, g_state, grads, batch_stats)
  return new_state, jax.lax.stop_gradient(sr), metrics


def discriminator_step(d_state, batch, sr, *, config, axis_name: Optional[str] = AXIS):
  """One Adam step of the discriminator on HR (real) and the generator's SR (fake).

  As in the seed, SR comes from the generator step just taken (pre-update generator), so SR is
  computed once per iteration.
  """
  hr = input_pipeline.to_model_range(batch['hr'])

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': d_state.batch_stats}
    (real_logits, real_class), upd = d_state.apply_fn(variables, hr, train=True,
                                                      mutable=['batch_stats'])
    # D(fake) after D(real): their BatchNorm all-reduces must not be in flight together (see
    # pmean_once); the barrier orders the two passes, forward and backward.
    real_logits, fake_input = jax.lax.optimization_barrier((real_logits, sr))
    variables = {'params': params, 'batch_stats': upd['batch_stats']}
    (fake_logits, _), upd = d_state.apply_fn(variables, fake_input, train=True,
                                             mutable=['batch_stats'])
    loss, metrics = discriminator_objective(config, real_logits, real_class, fake_logits, batch)
    return loss, (upd['batch_stats'], metrics)

  grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(d_state.params)
  grads, metrics = pmean_once((grads, metrics), axis_name)
  new_state = d_state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return new_state, metrics


def gan_step(g_state, d_state, batch, frozen: Frozen, *, config,
             axis_name: Optional[str] = AXIS):
  """One GAN iteration: generator_step then discriminator_step, with D's pass over SR run once.

  The same maths as the two steps (the seed's iteration: D's step sees the SR of the
  pre-update generator and starts from the pre-update D): in train mode BatchNorm normalises
  with the statistics of the batch it is given, so D(SR) in the G step and in the D step give
  the same numbers. Here it is computed once and differentiated twice (w.r.t. SR for G's loss,
  w.r.t. D's parameters for D's loss), which saves one forward pass of D per iteration (and the
  D(HR) pass of the relativistic G loss). D's running statistics are updated HR first, then SR.
  Passes that hold BatchNorm all-reduces are chained by optimization barriers so that no two
  are in flight at once (see pmean_once); gradients and metrics go in one all-reduce.
  Returns (g_state, d_state, metrics).
  """
  barrier = jax.lax.optimization_barrier
  hr = input_pipeline.to_model_range(batch['hr'])
  lr = input_pipeline.to_model_range(batch['lr'])

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
  sr, hr_in = barrier((sr, hr))
  (real_logits, real_class), real_vjp, stats = jax.vjp(
      lambda p: d_forward(p, d_state.batch_stats, hr_in), d_state.params, has_aux=True)
  real_logits, sr = barrier((real_logits, sr))
  (fake_logits, fake_class), fake_vjp, stats = jax.vjp(
      lambda p, x: d_forward(p, stats, x), d_state.params, sr, has_aux=True)

  # Each loss as a function of SR and of D's outputs.
  relativistic_real = real_logits if config.loss.adversarial == 'relativistic' else None
  (c_sr, c_fake_logits, c_fake_class), g_metrics = jax.grad(
      lambda x, fl, fc: generator_objective(config, frozen, x, hr, batch, (fl, fc),
                                            relativistic_real),
      argnums=(0, 1, 2), has_aux=True)(sr, fake_logits, fake_class)
  (d_real_logits, d_real_class, d_fake_logits), d_metrics = jax.grad(
      lambda rl, rc, fl: discriminator_objective(config, rl, rc, fl, batch),
      argnums=(0, 1, 2), has_aux=True)(real_logits, real_class, fake_logits)

  # Backward passes, one after the other: D(SR) for G, D(SR) and D(HR) for D, then G.
  _, c_sr_through_d = fake_vjp((c_fake_logits, c_fake_class))
  c_sr_through_d, d_fake_logits = barrier((c_sr_through_d, d_fake_logits))
  zero_class = None if fake_class is None else jnp.zeros_like(fake_class)
  d_grads_fake, _ = fake_vjp((d_fake_logits, zero_class))
  d_grads_fake, d_real_logits = barrier((d_grads_fake, d_real_logits))
  (d_grads_real,) = real_vjp((d_real_logits, d_real_class))
  d_grads = jax.tree_util.tree_map(jnp.add, d_grads_real, d_grads_fake)
  d_grads, c_sr_total = barrier((d_grads, c_sr + c_sr_through_d))
  (g_grads,) = g_vjp(c_sr_total)

  g_grads, d_grads, metrics = pmean_once((g_grads, d_grads, {**g_metrics, **d_metrics}),
                                         axis_name)
  new_g = _apply_generator_update(config, g_state, g_grads, g_batch_stats)
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
  pmap = functools.partial(jax.pmap, axis_name=AXIS, devices=devices)
  pretrain = pmap(functools.partial(generator_step, config=config, adversarial=False),
                  in_axes=(None, None, 0, None), out_axes=(None, 0, None),
                  donate_argnums=(0,) if donate else ())
  gan = pmap(functools.partial(gan_step, config=config),
             in_axes=(None, None, 0, None), out_axes=(None, None, None),
             donate_argnums=(0, 1) if donate else ())
  return pretrain, gan


# ---------------------------------------------------------------------------------------------
# State.


def create_train_states(config, rng, axis_name: Optional[str] = AXIS):
  """Initial generator and discriminator TrainStates (Adam, paper/seed hyper-parameters)."""
  g_model = models.create_generator(config, axis_name)
  d_model = models.create_discriminator(config, axis_name)
  hr_size = 28
  lr_size = hr_size // config.data.scale
  g_rng, d_rng = jax.random.split(rng)
  lr = jnp.zeros((1, lr_size, lr_size, config.data.channels))
  hr = jnp.zeros((1, hr_size, hr_size, config.data.channels))
  # Initialise without an axis name (no pmap here); the structure is the same.
  g_vars = jax.jit(lambda r: models.create_generator(config).init(r, lr, train=False))(g_rng)
  d_vars = jax.jit(lambda r: models.create_discriminator(config).init(r, hr, train=False))(d_rng)
  tx = lambda lr: optax.adam(lr, b1=config.optimizer.b1, b2=config.optimizer.b2)
  # The generator's steps count from 0 through pretraining (SRResNet) and the GAN stage.
  g_lr = optax.join_schedules(
      [optax.constant_schedule(config.optimizer.pretrain_learning_rate),
       optax.constant_schedule(config.optimizer.learning_rate)], [config.pretrain_steps])
  # The EMA starts as a copy (own buffers: the steps donate the state's buffers).
  g_state = GeneratorState.create(apply_fn=g_model.apply, params=g_vars['params'], tx=tx(g_lr),
                                  batch_stats=g_vars['batch_stats'],
                                  ema_params=jax.tree_util.tree_map(jnp.copy, g_vars['params']))
  d_state = TrainState.create(apply_fn=d_model.apply, params=d_vars['params'],
                              tx=tx(config.optimizer.learning_rate),
                              batch_stats=d_vars['batch_stats'])
  return g_state, d_state


def inference_variables(g_state) -> dict:
  """The generator variables used for evaluation and saved for inference (EMA when on)."""
  return {'params': g_state.ema_params, 'batch_stats': g_state.batch_stats}


# ---------------------------------------------------------------------------------------------
# The loop.


class _StopRequest:
  """Turns SIGTERM / Ctrl-C into a flag the loop checks after each step (then saves, exits)."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def peak_rss_mib() -> float:
  """The peak resident memory of this process so far (Linux ru_maxrss), in MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mean_metrics(pending):
  """Fetches per-step metrics, checks them, and averages them (step, name) -> float."""
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    for name, value in metrics.items():
      if not np.isfinite(value):
        raise NonFiniteError(
            f'Training diverged: loss term {name!r} is {float(value)} at step {step}. That state '
            f'was not saved; the latest checkpoint is from before it. Lower '
            f'config.optimizer.learning_rate or the loss weights and run the same command again.')
  out = {}
  for metrics in fetched:
    for name, value in metrics.items():
      out[name] = out.get(name, 0.0) + float(value) / len(fetched)
  return out


def _truncate_metrics_after(workdir, step):
  """Drops metrics.jsonl lines logged after `step`, which a resumed run will log again."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return
  kept = [r for r in writers.read_metrics(workdir) if r.get('step', 0) <= step]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    for record in kept:
      f.write(writers.json_line(record))
  os.replace(tmp, path)


def prepare_frozen(config, workdir) -> Frozen:
  """Loads (training first when missing) the networks the losses need."""
  from srgan_jax import classifier_train  # pylint: disable=g-import-not-at-top
  frozen = Frozen()
  if config.loss.content == 'vgg':
    params, fn = load_vgg(config.loss.vgg)
    frozen = frozen.replace(vgg_params=params, vgg_fn=fn)
  needs_classifier = (config.loss.auxiliary == 'classifier' or config.loss.content == 'classifier')
  if needs_classifier:
    model, variables = classifier_train.load_or_train(
        config, resolve_path(workdir, config.loss.classifier_workdir), role='guide')
    frozen = frozen.replace(classifier=model, classifier_vars=variables)
  return frozen


def load_vgg(vgg_config):
  """(params, feature fn) of the VGG19 content loss; params only up to the deepest layer."""
  from srgan_jax import vgg  # pylint: disable=g-import-not-at-top
  layers = list(vgg_config.layers)
  if vgg_config.random_weights_for_benchmark:
    logging.warning('VGG19 with RANDOM weights: only for benchmarks, never for results.')
    params, preprocessing = vgg.random_vgg19_params(jax.random.PRNGKey(0), layers), 'torch'
  else:
    path = vgg.resolve_weights(vgg_config.weights)
    params, preprocessing = vgg.load_vgg19_params(path, required_layers=layers)
  params = vgg.subset_params(params, layers)
  fn = vgg.make_feature_fn(layers, vgg_config.before_activation, preprocessing,
                           vgg_config.resize_to)
  return params, fn


def resolve_path(workdir: str, path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(workdir, path)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains an SRGAN (pretraining the generator first), evaluates and checkpoints it.

  Re-running on the same workdir resumes from the latest usable checkpoint. Returns the final
  evaluation summary (PSNR, SSIM, judge accuracy, digit-FID of HR, bicubic and SR).
  """
  if config.task == 'classifier':
    from srgan_jax import classifier_train  # pylint: disable=g-import-not-at-top
    return classifier_train.train_and_evaluate(config, workdir)

  devices = jax.local_devices()
  n_local = len(devices)
  validation.validate_config(config, jax.device_count())
  input_pipeline.validate_data_config(config.data)
  primary = jax.process_index() == 0
  checkpoints.ensure_writable(workdir)
  resuming = checkpoints.has_checkpoint(workdir)
  if resuming:
    _, saved_config, _ = checkpoints.read_config(workdir)
    checkpoints.check_compatible(saved_config, config, workdir)
  needs_labels = (config.loss.auxiliary == 'discriminator_head' or
                  (config.loss.auxiliary == 'classifier' and
                   config.loss.auxiliary_labels == 'true'))

  train_split = input_pipeline.load_split(config, 'train')
  test_split = input_pipeline.load_split(config, 'test')
  if config.eval.judge_workdir and test_split.labels is None:
    raise validation.ConfigError(
        f'The judge needs test labels and {config.data.name!r} has none; set '
        f'--config.eval.judge_workdir="" to evaluate PSNR/SSIM only.')
  if needs_labels and train_split.labels is None:
    raise validation.ConfigError(
        f'config.loss.auxiliary = {config.loss.auxiliary!r} with true labels needs a labelled '
        f'dataset, and {config.data.name!r} has none; use loss.auxiliary_labels="pseudo" or '
        f'loss.auxiliary="none".')

  frozen = prepare_frozen(config, workdir)
  judge = judge_vars = None
  if config.eval.judge_workdir:
    from srgan_jax import classifier_train  # pylint: disable=g-import-not-at-top
    judge, judge_vars = classifier_train.load_or_train(
        config, resolve_path(workdir, config.eval.judge_workdir), role='judge')

  g_state, d_state = create_train_states(config, jax.random.PRNGKey(config.seed))
  logging.info('Devices: %s', devices)
  logging.info('Parameters: generator %d, discriminator %d',
               models.count_params(g_state.params), models.count_params(d_state.params))

  mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
  start_step = 0
  if resuming:
    start_step, restored = checkpoints.restore(
        workdir, {'state': {'generator': g_state, 'discriminator': d_state}})
    g_state, d_state = restored['state']['generator'], restored['state']['discriminator']
    logging.info('Resumed from the checkpoint at step %d in %s.', start_step,
                 checkpoints.checkpoint_dir(workdir))
    _truncate_metrics_after(workdir, start_step) if primary else None

  # Over every process's devices, so that gradients are averaged across hosts; each process
  # feeds its local devices with its own shard of the global batch.
  step_devices = distributed.global_devices()
  pretrain_step, gan_step_fn = make_pmapped_steps(config, step_devices)
  # Place the states and frozen networks once, replicated on the devices the steps run on: the
  # steps return their states there, and a first call with host arrays would compile each step
  # a second time (measured 3-16 s per step on CPU).
  g_state, d_state, frozen = distributed.replicate((g_state, d_state, frozen), step_devices, AXIS)
  eval_fn = evaluate_lib.make_eval_fn(models.create_generator(config), judge, config.data.scale,
                                      config.eval.crop_border, devices)
  writer = writers.MetricWriter(workdir, enabled=primary)
  total_steps = config.pretrain_steps + config.num_train_steps
  progress = writers.Progress(total_steps, start_step)

  def save(step):
    if not checkpoints.all_finite((g_state.params, d_state.params)):
      raise NonFiniteError(f'Parameters are not finite at step {step}; not saving them.')
    checkpoints.save(mngr, step, {'generator': g_state, 'discriminator': d_state},
                     inference_variables(g_state), config)

  curve_split = input_pipeline.head(test_split, config.eval.curve_examples)

  def run_eval(step, final):
    # On the host: the state lives on every process's devices, evaluation on this process's.
    g_vars = jax.device_get(inference_variables(g_state))
    t0 = time.time()
    summary = evaluate_lib.evaluate(eval_fn, g_vars, judge_vars,
                                    test_split if final else curve_split,
                                    config.eval.batch_size, n_local)
    summary['eval_seconds'] = time.time() - t0
    writer.write_scalars(step, {f'eval/{k}': v for k, v in summary.items()})
    grid = evaluate_lib.sample_grid(models.create_generator(config), g_vars, test_split,
                                    config.eval.num_sample_images, config.data.scale)
    if primary:
      images_lib.save_png(os.path.join(workdir, 'samples', f'step_{step}.png'), grid)
    writer.write_images(step, {'samples': grid})
    logging.info('Eval at step %d:\n%s', step, evaluate_lib.results_table(summary))
    return summary

  pending = []
  step = start_step
  summary = {}
  t_log = time.time()
  with _StopRequest() as stop:
    while step < total_steps:
      idx = input_pipeline.batch_indices(config.seed, step, config.batch_size,
                                         train_split.num_examples, jax.process_index(),
                                         jax.process_count())
      batch = input_pipeline.shard(input_pipeline.get_batch(train_split, idx), n_local)
      if step < config.pretrain_steps:
        g_state, _, metrics = pretrain_step(g_state, d_state, batch, frozen)
      else:
        g_state, d_state, metrics = gan_step_fn(g_state, d_state, batch, frozen)
      step += 1
      pending.append((step, metrics))
      last = step == total_steps
      if step % config.log_every_steps == 0 or last or stop.signal:
        scalars = _mean_metrics(pending)
        pending = []
        scalars['steps_per_second'] = config.log_every_steps / max(time.time() - t_log, 1e-9)
        t_log = time.time()
        scalars['stage'] = 0 if step <= config.pretrain_steps else 1
        scalars['peak_rss_mib'] = peak_rss_mib()
        writer.write_scalars(step, scalars)
        logging.info('%s | %s', progress.update(step),
                     ' '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items())))
      if stop.signal:
        _mean_metrics(pending)
        save(step)
        writer.close()
        logging.warning('Stopped by %s at step %d; checkpoint saved in %s. Resume with the '
                        'same command.', stop.signal, step, checkpoints.checkpoint_dir(workdir))
        return {'interrupted_at_step': step}
      if step % config.eval_every_steps == 0 or last:
        summary = run_eval(step, final=last)
      if step % config.checkpoint_every_steps == 0 or last:
        _mean_metrics(pending)
        save(step)
  if not summary:  # Resumed at the end: evaluate what was restored.
    summary = run_eval(step, final=True)
  if primary:
    table = evaluate_lib.results_table(summary)
    with open(os.path.join(workdir, 'results.md'), 'w') as f:
      f.write(f'# Results at step {step}\n\n{table}\n')
    writers.write_json(os.path.join(workdir, 'results.json'), {'step': step, **summary})
  writer.close()
  return summary
