"""BatchNorm with its sums in C++ (srgan_jax/batch_norm.py): flax's values, batch statistics
and gradients under pmap, with the C++ sums and with XLA's; the same variables, so checkpoints
move between the two; what models.py builds on CPU, and the opt-out."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from srgan_jax import batch_norm
from srgan_jax import models
from srgan_jax import native

from tests import conftest

needs_native = pytest.mark.skipif(not batch_norm.native_backend(),
                                  reason=f'C++ sums unavailable: {batch_norm.status()}')


_close = functools.partial(conftest.assert_close, atol=2e-5)


def _train_step_outputs(module, variables, x, target):
  """Per device: y, the updated batch statistics, and the gradients of a loss of y with
  respect to the parameters and x, as a pmapped train step sees them."""

  def loss(params, x):
    y, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              mutable=['batch_stats'])
    weights = jnp.linspace(0.5, 2.0, y.shape[-1])
    return jnp.sum((y - target) ** 2 * weights) + jnp.mean(jnp.sin(y)), (y, updates)

  (_, (y, updates)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      variables['params'], x)
  return y, updates['batch_stats'], grads


@pytest.mark.parametrize('sums', ['c++', 'xla'])
@pytest.mark.parametrize('shape', [(6, 5, 3, 70), (4, 600), (3, 2, 2, 1)])
def test_equals_flax_batch_norm_under_pmap(sums, shape, monkeypatch):
  """Each device's images differ, so the statistics are right only if they cover all devices;
  600 features span two of the C++ pass's feature blocks."""
  if sums == 'c++' and not batch_norm.native_backend():
    pytest.skip(f'C++ sums unavailable: {batch_norm.status()}')
  if sums == 'xla':
    monkeypatch.setattr(batch_norm, '_native', lambda x: False)
  devices = jax.local_devices()[:2]
  x = conftest.gaussian(0, (len(devices),) + shape) * 2.0 + 3.0
  x = x * jnp.arange(1, len(devices) + 1).reshape((-1,) + (1,) * len(shape))
  target = conftest.gaussian(1, x.shape)
  kwargs = dict(use_running_average=False, momentum=0.9, epsilon=1e-5, axis_name='batch')
  ours, flax_bn = batch_norm.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
  variables = flax_bn.init(jax.random.PRNGKey(1), x[0])
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(1), x[0])) == jax.tree.structure(
      variables)
  variables = jax.tree.map(lambda v: v + 0.3 * conftest.gaussian(2, v.shape), variables)
  replicated = jax.tree.map(lambda v: jnp.stack([v] * len(devices)), variables)
  run = lambda m: jax.pmap(lambda v, x, t: _train_step_outputs(m, v, x, t), axis_name='batch',
                           devices=devices)(replicated, x, target)
  got, want = run(ours), run(flax_bn)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    _close(g, w)
  program = str(jax.make_jaxpr(lambda v, x, t: _train_step_outputs(ours, v, x, t),
                               axis_env=[('batch', len(devices))])(variables, x[0], target[0]))
  # The statistics' sums, the gradient's sums, the input gradient.
  assert program.count('ffi_call') == (3 if sums == 'c++' else 0)
  # Evaluation: the running statistics, as flax.
  eval_kwargs = dict(kwargs, use_running_average=True, axis_name=None)
  _close(batch_norm.BatchNorm(**eval_kwargs).apply(variables, x[0]),
         nn.BatchNorm(**eval_kwargs).apply(variables, x[0]))


@needs_native
def test_gradient_through_the_statistics():
  """normalize returns the batch mean and variance; their cotangents reach x as the
  statistics' own gradients (e.g. for a loss on them)."""
  x = conftest.gaussian(0, (5, 4, 3, 6)) * 1.5 + 2.0
  scale, bias = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-1.0, 1.0, 6)

  def ours(x, scale, bias):
    y, mean, var = batch_norm.normalize(x, scale, bias, None, 1e-5)
    return jnp.sum(jnp.sin(y)) + jnp.sum(mean * jnp.arange(6)) + jnp.sum(var ** 2)

  def reference(x, scale, bias):
    mean = x.mean((0, 1, 2))
    var = (x * x).mean((0, 1, 2)) - mean * mean
    y = (x - mean) * scale * jax.lax.rsqrt(var + 1e-5) + bias
    return jnp.sum(jnp.sin(y)) + jnp.sum(mean * jnp.arange(6)) + jnp.sum(var ** 2)

  for g, w in zip(jax.grad(ours, (0, 1, 2))(x, scale, bias),
                  jax.grad(reference, (0, 1, 2))(x, scale, bias)):
    _close(g, w, atol=1e-4)


@needs_native
def test_models_use_it_on_cpu_and_flax_batch_norm_when_opted_out(monkeypatch):
  generator = models.Generator(scale=2, num_res_blocks=1, features=8, conv='xla')
  lr = jnp.ones((2, 6, 6, 1))
  variables = generator.init(jax.random.PRNGKey(0), lr)
  apply = lambda: jax.make_jaxpr(lambda v: generator.apply(
      v, lr, train=True, mutable=['batch_stats']))(variables)
  assert 'srgan_batch_norm_moments' in str(apply())
  monkeypatch.setenv(native.OPT_OUT_ENV, '0')
  batch_norm.status.cache_clear()
  try:
    assert not batch_norm.native_backend()
    assert native.OPT_OUT_ENV in batch_norm.status()
    assert 'ffi_call' not in str(apply())
    # flax's BatchNorm builds the same variables: checkpoints move between the two.
    assert jax.tree.structure(generator.init(jax.random.PRNGKey(0), lr)) == jax.tree.structure(
        variables)
  finally:
    batch_norm.status.cache_clear()


def test_other_dtypes_keep_xla_sums():
  x = jnp.ones((4, 3, 3, 5), jnp.bfloat16)
  module = batch_norm.BatchNorm(use_running_average=False)
  variables = module.init(jax.random.PRNGKey(0), x)
  program = str(jax.make_jaxpr(lambda v: module.apply(v, x, mutable=['batch_stats']))(variables))
  assert 'ffi_call' not in program
  y, _ = module.apply(variables, x, mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16 and bool(jnp.all(y == 0))  # Constant x: normalized to 0.


@needs_native
def test_vmapped_batch_norm_equals_each_alone():
  """Each slice of the vmapped axis its own batch: its statistics and gradient alone."""
  xs = conftest.gaussian(4, (2, 6, 5, 3, 70)) * 2.0 + 1.0
  module = batch_norm.BatchNorm(use_running_average=False, momentum=0.9)
  variables = module.init(jax.random.PRNGKey(1), xs[0])

  def loss(x, variables):
    y, updates = module.apply(variables, x, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y)), updates

  conftest.assert_vmap_equals_each_alone(jax.grad(loss, has_aux=True), xs, variables)
