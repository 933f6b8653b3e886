"""oneDNN's convolutions as a conv-tuning candidate ('onednn'): experimental, opt-in
(SRGAN_JAX_ONEDNN=1, with the optional extra installed: `pip install ".[onednn]"`).

Why: on an AVX-512 Intel Xeon, XLA:CPU's convolutions and their gradients run at 65-185
GFLOP/s a core and no formulation of them in XLA (im2col, kn2row, Winograd) closes the gap to
oneDNN, PyTorch's CPU convolution library, at 200-235 (benchmarks/README.md, "The Intel Xeon
again" and "oneDNN through XLA's FFI"). jaxlib has no oneDNN convolution of its own.

Which oneDNN: PyPI's OpenMP build, `onednn-cpu-gomp` 2023.2 (oneDNN 3.2, 39 MB, the system's
libgomp), each call held to its caller's thread (one XLA device a core). PyPI's newer `onednn`
(3.13) is the SYCL build: its calls run two threads that fight the other device's, and the
steps got slower with it (the seed CNN's 133 -> 165 ms a step).

How: onednn_conv.cc, XLA FFI handlers for the three phases of a conv, is compiled by
native.build against the installed oneDNN (once per source, oneDNN and jaxlib version), loaded,
and registered as custom-call targets for the CPU. Where anything is missing (not Linux
x86-64, the packages, a compiler) the candidate is absent; `status()` says why, and one log
line says it once.

Why opt-in: measured on the Intel Xeon only, each step timed in turns with and without it
(2026-12-04): the SRResNet step 134-136 against 144-152 ms, the seed GAN iteration 1.64-1.70
against 1.73-1.78 s, the seed CNN step level (135-140 against 134-139 ms) although its convs won
1.2-1.5x timed alone: a phase timed alone is not what it costs in the step, so tuning can
choose it where it does not pay. Not measured on the AMD classes.
"""

import ctypes
import functools
import importlib.metadata
import os
from typing import Optional

from absl import logging
import jax
import numpy as np

from srgan_jax import native

SOURCE = 'onednn_conv.cc'
OPT_IN_ENV = 'SRGAN_JAX_ONEDNN'  # '1': offer the candidate.
LIBRARY_PACKAGE, HEADERS_PACKAGE = 'onednn-cpu-gomp', 'onednn-devel-cpu-gomp'
# oneDNN, loaded (process-wide) before the FFI module: its lib directory is on no search path.
RUNTIME_LIBRARIES = ('libdnnl.so.3',)
SYMBOLS = {'forward': 'SrganOnednnConvForward', 'input_grad': 'SrganOnednnConvInputGrad',
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
  path = _package_file(LIBRARY_PACKAGE, '/libdnnl.so.3')
  if path is None:
    raise RuntimeError(f'{LIBRARY_PACKAGE} is not installed (pip install ".[onednn]")')
  return os.path.dirname(os.path.normpath(path))


def _include_dir() -> str:
  path = _package_file(HEADERS_PACKAGE, 'include/oneapi/dnnl/dnnl.hpp')
  if path is None:
    raise RuntimeError(f'{HEADERS_PACKAGE} is not installed (pip install ".[onednn]")')
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(path))))


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
    library_dir = _library_dir()
    include_dir = _include_dir()
    for name in RUNTIME_LIBRARIES:
      path = os.path.join(library_dir, name)
      if not os.path.exists(path):
        raise RuntimeError(f'{name} is missing from {library_dir} (pip install ".[onednn]")')
      ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    # Built once per source, oneDNN and jaxlib version (native.build).
    module = native.load(SOURCE, 'onednn', {_target(p): s for p, s in SYMBOLS.items()}, (
        '-O2', '-fopenmp', '-I', include_dir, '-L', library_dir, f'-Wl,-rpath,{library_dir}',
        f'-Wl,-rpath-link,{library_dir}', '-ldnnl'), key=version_of(LIBRARY_PACKAGE))
    if module.SrganOnednnProbe() != 0:
      raise RuntimeError('oneDNN\'s CPU engine did not start')
  except (RuntimeError, OSError) as e:
    logging.warning('oneDNN convs (%s=1) unavailable: %s', OPT_IN_ENV, e)
    return str(e)
  logging.info('oneDNN convs: %s %s ready as a conv tuning candidate.', LIBRARY_PACKAGE,
               version_of(LIBRARY_PACKAGE))
  return ''


def available() -> bool:
  return not status()


def version() -> str:
  """oneDNN's package version where the candidate is ready, else 'none' (conv tuning keys its
  decisions by it: they were made with or without this candidate)."""
  return version_of(LIBRARY_PACKAGE) if available() else 'none'


def _call(phase: str, out_shape, dtype, a, b, kernel_size: int, s: int, padding):
  if status():
    raise RuntimeError(f"The conv implementation 'onednn' is unavailable here: {status()}.")
  (top, bottom), (left, right) = padding
  i64 = np.int64
  return jax.ffi.ffi_call(_target(phase), jax.ShapeDtypeStruct(tuple(out_shape), dtype),
                          vmap_method=native.VMAP_METHOD)(
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
