"""SRGAN training: train states, then the loop that pretrains, trains, evaluates and saves.

Order, as in flax examples/imagenet: create the states -> the frozen networks ->
train_and_evaluate. The steps themselves are the pure functions of steps.py; the data at step k
is a pure function of (seed, k); so a run resumed from a checkpoint repeats exactly what an
uninterrupted run would have done.
"""

import dataclasses
import os
import resource
import signal
import time
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from srgan_jax import adam
from srgan_jax import batch_norm
from srgan_jax import checkpoints
from srgan_jax import classifier_train
from srgan_jax import conv_tuning
from srgan_jax import convolution
from srgan_jax import direct_conv
from srgan_jax import distributed
from srgan_jax import evaluate as evaluate_lib
from srgan_jax import files
from srgan_jax import images as images_lib
from srgan_jax import input_pipeline
from srgan_jax import models
from srgan_jax import native
from srgan_jax import state as state_lib
from srgan_jax import steps
from srgan_jax import validation
from srgan_jax import vgg
from srgan_jax import winograd_native
from srgan_jax import writers
from srgan_jax.errors import ConfigError
from srgan_jax.errors import NonFiniteError

MNIST_SIZE = 28
CONV_PLAN_FILE = 'conv_plan.json'  # The conv decisions a run trains with.


# ---------------------------------------------------------------------------------------------
# State.


PRETRAIN_DECAYS = ('none', 'cosine')


def generator_schedule(config) -> optax.Schedule:
  """The generator's learning rate at each of its steps, which count from 0 through
  pretraining (SRResNet, config.pretrain_steps) and then the GAN stage.

  Pretraining runs at optimizer.pretrain_learning_rate, constant ('none', the paper) or, with
  optimizer.pretrain_decay = 'cosine', decayed along a half cosine to 0 at its last step: a
  short CPU budget trained at a high constant rate stops at the noise floor of that rate,
  and the decay converges instead. The GAN stage then runs at optimizer.learning_rate.
  """
  decay = config.optimizer.get('pretrain_decay', 'none')
  if decay not in PRETRAIN_DECAYS:
    raise ConfigError(f'config.optimizer.pretrain_decay = {decay!r} is not supported; use one '
                      f'of {list(PRETRAIN_DECAYS)}.')
  rate = config.optimizer.pretrain_learning_rate
  if decay == 'cosine' and config.pretrain_steps > 0:
    pretrain = optax.cosine_decay_schedule(rate, decay_steps=config.pretrain_steps)
  else:
    pretrain = optax.constant_schedule(rate)
  return optax.join_schedules(
      [pretrain, optax.constant_schedule(config.optimizer.learning_rate)],
      [config.pretrain_steps])


def create_train_states(config, rng, hr_size: int = MNIST_SIZE,
                        axis_name: Optional[str] = state_lib.AXIS,
                        conv_plan: Optional[convolution.ConvPlan] = None):
  """Initial generator and discriminator TrainStates (Adam, paper/seed hyper-parameters) for
  HR images of hr_size x hr_size (the dense discriminator head depends on it). Their networks
  compute convs by config.conv_implementation (with `conv_plan` when 'tuned')."""
  g_model = models.create_generator(config, axis_name, config.conv_implementation, conv_plan)
  d_model = models.create_discriminator(config, axis_name, config.conv_implementation,
                                        conv_plan)
  lr_size = hr_size // config.data.scale
  g_rng, d_rng = jax.random.split(rng)
  lr = jnp.zeros((1, lr_size, lr_size, config.data.channels))
  hr = jnp.zeros((1, hr_size, hr_size, config.data.channels))
  # Initialise without an axis name (no pmap here); the structure is the same.
  g_vars = models.init_variables(models.create_generator(config), g_rng, lr, train=False)
  d_vars = models.init_variables(models.create_discriminator(config), d_rng, hr, train=False)
  optimizer = lambda lr: adam.Adam(lr, b1=config.optimizer.b1, b2=config.optimizer.b2)
  # The EMA starts as a copy (own buffers: the steps donate the state's buffers).
  g_state = state_lib.AveragedTrainState.create(
      apply_fn=g_model.apply, params=g_vars['params'], adam=optimizer(generator_schedule(config)),
      batch_stats=g_vars['batch_stats'],
      ema_params=jax.tree_util.tree_map(jnp.copy, g_vars['params']))
  d_state = state_lib.TrainState.create(apply_fn=d_model.apply, params=d_vars['params'],
                                        adam=optimizer(config.optimizer.learning_rate),
                                        batch_stats=d_vars['batch_stats'])
  return g_state, d_state


