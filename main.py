"""Trains an SRGAN (or an MNIST classifier) from an ml_collections config.

  python main.py --config=configs/mnist_cnn.py --workdir=runs/mnist_cnn

Kept thin, like flax examples/imagenet/main.py, so the library stays importable from Colab.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from srgan_jax import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
distributed.define_flags()


def _quiet_orbax(record) -> bool:
  """Keeps Orbax's per-save INFO chatter out of the training log (warnings still show)."""
  return record.levelno >= logging.converter.STANDARD_WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  from srgan_jax import platform  # pylint: disable=g-import-not-at-top
  platform.configure_cpu_devices(FLAGS.config.cpu_devices_per_core)
  distributed.initialize_from_flags()  # Multi-host: a no-op without a coordinator address.
  from srgan_jax import errors  # pylint: disable=g-import-not-at-top
  from srgan_jax import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.USER_ERRORS as e:
    logging.error('%s: %s', type(e).__name__, e)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
