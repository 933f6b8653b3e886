"""Trains an SRGAN (or an MNIST classifier) from an ml_collections config.

  python main.py --config=configs/mnist_cnn.py --workdir=runs/mnist_cnn

Kept thin, like flax examples/imagenet/main.py, so the library stays importable from Colab.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from srgan_jax import classifier_train
from srgan_jax import distributed
from srgan_jax import errors
from srgan_jax import platform
from srgan_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
distributed.define_flags()

TASKS = {'srgan': train.train_and_evaluate, 'classifier': classifier_train.train_and_evaluate}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  platform.quiet_logs()
  try:
    # Before the first JAX computation (importing jax starts no backend).
    platform.configure_cpu(FLAGS.config.cpu_devices_per_core, FLAGS.config.cpu_conv_library)
    distributed.initialize_from_flags()  # Multi-host: a no-op without a coordinator address.
    task = FLAGS.config.task
    if task not in TASKS:
      raise errors.ConfigError(f'config.task = {task!r} is not supported; use one of '
                               f'{list(TASKS)}.')
    TASKS[task](FLAGS.config, FLAGS.workdir)
  except errors.USER_ERRORS as e:
    logging.error('%s: %s', type(e).__name__, e)
    sys.exit(1)


if __name__ == '__main__':
  platform.freeze_imported_objects()
  app.run(main)
