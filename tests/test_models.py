"""Shapes and parameter counts of the networks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import image_ops
from srgan_jax import models
from tests import conftest


def _conv(cin, cout, k):  # PyTorch nn.Conv2d(cin, cout, k) with bias.
  return cin * cout * k * k + cout


def _bn(c):  # nn.BatchNorm2d: weight + bias (running stats are buffers, not parameters).
  return 2 * c


def seed_generator_params(channels, blocks, upsample_stages, features=64):
  """The seed's PyTorch GeneratorResNet, layer by layer (nn.PReLU(): 1 parameter)."""
  n = _conv(channels, features, 9) + 1
  n += blocks * (2 * (_conv(features, features, 3) + _bn(features)) + 1)
  n += _conv(features, features, 3) + _bn(features)
  n += upsample_stages * (_conv(features, 4 * features, 3) + _bn(4 * features) + 1)
  n += _conv(features, channels, 9)
  return n


def seed_discriminator_params(channels, widths=(64, 128, 256, 512)):
  """The seed's PyTorch Discriminator (patch head: a final conv3x3 to 1 channel)."""
  n, cin = 0, channels
  for i, w in enumerate(widths):
    n += _conv(cin, w, 3) + (0 if i == 0 else _bn(w))
    n += _conv(w, w, 3) + _bn(w)
    cin = w
  return n + _conv(cin, 1, 3)


def _num_batch_norms(variables):
  return len(jax.tree_util.tree_leaves(variables['batch_stats'])) // 2  # mean and var each.


def _init(module, shape):
  return jax.jit(lambda r: module.init(r, jnp.zeros(shape), train=False))(jax.random.PRNGKey(0))


