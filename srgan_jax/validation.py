"""Checks of a config's values, run before any long work starts, and what a config needs.

Each check raises ConfigError naming the field and a value that works. The lists of valid
names come from the modules that implement them (losses, models, vgg, sources), so a new loss
or head is valid where it is written, and nowhere else.
"""

import numpy as np

from srgan_jax import config_utils
from srgan_jax import convolution
from srgan_jax import losses
from srgan_jax import models
from srgan_jax import platform
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


def uses_crops(data_config) -> bool:
  """Whether the data are photographs of any size, trained on random HR crops (a PhotoSplit):
  config.data.hr_crop > 0, or a source of photographs ('folder', 'skimage')."""
  return data_config.get('hr_crop', 0) > 0 or data_config.source in sources.PHOTO_SOURCES


def is_mnist(data_config) -> bool:
  """Whether the data are the whole 28x28 MNIST digits (the judge's feature FID is then
  digit-FID, and the classifiers' checkpoints are the 28x28 ones of before)."""
  return is_labelled_whole(data_config) and data_config.name == 'mnist'


def is_labelled_whole(data_config) -> bool:
  """Whether the data can train the classifiers (the guide, the judge): a tfds dataset (MNIST
  included) of whole images of one size (hr_crop = 0, e.g. cifar10's 32x32), not random crops
  nor the unlabelled photographs of a folder or skimage. Whether its records carry labels is
  known once they are read, and checked there (a clear error before training)."""
  return (data_config.source in ('auto', 'offline', 'tfds') and not uses_crops(data_config))


def crop_border(config) -> int:
  """Pixels shaved at each border before PSNR/SSIM: config.eval.crop_border, where -1 means
  the scale (the SR literature's convention)."""
  border = config.eval.crop_border
  return config.data.scale if border == -1 else border


def _validate_crops(data_config) -> None:
  hr_crop = data_config.get('hr_crop', 0)
  if isinstance(hr_crop, bool) or not isinstance(hr_crop, (int, np.integer)) or hr_crop < 0:
    raise ConfigError(f'config.data.hr_crop = {hr_crop!r} must be an integer >= 0 (0: whole '
                      f'images, e.g. MNIST; paper: 96).')
  if hr_crop % data_config.scale:
    raise ConfigError(
        f'config.data.hr_crop = {hr_crop} is not a multiple of config.data.scale = '
        f'{data_config.scale}: the LR crop would not be whole pixels; use e.g. '
        f'{max(1, round(hr_crop / data_config.scale)) * data_config.scale}.')
  if data_config.source in sources.PHOTO_SOURCES and hr_crop == 0:
    raise ConfigError(
        f"config.data.source = {data_config.source!r} holds photographs of different sizes, "
        f'which train on random crops: set config.data.hr_crop (paper: 96; a multiple of '
        f'the scale).')
  for field in ('use_hflip', 'use_rot', 'in_memory'):
    if field in data_config and not isinstance(data_config[field], bool):
      raise ConfigError(f'config.data.{field} = {data_config[field]!r} must be True or False.')
  if data_config.source == 'folder':
    for field in ('train_dir', 'test_dir'):
      if not data_config.get(field, ''):
        raise ConfigError(f"config.data.source = 'folder' needs config.data.{field}: a folder "
                          'of PNG/JPEG/BMP/WebP images (searched recursively).')


def validate_data_config(data_config) -> None:
  """Checks config.data (the fields every task reads)."""
  _one_of('data.scale', data_config.scale, SCALES)
  _one_of('data.channels', data_config.channels, CHANNELS)
  for field in ('train_examples', 'eval_examples'):
    value = data_config[field]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ConfigError(f'config.data.{field} = {value!r} must be an integer >= 0 (0: all).')
  sources.resolve_source(data_config)
  _validate_crops(data_config)


def _validate_dense_head(config) -> None:
  """A dense discriminator head is sized from the training images: photographs of different
  sizes need a fixed crop size."""
  data = config.data
  if (config.discriminator.head == 'dense' and data.get('hr_crop', 0) == 0 and
      data.source in sources.PHOTO_SOURCES):
    raise ConfigError(
        "config.discriminator.head = 'dense' needs a fixed crop size (its dense layer is "
        'sized from it: 96 -> 6x6x512 in the paper), and the photographs of '
        f'config.data.source = {data.source!r} differ in size: set config.data.hr_crop (a '
        "multiple of the scale), or use discriminator.head='patch' with crops.")


