"""Training of the classifiers: the guide of the auxiliary loss, and the judge.

- The guide (`config.classifier.architecture`, the seed's CNN) steers the generator through the
  auxiliary classifier loss and the classifier-feature content loss.
- The judge (a LeNet, another seed and data order) only measures how recognisable SR digits
  are; it is never used in any loss, so a generator cannot game it.
Both are trained on the training split minus a held-out validation set (which picks the best
epoch) and report accuracy on the test split. Each is cached in its own workdir.

They train on whatever labelled dataset of whole, same-size images config.data names (MNIST's
28x28 digits; cifar10's 32x32 RGB photographs): the network is initialised at the dataset's
image size and channels, with one output per class (config.data.num_classes when set, else the
tfds label feature's num_classes), and both are recorded in the checkpoint's extra facts
('image_size', 'num_classes') so that it restores without the data.
"""

import copy
import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from srgan_jax import adam
from srgan_jax import checkpoints
from srgan_jax import conv_tuning
from srgan_jax import distributed
from srgan_jax import image_ops
from srgan_jax import inference
from srgan_jax import input_pipeline
from srgan_jax import losses
from srgan_jax import models
from srgan_jax import state as state_lib
from srgan_jax import validation
from srgan_jax import writers
from srgan_jax.errors import ConfigError

AXIS = state_lib.AXIS
JUDGE_SEED_OFFSET = 1000


def role_config(config, role: str):
  """The classifier config for `role` ('guide' or 'judge') derived from an SRGAN config."""
  c = copy.deepcopy(config)
  c.task = 'classifier'
  if role == 'judge':
    c.classifier.architecture = 'lenet'
    c.classifier.num_epochs = config.eval.judge_epochs
    c.seed = config.seed + JUDGE_SEED_OFFSET
  return c


def dataset_num_classes(config, labels: np.ndarray) -> int:
  """The number of classes of config.data's labels: config.data.num_classes when > 0, else
  MNIST's 10, else the tfds label feature's num_classes (read from the dataset's metadata,
  no download), else the largest label + 1. A label outside the classes is a ConfigError."""
  data = config.data
  n = int(data.get('num_classes', 0) or 0)
  if n <= 0 and data.name == 'mnist':
    n = 10
  if n <= 0:
    n = _tfds_num_classes(data.name)
  if n <= 0:
    n = int(labels.max()) + 1
  if labels.size and (labels.min() < 0 or labels.max() >= n):
    raise ConfigError(
        f'The labels of {data.name!r} range over {int(labels.min())}..{int(labels.max())}, '
        f'outside the {n} classes of the classifier; set --config.data.num_classes.')
  return n


def _tfds_num_classes(name: str) -> int:
  """num_classes of tfds dataset `name`'s 'label' feature (0 when unknown or not a tfds
  dataset); from the builder's metadata, which needs neither the data nor the network."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return int(getattr(tfds.builder(name).info.features['label'], 'num_classes', 0) or 0)
  except Exception:  # pylint: disable=broad-except
    return 0


def random_hflip(images, rng):
  """Each image mirrored left-right with probability 1/2: the standard augmentation of
  photographs (cifar10), never of digits (a mirrored digit is another shape)."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def random_shift(images, rng, max_shift: int):
  """Each image translated by up to `max_shift` pixels in x and y (background filled in).

  The classic MNIST augmentation: digits are centred by their centre of mass, so small shifts
  are the variation a classifier sees at test time (and in SR outputs). On photographs it is
  the standard random crop of an image zero-padded (black) by `max_shift` (cifar10: 4).
  """
  if max_shift <= 0:
    return images
  n, h, w, _ = images.shape
  pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  padded = jnp.pad(images, pad, constant_values=-1.0)  # -1: the background in model range.
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * max_shift + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def _train_step(state, batch, rng, *, max_shift, ema_decay, hflip=False, axis_name=AXIS):
  rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  shift_rng, rng = jax.random.split(rng)
  images = random_shift(image_ops.to_model_range(batch['hr']), shift_rng, max_shift)
  if hflip:  # A separate key, so that MNIST's shifts and dropout stay what they were.
    images = random_hflip(images, jax.random.fold_in(shift_rng, 1))

  def loss_fn(params):
    variables = {'params': params}
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
    (logits, _), updates = state.apply_fn(variables, images, train=True,
                                          mutable=['batch_stats'], rngs={'dropout': rng})
    loss = losses.classification_loss(logits, batch['label'])
    acc = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return loss, (updates.get('batch_stats', state.batch_stats), {'loss': loss, 'accuracy': acc})

  grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads, metrics = state_lib.pmean_once((grads, metrics), axis_name)
  return state_lib.apply_averaged_gradients(state, grads, batch_stats, ema_decay), metrics


def _predict(variables, batch, *, model):
  logits, _ = model.apply(variables, image_ops.to_model_range(batch['hr']), train=False)
  return jnp.argmax(logits, -1) == batch['label']