def _shapes(module, shape):
  """The variables' shapes only: counting parameters needs no computation."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


def test_seed_parameter_counts_match_pytorch():
  g = models.Generator(scale=2, channels=3, num_res_blocks=4, upsample_batch_norm=True)
  d = models.Discriminator(head='patch')
  g_vars = _shapes(g, (1, 14, 14, 3))
  d_vars = _shapes(d, (1, 28, 28, 3))
  assert models.count_params(g_vars['params']) == seed_generator_params(3, 4, 1) == 512905
  assert models.count_params(d_vars['params']) == seed_discriminator_params(3)


@pytest.mark.parametrize('scale', [2, 4])
@pytest.mark.parametrize('channels', [1, 3])
def test_generator_output_shape_and_range(scale, channels):
  g = models.Generator(scale=scale, channels=channels, num_res_blocks=1, features=8)
  lr = conftest.gaussian(1, (2, 28 // scale, 28 // scale, channels))
  variables = _init(g, lr.shape)
  sr = g.apply(variables, lr, train=False)
  assert sr.shape == (2, 28, 28, channels)
  # SR lives in [-1, 1] like HR: a final bias of +-8 saturates the tanh near +-1, not at 8.
  last = max((k for k in variables['params'] if k.startswith('Conv_')),
             key=lambda k: int(k.split('_')[1]))
  for bias in (8.0, -8.0):
    params = {**variables['params'], last: {**variables['params'][last],
                                            'bias': jnp.full((channels,), bias)}}
    out = g.apply({**variables, 'params': params}, lr, train=False)
    assert 0.9 < float(jnp.min(jnp.abs(out))) and float(jnp.max(jnp.abs(out))) <= 1.0
    assert float(jnp.sign(out).mean()) == np.sign(bias)
  # Paper generator: no BN after the upsampling convs.
  n_stages = int(np.log2(scale))
  assert _num_batch_norms(variables) == 2 * 1 + 1
  assert models.count_params(variables['params']) == seed_generator_params(
      channels, 1, n_stages, 8) - n_stages * _bn(32)


def test_generator_is_fully_convolutional():
  g = models.Generator(scale=4, channels=1, num_res_blocks=1, features=8)
  variables = _init(g, (1, 7, 7, 1))
  assert g.apply(variables, jnp.zeros((3, 9, 11, 1))).shape == (3, 36, 44, 1)


def test_pixel_shuffle_matches_torch_order():
  # Channel c*r*r + i*r + j goes to spatial offset (i, j) of output channel c.
  x = jnp.arange(8, dtype=jnp.float32).reshape(1, 1, 1, 8)
  y = models.pixel_shuffle(x, 2)
  assert y.shape == (1, 2, 2, 2)
  np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), [[0, 1], [2, 3]])
  np.testing.assert_array_equal(np.asarray(y[0, :, :, 1]), [[4, 5], [6, 7]])


def test_discriminator_heads():
  x = jnp.zeros((3, 28, 28, 1))
  dense = models.Discriminator(features=(8, 16), head='dense', dense_features=32)
  dense_variables = _init(dense, x.shape)
  logits, cls = jax.jit(dense.apply)(dense_variables, x)
  assert logits.shape == (3, 1) and cls is None
  patch = models.Discriminator(features=(8, 16), head='patch', num_classes=10)
  logits, cls = jax.jit(patch.apply)(_init(patch, x.shape), x)
  assert logits.shape == (3, 7 * 7) and cls.shape == (3, 10)
  # The paper's discriminator has no BN on its first conv: 2 * len(features) - 1 BN layers.
  assert _num_batch_norms(dense_variables) == 3


@pytest.mark.parametrize('arch', ['seed_cnn', 'lenet'])
@pytest.mark.parametrize('channels', [1, 3])
def test_classifiers(arch, channels):
  model = models.create_classifier(arch)
  x = jnp.zeros((2, 28, 28, channels))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  logits, features = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, 10)
  key = 'dense2' if arch == 'seed_cnn' else 'penultimate'
  assert features[key].ndim == 2


def test_seed_cnn_parameter_count():
  model = models.Classifier()
  # Shapes only (the initialisers' samplers would compile for each kernel shape).
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))['params']
  n = models.count_params(params)
  expected = (_conv(1, 32, 3) + _bn(32) + _conv(32, 64, 3) + _bn(64) + _conv(64, 128, 3)
              + _bn(128) + (7 * 7 * 128 * 128 + 128) + _bn(128) + (128 * 64 + 64) + _bn(64)
              + (64 * 10 + 10))
  assert n == expected


def test_init_variables_are_module_init():
  """The short-compile init (models.INIT_COMPILER_OPTIONS) gives module.init's variables, to
  the last bit of a float32."""
  model = nn.Sequential([nn.Conv(16, (3, 3)), nn.BatchNorm(use_running_average=True),
                         nn.Dense(8)])  # A network's initialisers (with truncated normals).
  x = jnp.zeros((1, 6, 6, 3))
  rng = jax.random.PRNGKey(7)
  got = models.init_variables(model, rng, x)
  want = model.init(rng, x)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-7, atol=1e-7)
  assert np.asarray(jax.tree_util.tree_leaves(got)[-1]).std() > 0.01  # Random, not zeros.
  shapes = jax.eval_shape(lambda r: models.init_variables(model, r, x), rng)  # Traced too.
  assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == jax.tree_util.tree_map(
      lambda a: a.shape, want)


def test_dropout_masks_draw_few_bits_and_keep_the_probability():
  assert [models.mask_bits(p) for p in (0.5, 0.75, 0.25, 0.9)] == [1, 2, 2, None]
  rng = jax.random.PRNGKey(3)
  for keep_prob in (0.5, 0.75, 0.9):
    mask = np.asarray(models.keep_mask(rng, keep_prob, (7, 3001)))  # Not a whole word's worth.
    assert mask.shape == (7, 3001) and mask.dtype == bool
    assert abs(mask.mean() - keep_prob) < 0.01, (keep_prob, mask.mean())
    flat = mask.reshape(-1)  # Neighbours (often bits of one word) are independent.
    assert abs(np.mean(flat[1:] & flat[:-1]) - keep_prob ** 2) < 0.01, keep_prob
    np.testing.assert_array_equal(mask, models.keep_mask(rng, keep_prob, (7, 3001)))
    assert (mask != np.asarray(models.keep_mask(jax.random.PRNGKey(4), keep_prob,
                                                (7, 3001)))).mean() > 0.1


def test_dropout_scales_the_kept_units_and_is_the_identity_in_evaluation():
  x = jnp.arange(1.0, 4001.0).reshape(4, 1000)
  layer = models.Dropout(0.5, deterministic=False)
  y = np.asarray(layer.apply({}, x, rngs={'dropout': jax.random.PRNGKey(0)}))
  kept = y != 0
  np.testing.assert_allclose(y[kept], 2 * np.asarray(x)[kept])
  assert 0.45 < kept.mean() < 0.55
  assert not (y == np.asarray(
      layer.apply({}, x, rngs={'dropout': jax.random.PRNGKey(1)}))).all()
  np.testing.assert_array_equal(models.Dropout(0.5, deterministic=True).apply({}, x), x)
  everything = models.Dropout(1.0, deterministic=False)
  grad = jax.grad(lambda x: everything.apply(
      {}, x, rngs={'dropout': jax.random.PRNGKey(0)}).sum())(x)
  np.testing.assert_array_equal(grad, np.zeros_like(x))  # Zeros, not NaN.


def test_unknown_names_raise():
  with pytest.raises(ValueError, match='architecture'):
    models.create_classifier('resnet')
  d = models.Discriminator(head='nope')
  with pytest.raises(ValueError, match='head'):
    _init(d, (1, 28, 28, 1))


@pytest.mark.parametrize('shape', [(2, 6, 8, 3), (1, 7, 5, 2)])
def test_max_pool_2x2_equals_flax_values_and_gradients(shape):
  # Few distinct values: windows with tied maxima, whose gradient goes to the first one.
  x = jax.random.randint(jax.random.PRNGKey(0), shape, 0, 3).astype(jnp.float32)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(image_ops.max_pool_2x2(x), flax_pool(x))
  w = conftest.gaussian(1, flax_pool(x).shape)
  grads = [jax.grad(lambda x, f=f: jnp.sum(f(x) * w))(x)
           for f in (image_ops.max_pool_2x2, flax_pool)]
  np.testing.assert_array_equal(*grads)
