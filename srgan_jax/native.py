"""Builds the package's C++ XLA FFI modules (`*.cc` beside this file) on first use.

Each module is compiled once per source, jaxlib version, compiler and extra flags, with the
system's C++ compiler (g++, or $CXX) against jaxlib's FFI headers, into the cache directory
conv tuning uses ($SRGAN_JAX_CACHE_DIR, default ~/.cache/srgan_jax), written to a temporary
file and renamed, so that a killed build leaves nothing half-written behind.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Sequence

from absl import logging
import jax
import jaxlib

CACHE_ENV = 'SRGAN_JAX_CACHE_DIR'  # conv_tuning's cache directory, shared.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def cache_dir(name: str) -> str:
  return os.path.join(os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'srgan_jax'), name)


def compiler() -> str:
  """The C++ compiler's path; RuntimeError when there is none."""
  cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not cxx or not shutil.which(cxx):
    raise RuntimeError(f'no C++ compiler ({cxx or "g++, or $CXX"} not found) to build '
                       'srgan-jax\'s native modules')
  return cxx


def build(source: str, name: str, flags: Sequence[str] = (), key: str = '') -> str:
  """The path of `source` (a file name beside this module) compiled into a shared library,
  compiling it first if this source, jaxlib, compiler, `flags` and `key` (what else the build
  depends on, e.g. a library's version) have not been compiled together before."""
  cxx = compiler()
  path = os.path.join(PACKAGE_DIR, source)
  with open(path, 'rb') as f:
    digest = hashlib.sha1(f.read() + repr((jaxlib.version.__version__, cxx, tuple(flags),
                                           key)).encode()).hexdigest()[:12]
  directory = cache_dir(name)
  target = os.path.join(directory, f'srgan_{name}_{digest}.so')
  if os.path.exists(target):
    return target
  os.makedirs(directory, exist_ok=True)
  logging.info('%s: compiling the FFI module once, into %s.', name, target)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(fd)
  command = [cxx, '-std=c++17', '-shared', '-fPIC', path, '-I', jax.ffi.include_dir(),
             *flags, '-o', tmp]
  try:
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
      raise RuntimeError(f'compiling {path} failed: {run.stderr.strip()[-2000:]}')
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target