def make_predict(model, devices):
  """The pmapped (variables, sharded batch) -> correct per example of `model` on `devices`."""
  return jax.pmap(functools.partial(_predict, model=model), in_axes=(None, 0), devices=devices)


def accuracy(model, variables, split, batch_size, devices, predict=None) -> float:
  """Top-1 accuracy of a classifier on a split; `predict` (make_predict's) is reused across
  calls when given, so that each evaluation does not trace and compile it again."""
  predict = predict or make_predict(model, devices)
  correct = total = 0
  for batch in input_pipeline.eval_batches(split, batch_size):
    mask = batch.pop('mask')
    out = np.asarray(predict(variables, input_pipeline.shard(batch, len(devices))))
    correct += int(out.reshape(-1)[mask].sum())
    total += int(mask.sum())
  return correct / total


def _variables(state):
  """The evaluated (and saved) variables: the Polyak average of the parameters."""
  v = {'params': state.ema_params}
  if state.batch_stats:
    v['batch_stats'] = state.batch_stats
  return v


def learning_rate_schedule(config, steps: int):
  """Linear warm-up to `learning_rate`, then cosine decay to 0 (one cycle over the run)."""
  c = config.classifier
  warmup = int(round(c.warmup_fraction * steps))
  return optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, warmup, max(steps, warmup + 1))


def create_state(config, rng, steps, conv_plan=None,
                 image_size=models.CLASSIFIER_IMAGE_SIZE, num_classes: int = 10):
  """The classifier's state: a TrainState with the Polyak average of its parameters
  (`ema_params`, what is evaluated and saved), like the generator's. Its network computes
  convs by config.conv_implementation (with `conv_plan` when 'tuned'), takes images of
  `image_size` (an int or (height, width); MNIST: 28) and has `num_classes` outputs."""
  model = models.create_classifier(config.classifier.architecture,
                                   config.classifier.dropout_rate, AXIS,
                                   config.conv_implementation, conv_plan, num_classes)
  variables = models.init_classifier(
      models.create_classifier(config.classifier.architecture, num_classes=num_classes),
      rng, config.data.channels, image_size)
  return state_lib.AveragedTrainState.create(
      apply_fn=model.apply, params=variables['params'],
      adam=adam.Adam(learning_rate_schedule(config, steps)),
      batch_stats=variables.get('batch_stats', {}), ema_params=variables['params'])


