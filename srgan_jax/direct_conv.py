"""Stride-1 convolutions with few features on one side ("thin": a generator's 9x9 convs to and
from 1 or 3 channels, the first conv of a discriminator or classifier) and their kernel
gradient, computed directly by C++ passes called through XLA's FFI (direct_conv.cc), where a
C++ compiler is at hand on a Linux x86-64 CPU: convolution.py's 'direct' conv candidate.

Why: as one matmul such a conv moves k*k copies of its wide side through memory (im2col,
kn2row), and XLA:CPU's own convolution runs it at a fraction of its speed on wide convs.
Measured on a 2-core Intel Xeon (2026-12-04, each phase pmapped over both cores, ms, the best
other candidate / direct): the x4 generator's last conv, 9x9x64->1 at 28x28, b32, forward
6.5-7.6 / 5.1-7.3, input gradient 6.3-6.8 / 5.4-5.6, kernel gradient 8.8-9.6 / 5.0-6.0; the x2
RGB generator's, 9x9x64->3 at b64, forward 56-64 / 20-24 and its first conv's input gradient
26-28 / 5.3-5.9 (benchmarks/README.md). Conv tuning still times it against the others.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from srgan_jax import native

SOURCE = 'direct_conv.cc'
NAME = 'direct_conv'  # Its build's name (native.build).
FLAGS = ('-O3', '-march=native')
SYMBOLS = {'srgan_direct_conv': 'SrganDirectConv',
           'srgan_direct_kernel_grad': 'SrganDirectKernelGrad'}
MAX_THIN_FEATURES = 4  # direct_conv.cc's kMaxThin.
WIDE_MULTIPLE = 16  # The wide side's features: a multiple of this (direct_conv.cc's kV),
MAX_WIDE_FEATURES = 4096  # and at most this many (its kMaxZeros).
MAX_KERNEL_SIZE = 16  # Its kMaxKernel.


@functools.lru_cache(maxsize=None)
def status() -> str:
  """'' when the C++ convs are ready (built, loaded, registered), else why not."""
  return native.status(SOURCE, NAME, SYMBOLS, FLAGS, 'The direct convs',
                       'the other conv candidates')


def available() -> bool:
  return not status()


def thin(in_features: int, features: int) -> bool:
  """Whether direct_conv.cc computes a conv of these features: one side at most
  MAX_THIN_FEATURES, the other a multiple of WIDE_MULTIPLE up to MAX_WIDE_FEATURES."""
  wide = lambda n: n % WIDE_MULTIPLE == 0 and n <= MAX_WIDE_FEATURES
  return ((in_features <= MAX_THIN_FEATURES and wide(features)) or
          (features <= MAX_THIN_FEATURES and wide(in_features)))


def _conv(x, kernel, padding):
  k, _, c, f = kernel.shape
  n, h, w, _ = x.shape
  (top, bottom), (left, right) = padding
  shape = jax.ShapeDtypeStruct((n, h + top + bottom - k + 1, w + left + right - k + 1, f),
                               x.dtype)
  features_inner = c <= MAX_THIN_FEATURES and f % WIDE_MULTIPLE == 0
  if not features_inner:
    kernel = kernel.transpose(0, 1, 3, 2)  # (k, k, f, c): the input features innermost.
  return jax.ffi.ffi_call('srgan_direct_conv', shape, vmap_method=native.VMAP_METHOD)(
      x, kernel, pad_top=np.int64(top), pad_left=np.int64(left),
      features_inner=features_inner)


def conv(x, kernel, padding):
  """The stride-1 conv of NHWC x with HWIO kernel, x padded by ((top, bottom), (left, right))
  (negative: cropped); differentiable (its gradients are direct convs too)."""
  return _differentiable_conv(x, kernel, tuple(tuple(int(p) for p in side) for side in padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _differentiable_conv(x, kernel, padding):
  return _conv(x, kernel, padding)


def _conv_fwd(x, kernel, padding):
  return _conv(x, kernel, padding), (x, kernel)


def _conv_bwd(padding, residuals, dy):
  x, kernel = residuals
  return input_grad(x.shape, kernel, dy, padding), kernel_grad(x, dy, kernel.shape[0], padding)


_differentiable_conv.defvjp(_conv_fwd, _conv_bwd)


def input_grad(x_shape, kernel, dy, padding):
  """d(sum(dy * conv(x, kernel, padding))) / dx: dy convolved with the kernel flipped and its
  features swapped, padded so that the result has x's size."""
  k = kernel.shape[0]
  pads = tuple((k - 1 - lo, size + lo - out)
               for (lo, _), size, out in zip(padding, x_shape[1:3], dy.shape[1:3]))
  return _conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), pads)


def kernel_grad(x, dy, kernel_size: int, padding):
  """d(sum(dy * conv(x, kernel, padding))) / dkernel, (k, k, c, f)."""
  (top, _), (left, _) = padding
  shape = jax.ShapeDtypeStruct((kernel_size, kernel_size, x.shape[-1], dy.shape[-1]), x.dtype)
  return jax.ffi.ffi_call('srgan_direct_kernel_grad', shape,
                          vmap_method=native.VMAP_METHOD)(
      x, dy, pad_top=np.int64(top), pad_left=np.int64(left))
