"""Losses against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import losses

REAL = jnp.array([[2.0], [0.0]])
FAKE = jnp.array([[-1.0], [1.0]])


def _softplus(x):
  return math.log1p(math.exp(x))


def test_pixel_content_losses():
  a = jnp.array([[0.0, 1.0], [2.0, -1.0]])
  b = jnp.array([[1.0, 1.0], [0.0, 0.0]])
  assert float(losses.content_loss('mse', a, b)) == pytest.approx((1 + 0 + 4 + 1) / 4)
  assert float(losses.content_loss('l1', a, b)) == pytest.approx((1 + 0 + 2 + 1) / 4)
  with pytest.raises(ValueError, match='content loss'):
    losses.content_loss('ssim', a, b)


def test_feature_content_loss_weights_layers_and_stops_hr_gradient():
  feature_fn = lambda x: {'a': x, 'b': 2 * x}
  sr, hr = jnp.ones((2, 2)), jnp.zeros((2, 2))
  value = losses.content_loss('classifier', sr, hr, feature_fn, {'a': 1.0, 'b': 0.5}, 'mse')
  assert float(value) == pytest.approx(1.0 + 0.5 * 4.0)
  grad_hr = jax.grad(lambda h: losses.content_loss('vgg', sr, h, feature_fn, {'a': 1.0}))(hr)
  assert float(jnp.abs(grad_hr).sum()) == 0.0


def test_vanilla_adversarial():
  # D: -log s(2) - log(1 - s(-1)) - ... averaged over the batch.
  d = (_softplus(-2.0) + _softplus(0.0)) / 2 + (_softplus(-1.0) + _softplus(1.0)) / 2
  assert float(losses.discriminator_loss('vanilla', REAL, FAKE)) == pytest.approx(d, rel=1e-6)
  g = (_softplus(1.0) + _softplus(-1.0)) / 2  # Non-saturating -log D(G(z)).
  assert float(losses.generator_adversarial_loss('vanilla', REAL, FAKE)) == pytest.approx(g, 1e-6)


def test_lsgan_adversarial():
  d = ((2 - 1) ** 2 + (0 - 1) ** 2) / 2 + ((-1) ** 2 + 1 ** 2) / 2
  assert float(losses.discriminator_loss('lsgan', REAL, FAKE)) == pytest.approx(d)
  g = ((-1 - 1) ** 2 + (1 - 1) ** 2) / 2
  assert float(losses.generator_adversarial_loss('lsgan', REAL, FAKE)) == pytest.approx(g)


def test_hinge_adversarial():
  d = (max(0, 1 - 2) + max(0, 1 - 0)) / 2 + (max(0, 1 - 1) + max(0, 1 + 1)) / 2
  assert float(losses.discriminator_loss('hinge', REAL, FAKE)) == pytest.approx(d)
  assert float(losses.generator_adversarial_loss('hinge', REAL, FAKE)) == pytest.approx(0.0)


def test_relativistic_adversarial():
  mean_real, mean_fake = 1.0, 0.0
  real_rel = [2.0 - mean_fake, 0.0 - mean_fake]
  fake_rel = [-1.0 - mean_real, 1.0 - mean_real]
  d = (np.mean([_softplus(-r) for r in real_rel]) + np.mean([_softplus(f) for f in fake_rel])) / 2
  g = (np.mean([_softplus(r) for r in real_rel]) + np.mean([_softplus(-f) for f in fake_rel])) / 2
  assert float(losses.discriminator_loss('relativistic', REAL, FAKE)) == pytest.approx(d, 1e-6)
  assert float(losses.generator_adversarial_loss('relativistic', REAL, FAKE)) == pytest.approx(
      g, 1e-6)


def test_unknown_adversarial_raises():
  with pytest.raises(ValueError, match='adversarial'):
    losses.discriminator_loss('wgan', REAL, FAKE)
  with pytest.raises(ValueError, match='adversarial'):
    losses.generator_adversarial_loss('wgan', REAL, FAKE)


def test_auxiliary_classifier_loss_and_pseudo_labels():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
  labels = jnp.array([0, 1])
  expected = np.mean([-math.log(math.exp(2) / (math.exp(2) + 2)),
                      -math.log(1 / (2 + math.exp(5)))])
  assert float(losses.auxiliary_classifier_loss(logits, labels)) == pytest.approx(expected, 1e-6)
  np.testing.assert_array_equal(np.asarray(losses.pseudo_labels(logits)), [0, 2])
