"""BatchNorm (Ioffe & Szegedy 2015) whose training-mode statistics and their gradient take
their per-feature sums from a C++ pass (batch_norm_sums.cc) called through XLA's FFI, and whose
input gradient is one C++ pass too (`_grad_input`).

Why: XLA:CPU (jax 0.10) compiles flax's statistics and their gradient into reductions over
all but the feature axis, partly in its own loops (in a `jax.profiler` trace of the SRResNet
pretrain step on a 2-core Intel Xeon, 2026-12-04, one residual block's BatchNorm gradient
reduced 32x7x7x64 floats in 2.4 ms, 20x what a pass over them costs), partly on YNNPACK,
whose tasks share the thread pool with the other host devices' work. The C++ pass reads each
input once, on the calling device's thread. Measured in turns on that machine (paired
medians of benchmarks.compare's JAX steps, this BatchNorm against flax's): the seed CNN step
1.051x, the SRResNet step 1.036x, the seed's GAN iteration 1.041x.

`BatchNorm` is a drop-in for `flax.linen.BatchNorm` as models.py uses it (feature axis last,
`use_fast_variance`): the same parameters ('scale', 'bias'), batch statistics ('mean', 'var'),
momentum and epsilon, the same statistics across `axis_name`, and the same values and
gradients to float rounding, so checkpoints move between the two. Where the C++ pass is not
available (no compiler, not a Linux x86-64 CPU, not float32, a GPU or TPU backend), the sums
are XLA's.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from srgan_jax import native

SOURCE = 'batch_norm_sums.cc'
NAME = 'batch_norm'  # Its build's name (native.build).
FLAGS = ('-O3', '-march=native')
SYMBOLS = {'srgan_batch_norm_moments': 'SrganBatchNormMoments',
           'srgan_batch_norm_grad_moments': 'SrganBatchNormGradMoments',
           'srgan_batch_norm_grad_input': 'SrganBatchNormGradInput'}


@functools.lru_cache(maxsize=None)
def status() -> str:
  """'' when the C++ sums are ready (built, loaded, registered), else why not."""
  return native.status(SOURCE, NAME, SYMBOLS, FLAGS, "BatchNorm's sums",
                       "XLA's reductions")


def native_backend() -> bool:
  """Whether this process's default backend runs the C++ sums: a CPU where they are built."""
  return jax.default_backend() == 'cpu' and not status()


def _native(x) -> bool:
  return x.dtype == jnp.float32 and native_backend()


def _moments(x):
  """(2, c): the sums of x and of x * x over all but x's last axis."""
  if _native(x):
    shape = jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call('srgan_batch_norm_moments', shape,
                            vmap_method=native.VMAP_METHOD)(x)
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  return jnp.stack([x.sum(axes), (x * x).sum(axes)])


def _grad_moments(g, x, mean):
  """(2, c): the sums of g and of g * (x - mean) over all but the last axis."""
  if _native(x):
    shape = jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call('srgan_batch_norm_grad_moments', shape,
                            vmap_method=native.VMAP_METHOD)(g, x, mean)
  axes = tuple(range(x.ndim - 1))
  g = g.astype(jnp.float32)
  return jnp.stack([g.sum(axes), (g * (x.astype(jnp.float32) - mean)).sum(axes)])


def _grad_input(g, x, coefficients):
  """g * a + d_mean + (x - mean) * d_var, coefficients = [a, mean, d_var, d_mean] (4, c): the
  input gradient once the sums are known. XLA:CPU's fusion of it (the per-feature arithmetic
  inside its pass over g and x) took 5 ms a device for the seed CNN's 64x28x28x64 in a profile
  of its step, 3x its ReLU gradient's pass over the same shape. Paired A/B in turns of the C++
  pass against it on a 2-core Intel Xeon (2026-12-05): the seed CNN step 1.018x and 1.025x, the
  SRResNet step 1.023x, the seed GAN iteration 1.005x."""
  if _native(x):
    return jax.ffi.ffi_call('srgan_batch_norm_grad_input', jax.ShapeDtypeStruct(x.shape, x.dtype),
                            vmap_method=native.VMAP_METHOD)(g, x, coefficients)
  a, mean, d_var, d_mean = coefficients
  return g * a + d_mean + (x - mean) * d_var


def _count(x, axis_name):
  n = x.size // x.shape[-1]
  return n * lax.psum(1, axis_name) if axis_name else n


def _statistics(x, axis_name):
  sums = _moments(x)
  if axis_name:
    sums = lax.psum(sums, axis_name)
  mean = sums[0] / _count(x, axis_name)
  var = jnp.maximum(sums[1] / _count(x, axis_name) - mean * mean, 0.0)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x, scale, bias, axis_name: Optional[str], epsilon: float):
  """(y, mean, var): x normalized by its batch statistics over all but the last axis (and
  over `axis_name`'s devices), times scale plus bias; mean and var are the statistics."""
  return _normalize_fwd(x, scale, bias, axis_name, epsilon)[0]


def _normalize_fwd(x, scale, bias, axis_name, epsilon):
  mean, var = _statistics(x, axis_name)
  inv = lax.rsqrt(var + epsilon)
  y = (x - mean) * (scale * inv) + bias
  return (y.astype(x.dtype), mean, var), (x, scale, mean, inv)


def _normalize_bwd(axis_name, epsilon, residuals, cotangents):
  """The gradient of this device's loss: the scale's and bias's from this device's images,
  x's through the statistics from every device's (a psum, as flax's pmean transposes)."""
  del epsilon
  x, scale, mean, inv = residuals
  g, g_mean, g_var = cotangents
  local = _grad_moments(g, x, mean)  # [sum g, sum g (x - mean)] over this device's images.
  d_bias, d_scale = local[0], local[1] * inv
  total = jnp.concatenate([local, g_mean[None], g_var[None]])
  if axis_name:
    total = lax.psum(total, axis_name)
  sum_g, sum_gx, g_mean, g_var = total
  n = _count(x, axis_name)
  a = scale * inv
  d_mean = (g_mean - a * sum_g) / n
  d_var = 2.0 * (g_var - 0.5 * a * inv * inv * sum_gx) / n
  dx = _grad_input(g, x, jnp.stack([a, mean, d_var, d_mean]))
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """flax.linen.BatchNorm over the last axis, its training-mode sums from batch_norm_sums.cc
  (see the module's docstring); same fields, parameters and batch statistics."""
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32),
                            (features,))
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32),
                           (features,))
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    if self.use_running_average:
      y = (x - ra_mean.value) * (scale * lax.rsqrt(ra_var.value + self.epsilon)) + bias
      return y.astype(x.dtype)
    # As flax: no statistics across devices while initializing (outside pmap).
    axis_name = None if self.is_initializing() else self.axis_name
    y, mean, var = normalize(x, scale, bias, axis_name, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
