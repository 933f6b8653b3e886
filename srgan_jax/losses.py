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
ADVERSARIAL_LOSSES = ('vanilla', 'lsgan', 'hinge', 'relativistic')
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


def discriminator_loss(name: str, real_logits, fake_logits):
  """The discriminator's adversarial loss for one batch of real and one of fake logits.

  'vanilla': BCE (Goodfellow et al. 2014; SRGAN paper); 'lsgan': least squares with targets 1/0
  (Mao et al. 2017; the seed's nn.MSELoss on D's output); 'hinge': max(0, 1 - D(x)) +
  max(0, 1 + D(G(z))); 'relativistic': relativistic average BCE (ESRGAN, Wang et al. 2018).
  """
  if name == 'vanilla':
    return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)
  if name == 'lsgan':
    return mse(real_logits, 1.0) + mse(fake_logits, 0.0)
  if name == 'hinge':
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  if name == 'relativistic':
    return (_bce(real_logits - jnp.mean(fake_logits), 1.0)
            + _bce(fake_logits - jnp.mean(real_logits), 0.0)) / 2
  raise ValueError(f'Unknown adversarial loss {name!r}: use one of {ADVERSARIAL_LOSSES}.')


def generator_adversarial_loss(name: str, real_logits, fake_logits):
  """The generator's adversarial loss l^SR_Gen: make D call SR real.

  'vanilla' uses the non-saturating -log D(G(z)) of the paper. `real_logits` are only used by
  'relativistic', where the generator also pushes real images to look less real than fakes.
  """
  if name == 'vanilla':
    return _bce(fake_logits, 1.0)
  if name == 'lsgan':
    return mse(fake_logits, 1.0)
  if name == 'hinge':
    return -jnp.mean(fake_logits)
  if name == 'relativistic':
    real_logits = jax.lax.stop_gradient(real_logits)
    return (_bce(real_logits - jnp.mean(fake_logits), 0.0)
            + _bce(fake_logits - jnp.mean(real_logits), 1.0)) / 2
  raise ValueError(f'Unknown adversarial loss {name!r}: use one of {ADVERSARIAL_LOSSES}.')


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
