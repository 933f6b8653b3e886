"""Atomic file writes: a file is either its old version or its complete new one, never half.

A run killed mid-write (SIGKILL, a full disk) must not leave a truncated results.json, PNG or
metrics file behind. Everything the package writes outside Orbax goes through `atomic_write`:
the content goes to a temporary file in the same directory, which is then renamed over the
target (a rename within one file system is atomic on POSIX).
"""

import json
import os
import tempfile
from typing import Callable, IO, Union


def atomic_write(path, content: Union[str, bytes, Callable[[IO[bytes]], None]],
                 mode: int = 0o644) -> None:
  """Writes `content` (text, bytes, or a function writing to a binary file) to `path`.

  Creates the parent directories. On any error the target is left as it was.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                             dir=directory)
  try:
    with os.fdopen(fd, 'wb') as f:
      if callable(content):
        content(f)
      else:
        f.write(content.encode('utf-8') if isinstance(content, str) else content)
    os.chmod(tmp, mode)  # mkstemp makes 0600; results are for everyone to read.
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise


def write_json(path, data, **dump_kwargs) -> None:
  """`data` as an indented JSON file, atomically; NaN/inf are refused (standard JSON only)."""
  dump_kwargs.setdefault('indent', 2)
  atomic_write(path, json.dumps(data, allow_nan=False, **dump_kwargs) + '\n')


def read_json(path):
  """The JSON value in `path`, or None when it is missing or unreadable."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