def conv_networks(config, eval_batch_per_device: int, image_size=models.CLASSIFIER_IMAGE_SIZE):
  """The classifier as its training step and its evaluations run it, at one device's batch
  and the dataset's `image_size` (MNIST: 28), for conv_tuning."""
  architecture = config.classifier.architecture
  model = models.create_classifier(architecture)
  image = models.classifier_image_shape(image_size) + (config.data.channels,)
  return [conv_tuning.Network(f'{architecture} classifier', model,
                              (config.classifier.batch_size // jax.device_count(),) + image),
          conv_tuning.Network(f'{architecture} classifier in evaluation', model,
                              (eval_batch_per_device,) + image, trained=False)]


def split_image_size(split) -> tuple:
  """(height, width) of the images of a split of same-size images."""
  return tuple(int(d) for d in split.hr.shape[1:3])


def check_data(config, full) -> None:
  """Raises a ConfigError when the training split `full` cannot train the classifier of
  `config`: no labels, a validation set that leaves no training images, or random shifts as
  large as the images."""
  if full.labels is None:
    raise ConfigError(f'Dataset {config.data.name!r} has no labels to train a '
                      f'classifier on.')
  n_val = config.classifier.validation_examples
  if not 0 < n_val < full.num_examples:
    raise ConfigError(
        f'config.classifier.validation_examples = {n_val} must be between 1 and the number of '
        f'training examples - 1 ({full.num_examples - 1}).')
  height, width = split_image_size(full)
  if config.classifier.max_shift >= min(height, width):
    raise ConfigError(f'config.classifier.max_shift = {config.classifier.max_shift} must be '
                      f'smaller than the images ({height}x{width}): a few '
                      'pixels (MNIST: 1, cifar10: 4).')


def evaluation_batch(config, test_examples: int, num_devices: int) -> int:
  """The batch of the validation and test evaluations: up to 1000 images, fewer when the
  splits are smaller (padding a few test images to 1000 would cost more than the evaluation
  itself), a multiple of the devices."""
  largest = max(config.classifier.validation_examples, test_examples)
  return min(1000 // num_devices * num_devices, -(-largest // num_devices) * num_devices)


def data_conv_networks(config, full, test):
  """conv_networks as train_and_evaluate runs them on the training split `full` and the test
  split `test` (checked first: check_data), on this process's devices."""
  check_data(config, full)
  nd = jax.local_device_count()
  return conv_networks(config, evaluation_batch(config, test.num_examples, nd) // nd,
                       split_image_size(full))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains a classifier; saves the best-on-validation variables and the test accuracy."""
  devices = jax.local_devices()
  validation.validate_config(config, jax.device_count())
  # The training step runs over every process's devices (one model for all hosts, each process
  # feeding its shard of the global batch); evaluation runs on each process's own devices.
  step_devices = distributed.global_devices()
  checkpoints.ensure_writable(workdir)
  full = input_pipeline.load_split(config, 'train')
  test = input_pipeline.load_split(config, 'test')
  networks = data_conv_networks(config, full, test)
  image_size = split_image_size(full)
  num_classes = dataset_num_classes(config, np.concatenate(
      [full.labels] + ([] if test.labels is None else [test.labels])))
  n_val = config.classifier.validation_examples
  train = input_pipeline.Split(full.hr[:-n_val], full.lr[:-n_val], full.labels[:-n_val])
  val = input_pipeline.Split(full.hr[-n_val:], full.lr[-n_val:], full.labels[-n_val:])

  bs = config.classifier.batch_size
  eval_batch = evaluation_batch(config, test.num_examples, len(devices))
  per_epoch = input_pipeline.steps_per_epoch(train.num_examples, bs)
  total = per_epoch * config.classifier.num_epochs
  rng = jax.random.PRNGKey(config.seed)
  conv_plan = conv_tuning.plan_for(config.conv_implementation, networks)
  state = create_state(config, rng, total, conv_plan, image_size, num_classes)
  state = distributed.replicate(state, step_devices, AXIS)
  model = models.create_classifier(config.classifier.architecture,
                                   conv=config.conv_implementation, conv_plan=conv_plan,
                                   num_classes=num_classes)
  step_fn = jax.pmap(functools.partial(_train_step, max_shift=config.classifier.max_shift,
                                       ema_decay=config.classifier.ema_decay,
                                       hflip=bool(config.classifier.get('hflip', False))),
                     axis_name=AXIS, in_axes=(None, 0, None),
                     out_axes=(None, None), devices=step_devices)
  predict = make_predict(model, devices)
  writer = writers.MetricWriter(workdir, enabled=jax.process_index() == 0)
  progress = writers.Progress(total)
  logging.info('Training the %s classifier (%d parameters; %dx%dx%d images, %d classes) for '
               '%d epoch(s) in %s.', config.classifier.architecture,
               models.count_params(state.params), *image_size, config.data.channels,
               num_classes, config.classifier.num_epochs, workdir)
  best_acc, best_vars, best_epoch = -1.0, None, 0
  t0 = time.time()
  step = 0
  for epoch in range(1, config.classifier.num_epochs + 1):
    for _ in range(per_epoch):
      idx = input_pipeline.batch_indices(config.seed, step, bs, train.num_examples,
                                         jax.process_index(), jax.process_count())
      batch = input_pipeline.shard(input_pipeline.get_batch(train, idx), len(devices))
      state, metrics = step_fn(state, batch, jax.random.fold_in(rng, step))
      step += 1
      if step % 100 == 0:
        metrics = jax.device_get(metrics)
        writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})
        logging.info('%s | loss=%.4f', progress.update(step), metrics['loss'])
    # On the host: the state lives on every process's devices, evaluation on this process's.
    val_acc = accuracy(model, jax.device_get(_variables(state)), val, eval_batch, devices,
                       predict)
    writer.write_scalars(step, {'validation/accuracy': val_acc, 'epoch': epoch})
    logging.info('Epoch %d: validation accuracy %.4f', epoch, val_acc)
    if val_acc > best_acc:
      best_acc, best_vars, best_epoch = val_acc, jax.device_get(_variables(state)), epoch
  test_acc = accuracy(model, best_vars, test, eval_batch, devices, predict)
  results = {'test_accuracy': test_acc, 'validation_accuracy': best_acc,
             'best_epoch': best_epoch, 'train_seconds': time.time() - t0}
  writer.write_scalars(step, {f'final/{k}': v for k, v in results.items()})
  writer.close()
  # What the network was built for, so that it restores without the data (inference).
  results.update(image_size=list(image_size), num_classes=num_classes)
  mngr = checkpoints.manager(workdir, keep=1)
  checkpoints.save(mngr, step, jax.device_get(state), best_vars, config, extra=results)
  logging.info('Classifier %s: test accuracy %.4f (best epoch %d, %.0f s).',
               config.classifier.architecture, test_acc, best_epoch, results['train_seconds'])
  return results


def load_or_train(config, workdir: str, role: str):
  """The classifier for `role` from `workdir`, trained there first when it is missing."""
  cfg = role_config(config, role)
  if not checkpoints.has_checkpoint(workdir):
    logging.info('No %s classifier in %s: training it first (%s, seed %d).', role, workdir,
                 cfg.classifier.architecture, cfg.seed)
    train_and_evaluate(cfg, workdir)
  model, variables, extra = inference.restore_classifier(workdir, cfg)
  logging.info('Loaded the %s classifier from %s (test accuracy %s).', role, workdir,
               extra.get('test_accuracy'))
  return model, variables