def _validate_photographs(config) -> None:
  """What cannot apply to unlabelled photographs or random crops: the guide, the judge and
  labels, which need a labelled dataset of whole images (MNIST, cifar10, ...)."""
  data = config.data
  if is_labelled_whole(data):
    return
  if data.source in sources.PHOTO_SOURCES:
    what = f'config.data.source = {data.source!r}, which has no class labels'
  else:
    what = (f'config.data.name = {data.name!r} with hr_crop = {data.hr_crop}: a classifier '
            'needs whole images of one size, not random crops (set hr_crop = 0)')
  if needs_guide(config):
    field = ('loss.content' if config.loss.content == 'classifier' else 'loss.auxiliary')
    raise ConfigError(
        f'config.{field} = {config.loss[field.split(".")[1]]!r} uses a guide classifier (the '
        f'MNIST guide classifier, or one trained on another labelled tfds dataset of whole '
        f'images of one size, e.g. cifar10); it cannot apply to {what}. Use '
        f"loss.auxiliary='none' and loss.content='mse' (or 'vgg').")
  if config.eval.judge_workdir:
    raise ConfigError(
        f'config.eval.judge_workdir = {config.eval.judge_workdir!r} asks for a judge '
        f'classifier (judge accuracy and judge-feature FID: the digit judge on MNIST, or one '
        f'trained on another labelled tfds dataset of whole images, e.g. cifar10); it cannot '
        f'apply to {what}. Set --config.eval.judge_workdir="" (PSNR/SSIM only).')
  if config.loss.auxiliary == 'discriminator_head' and data.source in sources.PHOTO_SOURCES:
    raise ConfigError(
        f"config.loss.auxiliary = 'discriminator_head' needs class labels, and {what}; use "
        "loss.auxiliary='none'.")


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
  if c.max_shift < 0 or (is_mnist(config.data) and c.max_shift >= models.CLASSIFIER_IMAGE_SIZE):
    raise ConfigError(f'config.classifier.max_shift = {c.max_shift} must be 0 (no shifts) '
                      f'or a few pixels.')
  if 'hflip' in c and not isinstance(c.hflip, bool):
    raise ConfigError(f'config.classifier.hflip = {c.hflip!r} must be True (photographs) or '
                      'False (digits).')
  if not is_labelled_whole(config.data):
    raise ConfigError(
        f'A classifier (the guide or the judge, config.task = {config.task!r}) trains on a '
        f'labelled tfds dataset of whole images of one size (MNIST, cifar10, ...), not on '
        f'config.data.source = {config.data.source!r} with hr_crop = '
        f'{config.data.get("hr_crop", 0)}.')
  num_classes = config.data.get('num_classes', 0)
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
      num_classes < 0 or num_classes == 1):
    raise ConfigError(f'config.data.num_classes = {num_classes!r} must be 0 (from the '
                      'dataset) or the number of classes (>= 2).')


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
  if not isinstance(config.eval.y_channel, bool):
    raise ConfigError(f'config.eval.y_channel = {config.eval.y_channel!r} must be True (PSNR/'
                      'SSIM on the Y channel of YCbCr) or False (on RGB).')
  if config.eval.crop_border < -1:
    raise ConfigError(f'config.eval.crop_border = {config.eval.crop_border} must be >= 0, or '
                      '-1 for the scale (the SR convention).')
  if config.eval.bucket < 0:
    raise ConfigError(f'config.eval.bucket = {config.eval.bucket} must be >= 0 (LR pixels '
                      'a test image is padded to a multiple of; 0: its own size).')
  _validate_photographs(config)
  if needs_guide(config) or config.eval.judge_workdir:
    _validate_classifier(config, num_devices)


def _split_batches(config) -> tuple:
  """The batch-size fields of `config` that are split over the devices: the training batch,
  the SRGAN's evaluation batch, and the classifiers' batch when one may be trained."""
  if config.task == 'classifier':
    return ('batch_size', 'classifier.batch_size')
  if needs_guide(config) or config.eval.judge_workdir:
    return ('batch_size', 'eval.batch_size', 'classifier.batch_size')
  return ('batch_size', 'eval.batch_size')


def validate_device_count(config, num_devices: int) -> None:
  """Raises one ConfigError naming every batch size that does not split over `num_devices`.

  Checkpoints restore on any device count, so a run may resume on another machine (Colab: 1
  device) with the same command; then its batches must still divide, and the message says
  what to set, all batch sizes at once, before any long work.
  """
  bad = []
  for field in _split_batches(config):
    value = config_utils.get_field(config, field)
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0
        or value % num_devices):
      bad.append((field, value))
  if not bad:
    return
  what = ', '.join(f'config.{field} = {value!r}' for field, value in bad)
  fix = ' '.join(f'--config.{field}={_round_up(value, num_devices)}' for field, value in bad)
  raise ConfigError(
      f'{what} must be {"a positive multiple" if len(bad) == 1 else "positive multiples"} of '
      f'the number of devices ({num_devices}); e.g. {fix}. A checkpoint restores on any number '
      f'of devices: resume with {"this" if len(bad) == 1 else "these"} set, or on a number of '
      f'devices that divides {"it" if len(bad) == 1 else "them"} (on CPU, '
      f'--config.cpu_devices_per_core=False gives one device).')


def _round_up(value, multiple: int) -> int:
  """The smallest positive multiple of `multiple` >= value (`multiple` for a non-integer)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    return multiple
  return max(1, -(-int(value) // multiple)) * multiple


def validate_config(config, num_devices: int = 1):
  """Raises ConfigError naming the first bad field. `num_devices` is the global device count."""
  _one_of('task', config.task, TASKS)
  _one_of('conv_implementation', config.conv_implementation, convolution.CONV_IMPLEMENTATIONS)
  _one_of('cpu_conv_library', config.cpu_conv_library, platform.CONV_LIBRARIES)
  if config.task == 'srgan':
    _validate_dense_head(config)
  validate_data_config(config.data)
  validate_device_count(config, num_devices)
  if config.task == 'classifier':
    _validate_classifier(config, num_devices)
  else:
    _validate_srgan(config, num_devices)
