"""The networks: SRResNet generator, SRGAN discriminator, and the MNIST classifiers.

All modules are pure Flax linen modules on NHWC images in [-1, 1]. BatchNorm takes an
`axis_name` so that, under `jax.pmap(..., axis_name='batch')`, its statistics are computed over
the global batch rather than per device.
"""

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


MAX_MATMUL_PATCH = 3 * 3 * 512
DISCRIMINATOR_HEADS = ('dense', 'patch')
CLASSIFIER_IMAGE_SIZE = 28  # The MNIST classifiers (guide and judge) see 28x28 digits.
CLASSIFIER_FEATURE_LAYERS = ('conv1', 'conv2', 'conv3', 'dense1', 'dense2')


class Conv(nn.Module):
  """A square conv with SAME padding, computed as im2col + one matmul ('matmul') or by XLA's
  convolution ('xla'). Parameters are those of `nn.Conv` ('kernel' HWIO and 'bias').

  Why: XLA:CPU computes convolution gradients on slow paths (measured on 2 cores: the paper
  discriminator's fwd+bwd at batch 64 took 2.1 s with XLA convs, 0.8 s as matmuls; the input
  gradient of a stride-2 conv on 4x4 maps alone took 1.5 s). As matmuls, both the forward and
  the backward pass of a conv are plain GEMMs, which XLA:CPU runs near the machine's peak.
  'auto' picks 'matmul' on CPU for strided convs whose patch has at most MAX_MATMUL_PATCH
  values (memory: the patches are that many times the input), where XLA:CPU is slowest, and
  XLA's convolution otherwise (stride-1 convs measured about even; cuDNN on GPU).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  implementation: str = 'auto'

  def _use_matmul(self, in_features: int) -> bool:
    if self.implementation == 'auto':
      patch = self.kernel_size * self.kernel_size * in_features
      return (self.strides > 1 and patch <= MAX_MATMUL_PATCH
              and jax.default_backend() == 'cpu')
    if self.implementation not in ('matmul', 'xla'):
      raise ValueError(f"Unknown conv implementation {self.implementation!r}: use 'auto', "
                       f"'matmul' or 'xla'.")
    return self.implementation == 'matmul'

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel_size, self.strides
    n, h, w, c = x.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    padding = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    if not self._use_matmul(c):
      y = jax.lax.conv_general_dilated(x, kernel, (s, s), padding,
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      return y + bias
    x = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
    patches = jnp.concatenate(
        [x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]
         for i in range(k) for j in range(k)], axis=-1)
    y = patches.reshape(-1, k * k * c) @ kernel.reshape(k * k * c, self.features)
    return y.reshape(n, oh, ow, self.features) + bias


class PReLU(nn.Module):
  """Parametric ReLU with one learnt slope per layer (PyTorch's nn.PReLU() default, 0.25)."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.constant(0.25), ())
    return jnp.where(x >= 0, x, alpha * x)


def pixel_shuffle(x, factor: int):
  """Sub-pixel convolution rearrangement (Shi et al. 2016): (H, W, C*r*r) -> (H*r, W*r, C).

  Channel order matches torch.nn.PixelShuffle: channel c*r*r + i*r + j goes to offset (i, j).
  """
  n, h, w, c = x.shape
  out_c = c // (factor * factor)
  x = x.reshape(n, h, w, out_c, factor, factor)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(n, h * factor, w * factor, out_c)


def _batch_norm(train: bool, axis_name: Optional[str], name: Optional[str] = None):
  # PyTorch defaults: momentum 0.1 (flax 0.9), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name if train else None, name=name)


class ResidualBlock(nn.Module):
  """conv3x3-BN-PReLU-conv3x3-BN plus identity skip (SRGAN paper Fig. 4)."""
  features: int
  axis_name: Optional[str] = None
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    y = Conv(self.features, 3, implementation=self.conv)(x)
    y = _batch_norm(train, self.axis_name)(y)
    y = PReLU()(y)
    y = Conv(self.features, 3, implementation=self.conv)(y)
    y = _batch_norm(train, self.axis_name)(y)
    return x + y


class Generator(nn.Module):
  """SRResNet (Ledig et al. 2017, Fig. 4): the SRGAN generator.

  9x9 conv + PReLU; `num_res_blocks` residual blocks; conv3x3-BN and a long skip; log2(scale)
  stages of conv3x3 to 4x features + pixel shuffle x2 + PReLU; 9x9 conv to the output
  channels; tanh, so SR images live in [-1, 1] like the HR targets.
  """
  scale: int = 4
  channels: int = 1
  num_res_blocks: int = 16
  features: int = 64
  upsample_batch_norm: bool = False
  axis_name: Optional[str] = None
  conv: str = 'auto'  # Conv implementation: 'auto' | 'matmul' | 'xla'.

  @nn.compact
  def __call__(self, lr, train: bool = False):
    x = Conv(self.features, 9, implementation=self.conv)(lr)
    x = skip = PReLU()(x)
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(self.features, self.axis_name, self.conv)(x, train)
    x = Conv(self.features, 3, implementation=self.conv)(x)
    x = _batch_norm(train, self.axis_name)(x)
    x = x + skip
    for _ in range(int(math.log2(self.scale))):
      x = Conv(4 * self.features, 3, implementation=self.conv)(x)
      if self.upsample_batch_norm:
        x = _batch_norm(train, self.axis_name)(x)
      x = pixel_shuffle(x, 2)
      x = PReLU()(x)
    x = Conv(self.channels, 9, implementation=self.conv)(x)
    return jnp.tanh(x)


class Discriminator(nn.Module):
  """SRGAN discriminator (Ledig et al. 2017, Fig. 4).

  conv3x3 blocks at each width in `features`, once at stride 1 and once at stride 2, with
  BatchNorm (except on the very first conv) and LeakyReLU(0.2). Heads:
  - 'dense' (paper): dense 1024 -> LeakyReLU -> dense 1; one logit per image.
  - 'patch' (the seed's notebook): conv3x3 to 1 channel; one logit per patch.
  With `num_classes > 0` a second, AC-GAN head (Odena et al. 2017) returns one logit per class.
  Returns (logits, class_logits or None); logits have shape (N, P) with P patches (1 for dense).
  """
  features: Sequence[int] = (64, 128, 256, 512)
  head: str = 'dense'
  dense_features: int = 1024
  num_classes: int = 0
  axis_name: Optional[str] = None
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, width in enumerate(self.features):
      x = Conv(width, 3, implementation=self.conv)(x)
      if i > 0:
        x = _batch_norm(train, self.axis_name)(x)
      x = nn.leaky_relu(x, 0.2)
      x = Conv(width, 3, strides=2, implementation=self.conv)(x)
      x = _batch_norm(train, self.axis_name)(x)
      x = nn.leaky_relu(x, 0.2)
    n = x.shape[0]
    if self.head == 'dense':
      h = nn.Dense(self.dense_features)(x.reshape(n, -1))
      h = nn.leaky_relu(h, 0.2)
      logits = nn.Dense(1)(h)
    elif self.head == 'patch':
      logits = Conv(1, 3, implementation=self.conv)(x).reshape(n, -1)
    else:
      raise ValueError(f'Unknown discriminator head {self.head!r}: use one of '
                       f'{DISCRIMINATOR_HEADS}.')
    class_logits = None
    if self.num_classes:
      class_logits = nn.Dense(self.num_classes, name='class_head')(x.reshape(n, -1))
    return logits, class_logits


class Classifier(nn.Module):
  """The seed's MNIST CNN, which guides the generator through the auxiliary loss.

  conv3x3 32-BN-ReLU, conv3x3 64-BN-ReLU, maxpool, conv3x3 128-BN-ReLU, maxpool, dropout,
  dense 128-BN-ReLU, dropout, dense 64-BN-ReLU, dropout, dense 10.
  Returns (logits, features) where features maps 'conv1'..'conv3', 'dense1', 'dense2' to the
  activations, for the classifier-feature content loss and for digit-FID.
  """
  num_classes: int = 10
  dropout_rate: float = 0.5
  axis_name: Optional[str] = None
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = {}
    bn = lambda: _batch_norm(train, self.axis_name)
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    x = features['conv1'] = nn.relu(bn()(Conv(32, 3, implementation=self.conv)(x)))
    x = features['conv2'] = nn.relu(bn()(Conv(64, 3, implementation=self.conv)(x)))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = features['conv3'] = nn.relu(bn()(Conv(128, 3, implementation=self.conv)(x)))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = drop(x.reshape(x.shape[0], -1))
    x = features['dense1'] = nn.relu(bn()(nn.Dense(128)(x)))
    x = drop(x)
    x = features['dense2'] = nn.relu(bn()(nn.Dense(64)(x)))
    x = drop(x)
    return nn.Dense(self.num_classes)(x), features


class LeNetJudge(nn.Module):
  """A LeNet-style MNIST classifier: the evaluation judge, never used in any loss.

  A different architecture from `Classifier` (5x5 convs, no BatchNorm), so that a generator
  cannot score well by exploiting the particular classifier that guided it.
  Returns (logits, features) with 'penultimate' (dense 256) used for digit-FID.
  """
  num_classes: int = 10
  dropout_rate: float = 0.5
  axis_name: Optional[str] = None  # unused; the same interface as Classifier.
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(Conv(32, 5, implementation=self.conv)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(Conv(64, 5, implementation=self.conv)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(256)(x))
    penultimate = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x), {'penultimate': penultimate}


CLASSIFIER_ARCHITECTURES = {'seed_cnn': Classifier, 'lenet': LeNetJudge}


def create_generator(config, axis_name=None) -> Generator:
  return Generator(scale=config.data.scale, channels=config.data.channels,
                   num_res_blocks=config.generator.num_res_blocks,
                   features=config.generator.features,
                   upsample_batch_norm=config.generator.upsample_batch_norm,
                   axis_name=axis_name)


def create_discriminator(config, axis_name=None) -> Discriminator:
  num_classes = 10 if config.loss.auxiliary == 'discriminator_head' else 0
  return Discriminator(features=tuple(config.discriminator.features),
                       head=config.discriminator.head,
                       dense_features=config.discriminator.dense_features,
                       num_classes=num_classes, axis_name=axis_name)


def create_classifier(architecture: str, dropout_rate: float = 0.5, axis_name=None):
  if architecture not in CLASSIFIER_ARCHITECTURES:
    raise ValueError(f'Unknown classifier architecture {architecture!r}: use one of '
                     f'{sorted(CLASSIFIER_ARCHITECTURES)}.')
  return CLASSIFIER_ARCHITECTURES[architecture](dropout_rate=dropout_rate, axis_name=axis_name)


def init_classifier(module, rng, channels: int):
  """The variables of a classifier module for `channels`-channel 28x28 images (jitted init)."""
  shape = (1, CLASSIFIER_IMAGE_SIZE, CLASSIFIER_IMAGE_SIZE, channels)
  return jax.jit(lambda r: module.init(r, jnp.zeros(shape), train=False))(rng)


def classifier_template(module, channels: int):
  """The shapes and dtypes of init_classifier's variables, computing nothing."""
  return jax.eval_shape(lambda: init_classifier(module, jax.random.PRNGKey(0), channels))


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
