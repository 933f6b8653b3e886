"""oneDNN's convolutions as a conv-tuning candidate ('onednn'): experimental, opt-in
(SRGAN_JAX_ONEDNN=1, with the optional extra installed: `pip install ".[onednn]"`).

Why: on an AVX-512 Intel Xeon, XLA:CPU's convolutions and their gradients run at 65-185
GFLOP/s a core and no formulation of them in XLA (im2col, kn2row, Winograd) closes the gap to
oneDNN, PyTorch's CPU convolution library, at 200-235 (benchmarks/README.md, "The Intel Xeon
again" and "oneDNN through XLA's FFI"). jaxlib has no oneDNN convolution of its own, and PyPI's
CPU-only oneDNN stops at 3.2; its `onednn` package (3.13) is the SYCL build, whose CPU engine
runs on Intel's OpenCL CPU runtime (`intel-opencl-rt`, pulled in by `dpcpp-cpp-rt`).

How: onednn_conv.cc, XLA FFI handlers for the three phases of a conv, is compiled with the
system's C++ compiler (g++, or $CXX) against jaxlib's FFI headers and the installed oneDNN, once
per source, oneDNN and jaxlib version (cached under $SRGAN_JAX_CACHE_DIR, default
~/.cache/srgan_jax), loaded, and registered as custom-call targets for the CPU. Where anything
is missing (not Linux x86-64, the packages, a compiler, a working CPU engine) the candidate is
simply absent; `status()` says why, and one log line says it once.

Why opt-in: each of its convs, timed alone as conv tuning times them (pmapped over one XLA
device per core), beat every other candidate on the Intel Xeon by 1.2-3x, yet the seed CNN's
train step with them ran at 165 instead of 133 ms, with 1.65 instead of 1.9 cores busy: oneDNN
runs each call on two threads (its SYCL runtime's, on TBB), which then compete with the other
device's XLA thread (benchmarks/README.md, "oneDNN through XLA's FFI"). Held to one thread a
call (OpenMP oneDNN 3.2, measured there), it won each phase alone and the step still ran no
faster: timed alone, it would be chosen for the wrong reason.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Optional

from absl import logging
import jax
import jaxlib
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
CACHE_ENV = 'SRGAN_JAX_CACHE_DIR'  # conv_tuning's cache directory, shared.
OPT_IN_ENV = 'SRGAN_JAX_ONEDNN'  # '1': offer the candidate.
# The SYCL build's runtime, loaded (process-wide) before oneDNN so that each finds the others
# by name: they sit in one lib directory, which is on no search path.
RUNTIME_LIBRARIES = ('libtbb.so.12', 'libimf.so', 'libsvml.so', 'libirng.so', 'libintlc.so.5',
                     'libur_loader.so.0', 'libOpenCL.so.1', 'libsycl.so.9', 'libdnnl.so.3')
# The OpenCL CPU runtime oneDNN's CPU engine runs on (the ICD file the package installs points
# at its build machine's path, so the loader is told where it is).
OPENCL_CPU = 'libintelocl.so'
TARGETS = {'forward': 'SrganOnednnConvForward', 'input_grad': 'SrganOnednnConvInputGrad',
           'kernel_grad': 'SrganOnednnConvKernelGrad'}


def _target(phase: str) -> str:
  return f'srgan_onednn_conv_{phase}'


def _package_file(package: str, suffix: str) -> Optional[str]:
  """The installed path of the first file of `package` whose path ends with `suffix`."""
  try:
    files = importlib.metadata.distribution(package).files or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if str(f).replace(os.sep, '/').endswith(suffix):
      return str(f.locate())
  return None


def _library_dir() -> str:
  path = _package_file('onednn', '/libdnnl.so.3')
  if path is None:
    raise RuntimeError('the oneDNN package is not installed (pip install ".[onednn]")')
  return os.path.dirname(os.path.normpath(path))


def _include_dir() -> str:
  path = _package_file('onednn-devel', 'include/oneapi/dnnl/dnnl.hpp')
  if path is None:
    raise RuntimeError('the oneDNN headers are not installed (pip install ".[onednn]")')
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(path))))


def _build(library_dir: str, include_dir: str) -> str:
  """The compiled FFI module's path, compiling it first if this source, oneDNN and jaxlib have
  not been compiled together before (written to a temporary file, then renamed)."""
  cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not cxx:
    raise RuntimeError('no C++ compiler (g++, or $CXX) to build the oneDNN FFI module')
  with open(SOURCE, 'rb') as f:
    digest = hashlib.sha1(f.read() + repr((version_of('onednn'), jaxlib.version.__version__,
                                           cxx)).encode()).hexdigest()[:12]
  directory = os.path.join(os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'srgan_jax'), 'onednn')
  path = os.path.join(directory, f'srgan_onednn_{digest}.so')
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  logging.info('oneDNN convs: compiling the FFI module once, into %s.', path)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(fd)
  command = [cxx, '-O2', '-std=c++17', '-shared', '-fPIC', SOURCE, '-I', jax.ffi.include_dir(),
             '-I', include_dir, '-L', library_dir, f'-Wl,-rpath,{library_dir}',
             f'-Wl,-rpath-link,{library_dir}', '-ldnnl', '-o', tmp]
  run = subprocess.run(command, capture_output=True, text=True)
  if run.returncode != 0:
    os.remove(tmp)
    raise RuntimeError(f'compiling {SOURCE} failed: {run.stderr.strip()[-2000:]}')
  os.replace(tmp, path)
  return path


def version_of(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return ''


@functools.lru_cache(maxsize=None)
def status() -> str:
  """'' when the 'onednn' candidate is ready (built, loaded, its CPU engine started, its
  targets registered), else why it is not. Done once per process."""
  if os.environ.get(OPT_IN_ENV) != '1':
    return f'experimental, off unless {OPT_IN_ENV}=1'
  try:
    if platform.system() != 'Linux' or platform.machine() not in ('x86_64', 'AMD64'):
      raise RuntimeError(f'oneDNN\'s FFI module is built for Linux x86-64 only, not '
                         f'{platform.system()} {platform.machine()}')
    library_dir = _library_dir()
    include_dir = _include_dir()
    opencl = os.path.join(library_dir, OPENCL_CPU)
    if os.path.exists(opencl):
      os.environ.setdefault('OCL_ICD_FILENAMES', opencl)
    for name in RUNTIME_LIBRARIES:
      path = os.path.join(library_dir, name)
      if not os.path.exists(path):
        raise RuntimeError(f'{name} is missing from {library_dir} (pip install ".[onednn]")')
      ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    module = ctypes.CDLL(_build(library_dir, include_dir))
    if module.SrganOnednnProbe() != 0:
      raise RuntimeError('oneDNN\'s CPU engine did not start (its SYCL build needs the OpenCL '
                         'CPU runtime, intel-opencl-rt)')
    for phase, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(_target(phase), jax.ffi.pycapsule(getattr(module, symbol)),
                                  platform='cpu')
  except (RuntimeError, OSError) as e:
    logging.warning('oneDNN convs (%s=1) unavailable: %s', OPT_IN_ENV, e)
    return str(e)
  logging.info('oneDNN convs: oneDNN %s ready as a conv tuning candidate.', version_of('onednn'))
  return ''


def available() -> bool:
  return not status()


def version() -> str:
  """oneDNN's package version where the candidate is ready, else 'none' (conv tuning keys its
  decisions by it: they were made with or without this candidate)."""
  return version_of('onednn') if available() else 'none'


def _call(phase: str, out_shape, dtype, a, b, kernel_size: int, s: int, padding):
  if status():
    raise RuntimeError(f"The conv implementation 'onednn' is unavailable here: {status()}.")
  (top, bottom), (left, right) = padding
  i64 = np.int64
  return jax.ffi.ffi_call(_target(phase), jax.ShapeDtypeStruct(tuple(out_shape), dtype))(
      a, b, kernel_size=i64(kernel_size), stride=i64(s), pad_top=i64(top),
      pad_bottom=i64(bottom), pad_left=i64(left), pad_right=i64(right))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_forward(x, kernel, s: int, padding, output_size):
  """The conv of NHWC x with the HWIO kernel at stride s, x padded by ((top, bottom), (left,
  right)), to output_size (oh, ow); differentiable, by oneDNN's two backward convs."""
  return _call('forward', (x.shape[0],) + tuple(output_size) + (kernel.shape[-1],), x.dtype,
               x, kernel, kernel.shape[0], s, padding)


def _conv_forward_fwd(x, kernel, s, padding, output_size):
  return conv_forward(x, kernel, s, padding, output_size), (x, kernel)


def _conv_forward_bwd(s, padding, output_size, residuals, dy):
  x, kernel = residuals
  return (conv_input_grad(x.shape, kernel, s, padding, dy),
          conv_kernel_grad(x, kernel.shape, s, padding, dy))


conv_forward.defvjp(_conv_forward_fwd, _conv_forward_bwd)


def conv_input_grad(x_shape, kernel, s: int, padding, dy):
  """d(sum(dy * conv_forward(x, kernel))) / dx."""
  return _call('input_grad', x_shape, dy.dtype, dy, kernel, kernel.shape[0], s, padding)


def conv_kernel_grad(x, kernel_shape, s: int, padding, dy):
  """d(sum(dy * conv_forward(x, kernel))) / dkernel (HWIO)."""
  return _call('kernel_grad', kernel_shape, x.dtype, x, dy, kernel_shape[0], s, padding)
