"""Every error a user can cause, in one place; main.py and the CLIs print them, not tracebacks.

Each message says what is wrong and what to do. This module imports nothing from the package,
so any module can raise these without pulling in another.
"""


class ConfigError(ValueError):
  """A config value that cannot work; the message says which field and what to use."""


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unusable or made for another architecture."""


class DatasetUnavailableError(RuntimeError):
  """The requested dataset cannot be read here (not prepared, or its package is missing)."""


class NonFiniteError(FloatingPointError):
  """Training produced a NaN or inf; the state of that step is never saved."""


class VGGWeightsError(ValueError):
  """A VGG19 weights file is missing, of an unknown format, or does not hold VGG19."""


class DistributedConfigError(ValueError):
  """Inconsistent multi-process settings; the message names the flag or variable to fix."""


class UpscaleError(Exception):
  """An image or path given to the upscaler that cannot be used."""


class ImageDataError(ValueError):
  """A folder or image file of a dataset that cannot be used (missing, empty, unreadable, or
  smaller than the training crop); the message names the folder or file."""


USER_ERRORS = (ConfigError, CheckpointError, DatasetUnavailableError, NonFiniteError,
               VGGWeightsError, DistributedConfigError, UpscaleError, ImageDataError)
