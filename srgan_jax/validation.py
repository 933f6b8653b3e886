"""Checks of a config's values, run before any long work starts, and what a config needs.

Each check raises ConfigError naming the field and a value that works. The lists of valid
names come from the modules that implement them (losses, models, vgg, sources), so a new loss
or head is valid where it is written, and nowhere else.
"""

import numpy as np

from srgan_jax import losses
from srgan_jax import models
from srgan_jax import sources
from srgan_jax import vgg
from srgan_jax.errors import ConfigError

TASKS = ('srgan', 'classifier')
SCALES = (2, 4)
CHANNELS = (1, 3)


def _one_of(name, value, choices):
  if isinstance(value, bool) or value not in choices:
    raise ConfigError(f'config.{name} = {value!r} is not supported; use one of {list(choices)}.')


def needs_guide(config) -> bool:
  """Whether a loss uses the pretrained guide classifier (auxiliary or content loss)."""
  return config.loss.auxiliary == 'classifier' or config.loss.content == 'classifier'


def needs_labels(config) -> bool:
  """Whether a loss needs the dataset's labels on training images."""
  return (config.loss.auxiliary == 'discriminator_head' or
          (config.loss.auxiliary == 'classifier' and config.loss.auxiliary_labels == 'true'))


def validate_data_config(data_config) -> None:
  """Checks config.data (the fields every task reads)."""
  _one_of('data.scale', data_config.scale, SCALES)
  _one_of('data.channels', data_config.channels, CHANNELS)
  for field in ('train_examples', 'eval_examples'):
    value = data_config[field]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ConfigError(f'config.data.{field} = {value!r} must be an integer >= 0 (0: all).')
  sources.resolve_source(data_config)


def _validate_classifier(config, num_devices):
  c = config.classifier
  _one_of('classifier.architecture', c.architecture, models.CLASSIFIER_ARCHITECTURES)
  if c.batch_size <= 0 or c.batch_size % num_devices:
    raise ConfigError(f'config.classifier.batch_size = {c.batch_size} must be a positive '
                      f'multiple of the number of devices ({num_devices}).')
  if c.num_epochs < 1:
    raise ConfigError(f'config.classifier.num_epochs = {c.num_epochs} must be >= 1.')
  for name in ('warmup_fraction', 'ema_decay', 'dropout_rate'):
    if not 0 <= c[name] < 1:
      raise ConfigError(f'config.classifier.{name} = {c[name]} must be in [0, 1).')
  if not 0 <= c.max_shift < models.CLASSIFIER_IMAGE_SIZE:
    raise ConfigError(f'config.classifier.max_shift = {c.max_shift} must be 0 (no shifts) '
                      f'or a few pixels.')


def _validate_srgan(config, num_devices):
  _one_of('discriminator.head', config.discriminator.head, models.DISCRIMINATOR_HEADS)
  _one_of('loss.content', config.loss.content, losses.CONTENT_LOSSES)
  _one_of('loss.adversarial', config.loss.adversarial, losses.ADVERSARIAL_LOSSES)
  _one_of('loss.auxiliary', config.loss.auxiliary, losses.AUXILIARY_LOSSES)
  _one_of('loss.auxiliary_labels', config.loss.auxiliary_labels, losses.AUXILIARY_LABELS)
  _one_of('loss.vgg.criterion', config.loss.vgg.criterion, losses.PIXEL_CRITERIA)
  if config.loss.content == 'vgg':
    for layer in config.loss.vgg.layers:
      _one_of('loss.vgg.layers key', layer, vgg.LAYER_NAMES)
  if config.loss.content == 'classifier':
    for layer in config.loss.classifier_layers:
      _one_of('loss.classifier_layers key', layer, models.CLASSIFIER_FEATURE_LAYERS)
  for name in ('num_train_steps', 'pretrain_steps'):
    if config[name] < 0:
      raise ConfigError(f'config.{name} = {config[name]} must be >= 0.')
  for name in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    if config[name] <= 0:
      raise ConfigError(f'config.{name} = {config[name]} must be > 0.')
  if not 0 <= config.ema_decay < 1:
    raise ConfigError(f'config.ema_decay = {config.ema_decay} must be in [0, 1).')
  if config.eval.judge_epochs < 1:
    raise ConfigError(f'config.eval.judge_epochs = {config.eval.judge_epochs} must be >= 1.')
  if config.eval.curve_examples < 0:
    raise ConfigError(f'config.eval.curve_examples = {config.eval.curve_examples} must be >= 0 '
                      f'(0: every evaluation uses all eval_examples).')
  if config.eval.batch_size <= 0 or config.eval.batch_size % num_devices:
    raise ConfigError(f'config.eval.batch_size = {config.eval.batch_size} must be a positive '
                      f'multiple of the number of devices ({num_devices}).')
  if needs_guide(config) or config.eval.judge_workdir:
    _validate_classifier(config, num_devices)


def validate_config(config, num_devices: int = 1):
  """Raises ConfigError naming the first bad field. `num_devices` is the global device count."""
  _one_of('task', config.task, TASKS)
  _one_of('conv_implementation', config.conv_implementation, models.CONV_IMPLEMENTATIONS)
  validate_data_config(config.data)
  if config.batch_size <= 0 or config.batch_size % num_devices:
    raise ConfigError(
        f'config.batch_size = {config.batch_size} must be a positive multiple of the number of '
        f'devices ({num_devices}); e.g. --config.batch_size='
        f'{max(1, -(-config.batch_size // num_devices)) * num_devices}.')
  if config.task == 'classifier':
    _validate_classifier(config, num_devices)
  else:
    _validate_srgan(config, num_devices)
