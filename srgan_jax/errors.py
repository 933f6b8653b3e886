"""The errors a user can cause; main.py and the CLIs report them as messages, not tracebacks."""

from srgan_jax.checkpoints import CheckpointError
from srgan_jax.input_pipeline import DatasetUnavailableError
from srgan_jax.train import NonFiniteError
from srgan_jax.validation import ConfigError
from srgan_jax.vgg import VGGWeightsError

USER_ERRORS = (ConfigError, CheckpointError, DatasetUnavailableError, NonFiniteError,
               VGGWeightsError)
