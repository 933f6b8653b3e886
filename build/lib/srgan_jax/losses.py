"""SRGAN losses (Ledig et al. 2017, Sec. 2.2): content, adversarial and auxiliary classifier.

Pure functions on arrays; they never touch files or optimizers. The perceptual loss
l^SR = content + adversarial_weight * adversarial (+ auxiliary_weight * auxiliary) is put
together in train.py from these pieces.
"""

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

CONTENT_LOSSES = ('mse', 'l1', 'vgg', 'classifier')
AUXILIARY_LOSSES = ('none', 'classifier', 'discriminator_head')
AUXILIARY_LABELS = ('true', 'pseudo')


# ---------------------------------------------------------------------------------------------
# Content losses.


def mse(a, b):
  return jnp.mean(jnp.square(a - b))


def l1(a, b):
  return jnp.mean(jnp.abs(a - b))


PIXEL_CRITERIA = {'mse': mse, 'l1': l1}


def feature_loss(sr_features: Mapping, hr_features: Mapping, layer_weights: Mapping,
                 criterion: str = 'mse'):
  """Perceptual content loss: weighted sum over layers of criterion(phi_l(SR), phi_l(HR)).

  The HR features are targets, so no gradient flows into them.
  """
  fn = PIXEL_CRITERIA[criterion]
  total = 0.0
  for layer, weight in layer_weights.items():
    total = total + weight * fn(sr_features[layer], jax.lax.stop_gradient(hr_features[layer]))
  return total


def content_loss(name: str, sr, hr, feature_fn: Callable = None, layer_weights=None,
                 criterion: str = 'mse'):
  """Content loss selected by name: 'mse' / 'l1' on pixels, or a feature loss for 'vgg' and
  'classifier' computed with `feature_fn(images) -> {layer: feature map}`."""
  if name in PIXEL_CRITERIA:
    return PIXEL_CRITERIA[name](sr, hr)
  if name in ('vgg', 'classifier'):
    return feature_loss(feature_fn(sr), feature_fn(hr), layer_weights, criterion)
  raise ValueError(f'Unknown content loss {name!r}: use one of {CONTENT_LOSSES}.')


# ---------------------------------------------------------------------------------------------
# Adversarial losses. D outputs logits; "real" is HR, "fake" is SR.


def _bce(logits, target: float):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def _relativistic(real_logits, fake_logits, real_target: float):
  """Relativistic average BCE: is real (fake) more real than the average fake (real)?"""
  return (_bce(real_logits - jnp.mean(fake_logits), real_target)
          + _bce(fake_logits - jnp.mean(real_logits), 1.0 - real_target)) / 2


# name -> (the discriminator's loss, the generator's loss), each of (real_logits, fake_logits).
# 'vanilla': BCE (Goodfellow et al. 2014; SRGAN paper), with the non-saturating -log D(G(z))
# for the generator. 'lsgan': least squares with targets 1/0 (Mao et al. 2017; the seed's
# nn.MSELoss on D's output). 'hinge': max(0, 1 - D(x)) + max(0, 1 + D(G(z))), and -D(G(z)).
# 'relativistic': relativistic average BCE (ESRGAN, Wang et al. 2018), where the generator also
# pushes real images to look less real than fakes (real logits are constants for it).
_ADVERSARIAL = {
    'vanilla': (lambda real, fake: _bce(real, 1.0) + _bce(fake, 0.0),
                lambda real, fake: _bce(fake, 1.0)),
    'lsgan': (lambda real, fake: mse(real, 1.0) + mse(fake, 0.0),
              lambda real, fake: mse(fake, 1.0)),
    'hinge': (lambda real, fake: jnp.mean(jax.nn.relu(1.0 - real))
              + jnp.mean(jax.nn.relu(1.0 + fake)),
              lambda real, fake: -jnp.mean(fake)),
    'relativistic': (lambda real, fake: _relativistic(real, fake, 1.0),
                     lambda real, fake: _relativistic(jax.lax.stop_gradient(real), fake, 0.0)),
}
ADVERSARIAL_LOSSES = tuple(_ADVERSARIAL)


def _adversarial(name: str):
  if name not in _ADVERSARIAL:
    raise ValueError(f'Unknown adversarial loss {name!r}: use one of {ADVERSARIAL_LOSSES}.')
  return _ADVERSARIAL[name]


def discriminator_loss(name: str, real_logits, fake_logits):
  """The discriminator's adversarial loss l_D on a batch of real and one of fake logits."""
  return _adversarial(name)[0](real_logits, fake_logits)


def generator_adversarial_loss(name: str, real_logits, fake_logits):
  """The generator's adversarial loss l^SR_Gen: make D call SR real. `real_logits` are read
  by 'relativistic' only (None is fine for the others)."""
  return _adversarial(name)[1](real_logits, fake_logits)


# ---------------------------------------------------------------------------------------------
# Auxiliary classifier loss (the project's twist; AC-GAN, Odena et al. 2017).


def classification_loss(logits, labels):
  """Mean softmax cross-entropy against integer labels."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def pseudo_labels(hr_logits):
  """Labels from the classifier's own prediction on HR, as the seed did: no dataset labels."""
  return jnp.argmax(jax.lax.stop_gradient(hr_logits), axis=-1)


def auxiliary_classifier_loss(sr_logits, labels):
  """Cross-entropy of the frozen, pretrained classifier on SR images.

  The gradient flows through the classifier into the generator; the classifier's parameters are
  passed in as constants and are never updated. The seed also added this term to the
  discriminator's loss: a term that does not depend on D's parameters has zero gradient with
  respect to them, so it changes nothing for D and is not added there.
  """
  return classification_loss(sr_logits, labels)
