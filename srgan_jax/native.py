"""Builds the package's C++ XLA FFI modules (`*.cc` beside this file) on first use.

Each module is compiled once per source, jaxlib version, compiler and extra flags, with the
system's C++ compiler (g++, or $CXX) against jaxlib's FFI headers, into the cache directory
conv tuning uses ($SRGAN_JAX_CACHE_DIR, default ~/.cache/srgan_jax), written to a temporary
file and renamed, so that a killed build leaves nothing half-written behind. Processes that
start together on one machine (the processes of a multi-process job, pytest's workers) build
each module once: one compiles it while the others wait for it.
"""

import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Dict, Mapping, Sequence, Tuple

from absl import logging
import jax
import jaxlib

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # Not on Windows, where no module is built (supported()).
  fcntl = None

CACHE_ENV = 'SRGAN_JAX_CACHE_DIR'  # conv_tuning's cache directory, shared.
# '0': use none of the C++ passes that replace XLA ops where they are built (Winograd's
# transforms, BatchNorm's sums, the direct convs, Adam's update), e.g. to rule them out when
# debugging; oneDNN has its own switch.
OPT_OUT_ENV = 'SRGAN_JAX_NATIVE'
# A GCC -march for the modules instead of 'native' (e.g. 'haswell': AVX2 at most), to see how
# they would run on a CPU with fewer vector instructions than this one (benchmarks.targets
# --isa=avx2). A module so built still runs here; it is cached apart from the native build.
MARCH_ENV = 'SRGAN_JAX_NATIVE_MARCH'
# How the FFI calls batch under jax.vmap (e.g. per-example gradients, an ensemble of states):
# each C++ pass takes whole arrays, so a vmapped call runs it once per batch element.
VMAP_METHOD = 'sequential'
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def opted_out() -> bool:
  return os.environ.get(OPT_OUT_ENV) == '0'


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


def cpuinfo() -> Dict[str, str]:
  """The first processor's fields of Linux's /proc/cpuinfo ('model name', 'cpu family',
  'model', 'stepping', 'flags', ...); empty elsewhere. What tells the machine classes apart
  (the conv tuner's cache key, the benchmarks' headers)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      block = f.read().split('\n\n')[0]
  except OSError:
    return {}
  fields = {}
  for line in block.splitlines():
    name, _, value = line.partition(':')
    fields.setdefault(name.strip(), value.strip())
  return fields


def cpu_features() -> str:
  """This CPU's model name and instruction-set flags (Linux's /proc/cpuinfo; '' elsewhere): a
  module built with -march=native runs only on CPUs with its flags, so a cache directory
  shared between machines (a home on NFS, a container image) keeps one build per CPU."""
  fields = cpuinfo()
  return ' | '.join(f'{name} : {fields[name]}' for name in ('model name', 'flags')
                    if name in fields)


def compile_flags(flags: Sequence[str]) -> Tuple[str, ...]:
  """`flags` with -march=native replaced by -march=$SRGAN_JAX_NATIVE_MARCH where it is set."""
  march = os.environ.get(MARCH_ENV)
  return tuple(f'-march={march}' if march and f == '-march=native' else f for f in flags)


def module_path(source: str, name: str, flags: Sequence[str] = (), key: str = '') -> str:
  """Where build puts `source` compiled: a file named by a digest of the source, jaxlib,
  compiler, `flags`, `key` (what else the build depends on, e.g. a library's version) and the
  CPU (cpu_features)."""
  with open(os.path.join(PACKAGE_DIR, source), 'rb') as f:
    digest = hashlib.sha1(f.read() + repr((
        jaxlib.version.__version__, compiler(), compile_flags(flags), key,
        cpu_features())).encode()).hexdigest()[:12]
  return os.path.join(cache_dir(name), f'srgan_{name}_{digest}.so')


def build(source: str, name: str, flags: Sequence[str] = (), key: str = '') -> str:
  """The path of `source` (a file name beside this module) compiled into a shared library
  (module_path), compiling it first if it has not been compiled that way before."""
  target = module_path(source, name, flags, key)
  if os.path.exists(target):
    return target
  directory = os.path.dirname(target)
  os.makedirs(directory, exist_ok=True)
  with _exclusive(os.path.splitext(target)[0] + '.lock'):
    if not os.path.exists(target):  # Else another process built it while this one waited.
      _compile(source, name, flags, target)
  return target


@contextlib.contextmanager
def _exclusive(lock_path: str):
  """Holds an exclusive lock on `lock_path` (created if missing) across processes; the kernel
  releases it if the holder dies."""
  if fcntl is None:
    yield
    return
  with open(lock_path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _compile(source: str, name: str, flags: Sequence[str], target: str) -> None:
  directory = os.path.dirname(target)
  logging.info('%s: compiling the FFI module once, into %s.', name, target)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(fd)
  path = os.path.join(PACKAGE_DIR, source)
  command = [compiler(), '-std=c++17', '-shared', '-fPIC', path, '-I', jax.ffi.include_dir(),
             *compile_flags(flags), '-o', tmp]
  try:
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
      raise RuntimeError(f'compiling {path} failed: {run.stderr.strip()[-2000:]}')
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def supported() -> bool:
  """Whether the modules are built here: Linux on x86-64."""
  return platform.system() == 'Linux' and platform.machine() in ('x86_64', 'AMD64')


def build_all(modules: Sequence[Tuple[str, str, Sequence[str]]]) -> None:
  """Builds the (source, name, flags) modules not built yet side by side, a compiler a core:
  a first run's start-up (the four C++ modules: 8.9 s one after another, 4.7 s so, on a 2-core
  Intel Xeon). A module that cannot be built is left to its own status() to report; nothing is
  built where the modules are not used (SRGAN_JAX_NATIVE=0, not Linux x86-64)."""
  if opted_out() or not supported():
    return

  def build_one(module):
    try:
      build(*module)
    except (RuntimeError, OSError):
      pass  # status() reports it, with what is used instead, when the module is needed.
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    list(pool.map(build_one, modules))


def load(source: str, name: str, targets: Mapping[str, str], flags: Sequence[str] = (),
         key: str = '') -> ctypes.CDLL:
  """`source` built (build), loaded, and each of its handler symbols registered as the XLA
  custom-call target that `targets` maps it from, for the CPU; RuntimeError or OSError when
  any of it cannot be done here (only Linux x86-64 is built for)."""
  if not supported():
    raise RuntimeError(f'{name}\'s FFI module is built for Linux x86-64 only, not '
                       f'{platform.system()} {platform.machine()}')
  module = ctypes.CDLL(build(source, name, flags, key))
  for target, symbol in targets.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(module, symbol)),
                                platform='cpu')
  return module


def status(source: str, name: str, targets: Mapping[str, str], flags: Sequence[str],
           what: str, fallback: str) -> str:
  """'' when `source`'s module is ready (not opted out, built, loaded, its `targets`
  registered: load), else why not, logged as a warning naming `what` is unavailable and what
  is used instead (`fallback`). A module's own status() caches it per process."""
  if opted_out():
    return f'off ({OPT_OUT_ENV}=0)'
  try:
    load(source, name, targets, flags)
  except (RuntimeError, OSError) as e:
    logging.warning('%s unavailable (%s instead): %s', what, fallback, e)
    return str(e)
  logging.info('%s: C++ (%s; %s=0 for %s).', what, module_path(source, name, flags),
               OPT_OUT_ENV, fallback)
  return ''
