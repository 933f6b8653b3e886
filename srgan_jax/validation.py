"""Checks of a config that a user can get wrong, run before any long work starts."""

from srgan_jax import losses

TASKS = ('srgan', 'classifier')
DISCRIMINATOR_HEADS = ('dense', 'patch')
VGG_CRITERIA = ('l1', 'mse')


class ConfigError(ValueError):
  """A config value that cannot work; the message says which field and what to use."""


def _one_of(name, value, choices):
  if value not in choices:
    raise ConfigError(f'config.{name} = {value!r} is not supported; use one of {list(choices)}.')


def validate_config(config, num_devices: int = 1):
  """Raises ConfigError naming the first bad field. `num_devices` is the global device count."""
  _one_of('task', config.task, TASKS)
  _one_of('data.scale', config.data.scale, (2, 4))
  _one_of('data.channels', config.data.channels, (1, 3))
  _one_of('data.source', config.data.source, ('auto', 'offline', 'tfds'))
  if config.batch_size <= 0 or config.batch_size % num_devices:
    raise ConfigError(
        f'config.batch_size = {config.batch_size} must be a positive multiple of the number of '
        f'devices ({num_devices}); e.g. --config.batch_size='
        f'{max(1, -(-config.batch_size // num_devices)) * num_devices}.')
  if config.task == 'classifier':
    if config.classifier.batch_size % num_devices:
      raise ConfigError(f'config.classifier.batch_size = {config.classifier.batch_size} must be '
                        f'a multiple of the number of devices ({num_devices}).')
    c = config.classifier
    if c.num_epochs < 1:
      raise ConfigError(f'config.classifier.num_epochs = {c.num_epochs} must be >= 1.')
    for name in ('warmup_fraction', 'ema_decay', 'dropout_rate'):
      if not 0 <= c[name] < 1:
        raise ConfigError(f'config.classifier.{name} = {c[name]} must be in [0, 1).')
    if not 0 <= c.max_shift < 28:
      raise ConfigError(f'config.classifier.max_shift = {c.max_shift} must be 0 (no shifts) '
                        f'or a few pixels.')
    return
  _one_of('discriminator.head', config.discriminator.head, DISCRIMINATOR_HEADS)
  _one_of('loss.content', config.loss.content, losses.CONTENT_LOSSES)
  _one_of('loss.adversarial', config.loss.adversarial, losses.ADVERSARIAL_LOSSES)
  _one_of('loss.auxiliary', config.loss.auxiliary, losses.AUXILIARY_LOSSES)
  _one_of('loss.auxiliary_labels', config.loss.auxiliary_labels, losses.AUXILIARY_LABELS)
  _one_of('loss.vgg.criterion', config.loss.vgg.criterion, VGG_CRITERIA)
  if config.loss.content == 'vgg':
    from srgan_jax import vgg  # pylint: disable=g-import-not-at-top
    for layer in config.loss.vgg.layers:
      _one_of('loss.vgg.layers key', layer, vgg.LAYER_NAMES)
  if config.loss.content == 'classifier':
    for layer in config.loss.classifier_layers:
      _one_of('loss.classifier_layers key', layer, ('conv1', 'conv2', 'conv3', 'dense1', 'dense2'))
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
  if config.eval.batch_size % num_devices:
    raise ConfigError(f'config.eval.batch_size = {config.eval.batch_size} must be a multiple of '
                      f'the number of devices ({num_devices}).')
