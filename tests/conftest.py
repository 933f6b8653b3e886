"""Test set-up: 4 fake CPU devices (before JAX starts) and a tiny config for real code paths."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent XLA cache for the session: many tests compile the same tiny programs, and on
# 2 CPU cores compiling is most of their time.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='srgan_jax_xla_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import mnist_srgan  # pylint: disable=g-import-not-at-top,wrong-import-position
from srgan_jax import config_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_DEVICES = 4


def make_tiny_config(**overrides):
  """The seed's SRGAN shrunk to seconds: real MNIST subset, tiny networks, a few steps."""
  config = mnist_srgan.get_config()
  config.data.train_examples = 256
  config.data.eval_examples = 64
  config.generator.num_res_blocks = 1
  config.generator.features = 8
  config.discriminator.features = (8, 16)
  config.discriminator.dense_features = 16
  config.batch_size = 8
  config.pretrain_steps = 4
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 8
  config.checkpoint_every_steps = 4
  config.eval.batch_size = 32
  config.eval.num_sample_images = 4
  config.classifier.num_epochs = 1
  config.classifier.batch_size = 32
  config.classifier.validation_examples = 64
  config.cpu_devices_per_core = False
  for key, value in overrides.items():
    config_utils.set_field(config, key, value)
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()