def inference_variables(g_state) -> dict:
  """The generator variables used for evaluation and saved for inference (EMA when on)."""
  return {'params': g_state.ema_params, 'batch_stats': g_state.batch_stats}


def resolve_path(workdir: str, path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(workdir, path)


def conv_networks(config, frozen: steps.Frozen, judge=None, hr_size: int = MNIST_SIZE):
  """The networks whose convs the SRGAN steps and evaluations run, at one device's batch, for
  conv_tuning: G and D trained (D also w.r.t. its input: SR), the frozen guide and VGG19
  w.r.t. their input, and in evaluation (forward only) G and the judge."""
  lr_size, channels = hr_size // config.data.scale, config.data.channels
  batch = config.batch_size // jax.device_count()
  eval_batch = config.eval.batch_size // jax.local_device_count()
  generator = models.create_generator(config)
  networks = [
      conv_tuning.Network('generator', generator, (batch, lr_size, lr_size, channels)),
      conv_tuning.Network('discriminator', models.create_discriminator(config),
                          (batch, hr_size, hr_size, channels), input_grad=True)]
  # Photographs are evaluated whole, at sizes known only per image: their evaluation runs
  # 'auto' convs (the _Evaluator), nothing to tune at a fixed shape.
  if not validation.uses_crops(config.data):
    networks.append(conv_tuning.Network('generator in evaluation', generator,
                                        (eval_batch, lr_size, lr_size, channels),
                                        trained=False))
  if frozen.classifier is not None:
    networks.append(conv_tuning.Network('guide classifier', frozen.classifier,
                                        (batch, hr_size, hr_size, channels), trained=False,
                                        input_grad=True))
  if frozen.vgg_fn is not None:
    networks.append(conv_tuning.Network(
        'VGG19 features', frozen.vgg_fn.model,
        frozen.vgg_fn.input_shape((batch, hr_size, hr_size, channels)), trained=False,
        input_grad=True))
  if judge is not None:
    networks.append(conv_tuning.Network('judge in evaluation', judge,
                                        (eval_batch, hr_size, hr_size, channels),
                                        trained=False))
  return networks


def saved_conv_plan(workdir: str) -> Optional[dict]:
  """The conv decisions a run saved in `workdir` (CONV_PLAN_FILE, plan_to_json's form), or None
  when it has none yet."""
  return files.read_json(os.path.join(workdir, CONV_PLAN_FILE))


def tune_convs(config, frozen: steps.Frozen, judge=None, hr_size: int = MNIST_SIZE,
               log=logging.info, workdir: Optional[str] = None):
  """(conv plan, frozen, judge) for config.conv_implementation: the plan of conv_tuning when
  'tuned' (else None), and the frozen guide, VGG19 and the judge computing their convs with it.

  With a `workdir`, the plan is saved there (CONV_PLAN_FILE) the first time and read back
  afterwards: a resumed run computes every conv exactly as before, even where the machine's
  cache of decisions is gone or another machine resumes it.
  """
  path = workdir and os.path.join(workdir, CONV_PLAN_FILE)
  saved = saved_conv_plan(workdir) if path and config.conv_implementation == 'tuned' else None
  if saved is not None:
    # On another device count (a resume in Colab) the per-device batch differs: a conv the plan
    # lacks takes the run's decision for the same layer at the nearest batch.
    run_plan = dict(conv_tuning.plan_from_json(saved))
    decided, layer = dict(run_plan), lambda sig: sig._replace(batch=0)
    for net in conv_networks(config, frozen, judge, hr_size):
      for sig in set(conv_tuning.conv_uses(net)) - set(run_plan):
        same = [s for s in run_plan if layer(s) == layer(sig)]
        if same:
          decided[sig] = run_plan[min(same, key=lambda s: (abs(s.batch - sig.batch), s.batch))]
    conv_plan = tuple(sorted(decided.items()))
    log(f'Convs computed as the run decided before ({path}).')
  else:
    conv_plan = conv_tuning.plan_for(config.conv_implementation,
                                     conv_networks(config, frozen, judge, hr_size), log=log)
    if path and conv_plan is not None and jax.process_index() == 0:
      files.write_json(path, conv_tuning.plan_to_json(conv_plan), sort_keys=True)
  use = lambda module: module.clone(conv=config.conv_implementation, conv_plan=conv_plan)
  if frozen.classifier is not None:
    frozen = frozen.replace(classifier=use(frozen.classifier))
  if frozen.vgg_fn is not None:
    frozen = frozen.replace(vgg_fn=frozen.vgg_fn.with_convs(config.conv_implementation,
                                                            conv_plan))
  return conv_plan, frozen, None if judge is None else use(judge)


def with_vgg(config, frozen: steps.Frozen) -> steps.Frozen:
  """`frozen` with the VGG19 feature extractor of the content loss, when it is VGG's."""
  if config.loss.content != 'vgg':
    return frozen
  params, fn = vgg.load_feature_extractor(config.loss.vgg)
  return frozen.replace(vgg_params=params, vgg_fn=fn)


def with_guide(config, workdir, frozen: steps.Frozen) -> steps.Frozen:
  """`frozen` with the guide classifier (trained first when missing), when a loss needs it."""
  if not validation.needs_guide(config):
    return frozen
  model, variables = classifier_train.load_or_train(
      config, classifier_workdirs(config, workdir)['guide'], role='guide')
  return frozen.replace(classifier=model, classifier_vars=variables)


def prepare_frozen(config, workdir) -> steps.Frozen:
  """Loads (training first when missing) the networks the losses need."""
  return with_guide(config, workdir, with_vgg(config, steps.Frozen()))


def classifier_workdirs(config, workdir: str) -> dict:
  """{role: workdir} of the classifiers this run loads: the guide when a loss needs it, the
  judge when config.eval.judge_workdir names one."""
  dirs = {'guide': config.loss.classifier_workdir} if validation.needs_guide(config) else {}
  if config.eval.judge_workdir:
    dirs['judge'] = config.eval.judge_workdir
  return {role: resolve_path(workdir, d) for role, d in dirs.items()}


def tune_ahead(config, workdir: str, frozen: steps.Frozen, train_split, test_split,
               hr_size: int) -> None:
  """Tunes in one go the convs of every network the run is about to train or run: the guide
  and the judge when they are still to be trained, and the SRGAN's networks unless the run
  saved its decisions before. Their own tunings (classifier_train.train_and_evaluate,
  tune_convs) then find the decisions in conv_tuning's cache.

  One tuning instead of three compiles the candidates in two waves instead of six, with fewer
  cores idle at the end of each: the main job's tunings on a 2-core AVX2 AMD EPYC took
  9.3-9.8 s together against 10.5-11.0 s apart (2026-12-04). `frozen`: the VGG19 of the content
  loss, if any (the guide is built from the config here, untrained: only its convs' shapes
  matter).
  """
  if config.conv_implementation != 'tuned':
    return
  networks = []
  for role, directory in classifier_workdirs(config, workdir).items():
    if not checkpoints.has_checkpoint(directory):
      networks += classifier_train.data_conv_networks(
          classifier_train.role_config(config, role), train_split, test_split)
  if saved_conv_plan(workdir) is None:
    build = lambda role: models.create_classifier(
        classifier_train.role_config(config, role).classifier.architecture)
    if validation.needs_guide(config):
      frozen = frozen.replace(classifier=build('guide'))
    judge = build('judge') if config.eval.judge_workdir else None
    networks += conv_networks(config, frozen, judge, hr_size)
  if networks:
    conv_tuning.tune(networks)


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


@dataclasses.dataclass
class _Run:
  """What the loop works with, prepared (and checked) before any training step."""
  config: Any
  workdir: str
  train_split: input_pipeline.Split
  test_split: input_pipeline.Split
  frozen: steps.Frozen
  judge: Any
  judge_vars: Any
  conv_plan: Optional[convolution.ConvPlan]
  g_state: Any
  d_state: Any
  start_step: int

  @property
  def primary(self) -> bool:
    return jax.process_index() == 0


# The C++ modules a run uses on CPU where they build (oneDNN's is opt-in).
NATIVE_MODULES = (batch_norm, direct_conv, winograd_native, adam)


def _prepare(config, workdir: str) -> _Run:
  """Checks the config, data and workdir, loads (or trains) the frozen networks and the judge,
  and restores the latest checkpoint when there is one."""
  validation.validate_config(config, jax.device_count())
  checkpoints.ensure_writable(workdir)
  if jax.default_backend() == 'cpu':  # Each builds on first use; on a first run, side by side.
    native.build_all([(m.SOURCE, m.NAME, m.FLAGS) for m in NATIVE_MODULES])
  resuming = checkpoints.has_checkpoint(workdir)
  if resuming:
    _, saved_config, _ = checkpoints.read_config(workdir)
    checkpoints.check_compatible(saved_config, config, workdir)
  train_split = input_pipeline.load_split(config, 'train')
  test_split = input_pipeline.load_split(config, 'test')
  if config.eval.judge_workdir and test_split.labels is None:
    raise ConfigError(
        f'The judge needs test labels and {config.data.name!r} has none; set '
        f'--config.eval.judge_workdir="" to evaluate PSNR/SSIM only.')
  if validation.needs_labels(config) and train_split.labels is None:
    raise ConfigError(
        f'config.loss.auxiliary = {config.loss.auxiliary!r} with true labels needs a labelled '
        f'dataset, and {config.data.name!r} has none; use loss.auxiliary_labels="pseudo" or '
        f'loss.auxiliary="none".')

  # The networks are initialised at the training size: the dense discriminator head is sized
  # from it (96 -> 6x6x512 in the paper).
  photos = isinstance(train_split, input_pipeline.PhotoSplit)
  hr_size = config.data.hr_crop if photos else train_split.hr.shape[1]
  if photos:
    logging.info('Photographs: %d training images (random %dx%d crops, hflip %s, rot %s), %d '
                 'test images.', train_split.num_examples, hr_size, hr_size,
                 config.data.use_hflip, config.data.use_rot, test_split.num_examples)
  frozen = with_vgg(config, steps.Frozen())
  tune_ahead(config, workdir, frozen, train_split, test_split, hr_size)
  frozen = with_guide(config, workdir, frozen)
  judge = judge_vars = None
  if config.eval.judge_workdir:
    judge, judge_vars = classifier_train.load_or_train(
        config, classifier_workdirs(config, workdir)['judge'], role='judge')
  conv_plan, frozen, judge = tune_convs(config, frozen, judge, hr_size, workdir=workdir)
  g_state, d_state = create_train_states(config, jax.random.PRNGKey(config.seed), hr_size,
                                         conv_plan=conv_plan)
  logging.info('Devices: %s', jax.local_devices())
  logging.info('Parameters: generator %d, discriminator %d',
               models.count_params(g_state.params), models.count_params(d_state.params))
  start_step = 0
  if resuming:
    start_step, restored = checkpoints.restore(
        workdir, {'state': {'generator': g_state, 'discriminator': d_state}})
    g_state, d_state = restored['state']['generator'], restored['state']['discriminator']
    logging.info('Resumed from the checkpoint at step %d in %s.', start_step,
                 checkpoints.checkpoint_dir(workdir))
    if jax.process_index() == 0:
      writers.truncate_metrics_after(workdir, start_step)
  return _Run(config, workdir, train_split, test_split, frozen, judge, judge_vars, conv_plan,
              g_state, d_state, start_step)


class _Evaluator:
  """Evaluations during and after training: metrics, a sample grid, both logged."""

  def __init__(self, run: _Run, writer: writers.MetricWriter):
    config = run.config
    self.run, self.writer = run, writer
    self.grid_generator = models.create_generator(config)  # A few images, once: 'auto' convs.
    self.curve_split = input_pipeline.head(run.test_split, config.eval.curve_examples)
    self.photos = isinstance(run.test_split, input_pipeline.PhotoSplit)
    if self.photos:
      # Whole images of many sizes: 'auto' convs (a plan holds the training shapes only).
      self.photo_eval = evaluate_lib.PhotoEvaluator(
          self.grid_generator, run.test_split, config.data.scale, validation.crop_border(config),
          config.eval.y_channel, config.eval.bucket)
      return
    generator = models.create_generator(config, conv=config.conv_implementation,
                                        conv_plan=run.conv_plan)
    self.eval_fn = evaluate_lib.make_eval_fn(generator, run.judge, config.data.scale,
                                             validation.crop_border(config), jax.local_devices())

  def table(self, summary: dict) -> str:
    """The results table of `summary`; for photographs it names the metric convention."""
    if not self.photos:
      return evaluate_lib.results_table(summary, evaluate_lib.fid_name(self.run.config.data))
    config = self.run.config
    return evaluate_lib.photo_results_table(summary, evaluate_lib.photo_convention(
        validation.crop_border(config), config.eval.y_channel, summary['eval_images']))

  def __call__(self, step: int, g_state, final: bool) -> dict:
    run, config = self.run, self.run.config
    # On the host: the state lives on every process's devices, evaluation on this process's.
    g_vars = jax.device_get(inference_variables(g_state))
    t0 = time.time()
    if self.photos:
      summary = self.photo_eval(g_vars, 0 if final else self.curve_split.num_examples)
    else:
      summary = evaluate_lib.evaluate(self.eval_fn, g_vars, run.judge_vars,
                                      run.test_split if final else self.curve_split,
                                      config.eval.batch_size, jax.local_device_count())
    summary['eval_seconds'] = time.time() - t0
    self.writer.write_scalars(step, {f'eval/{k}': v for k, v in summary.items()})
    if self.photos:  # Crops of the training size: whole photographs make a grid too large.
      grid = evaluate_lib.photo_sample_grid(self.photo_eval.sr_fn, g_vars, run.test_split,
                                            config.eval.num_sample_images, config.data.scale,
                                            config.data.hr_crop)
    else:
      grid = evaluate_lib.sample_grid(self.grid_generator, g_vars, run.test_split,
                                      config.eval.num_sample_images, config.data.scale)
    if run.primary:
      images_lib.save_png(os.path.join(run.workdir, 'samples', f'step_{step}.png'), grid)
    self.writer.write_images(step, {'samples': grid})
    logging.info('Eval at step %d:\n%s', step, self.table(summary))
    return summary


def _write_results(run: _Run, step: int, summary: dict, evaluator: _Evaluator) -> None:
  if run.primary:
    table = evaluator.table(summary)
    files.atomic_write(os.path.join(run.workdir, 'results.md'),
                       f'# Results at step {step}\n\n{table}\n')
    writers.write_json(os.path.join(run.workdir, 'results.json'), {'step': step, **summary})


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains an SRGAN (pretraining the generator first), evaluates and checkpoints it.

  Re-running on the same workdir resumes from the latest usable checkpoint. Returns the final
  evaluation summary (PSNR, SSIM, judge accuracy, digit-FID of HR, bicubic and SR), or
  {'interrupted_at_step': k} when SIGTERM / Ctrl-C stopped it (after saving step k).
  """
  run = _prepare(config, workdir)
  # Over every process's devices, so that gradients are averaged across hosts; each process
  # feeds its local devices with its own shard of the global batch.
  step_devices = distributed.global_devices()
  pretrain_step, gan_step = steps.make_pmapped_steps(config, step_devices)
  # Place the states and frozen networks once, replicated on the devices the steps run on: the
  # steps return their states there, and a first call with host arrays would compile each step
  # a second time (measured 3-16 s per step on CPU).
  g_state, d_state, frozen = distributed.replicate((run.g_state, run.d_state, run.frozen),
                                                   step_devices, state_lib.AXIS)
  run.g_state = run.d_state = run.frozen = None  # The replicated copies are the live ones.
  writer = writers.MetricWriter(workdir, enabled=run.primary)
  evaluator = _Evaluator(run, writer)
  mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
  total_steps = config.pretrain_steps + config.num_train_steps
  progress = writers.Progress(total_steps, run.start_step,
                              stages=[(0, 'pretraining'), (config.pretrain_steps, 'GAN')])
  n_local = jax.local_device_count()

  def save(step):
    if not checkpoints.all_finite((g_state.params, d_state.params)):
      raise NonFiniteError(f'Parameters are not finite at step {step}; not saving them.')
    checkpoints.save(mngr, step, {'generator': g_state, 'discriminator': d_state},
                     inference_variables(g_state), config)

  pending = []
  step = run.start_step
  summary = {}
  with _StopRequest() as stop:
    while step < total_steps:
      batch = input_pipeline.shard(input_pipeline.train_batch(
          config, run.train_split, step, jax.process_index(), jax.process_count()), n_local)
      if step < config.pretrain_steps:
        g_state, _, metrics = pretrain_step(g_state, d_state, batch, frozen)
      else:
        g_state, d_state, metrics = gan_step(g_state, d_state, batch, frozen)
      step += 1
      pending.append((step, metrics))
      last = step == total_steps
      if step % config.log_every_steps == 0 or last or stop.signal:
        scalars = _mean_metrics(pending)
        pending = []
        line = progress.update(step)
        scalars['steps_per_second'] = progress.interval_rate or 0.0
        scalars['stage'] = 0 if step <= config.pretrain_steps else 1
        scalars['peak_rss_mib'] = peak_rss_mib()
        writer.write_scalars(step, scalars)
        logging.info('%s | %s', line, ' '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items())))
      if stop.signal:
        save(step)
        writer.close()
        logging.warning('Stopped by %s at step %d; checkpoint saved in %s. Resume with the '
                        'same command.', stop.signal, step, checkpoints.checkpoint_dir(workdir))
        return {'interrupted_at_step': step}
      if step % config.eval_every_steps == 0 or last:
        summary = evaluator(step, g_state, final=last)
      if step % config.checkpoint_every_steps == 0 or last:
        _mean_metrics(pending)  # A non-finite step since the last log is never saved.
        save(step)
  if not summary:  # Resumed at the end: evaluate what was restored.
    summary = evaluator(step, g_state, final=True)
  _write_results(run, step, summary, evaluator)
  writer.close()
  return summary
