"""The networks: the SRResNet generator, the SRGAN discriminator and the MNIST classifiers.

All modules are pure Flax linen modules on NHWC images in [-1, 1]. BatchNorm takes an
`axis_name` so that, under `jax.pmap(..., axis_name='batch')`, its statistics are computed over
the global batch rather than per device.
"""

import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from srgan_jax import batch_norm
from srgan_jax import image_ops
from srgan_jax import convolution


DISCRIMINATOR_HEADS = ('dense', 'patch')
# The classifiers (guide and judge) are initialised at their dataset's image size: 28x28 for
# MNIST, whose checkpoints carry no size (the default), 32x32 for cifar10, and so on.
CLASSIFIER_IMAGE_SIZE = 28
CLASSIFIER_FEATURE_LAYERS = ('conv1', 'conv2', 'conv3', 'dense1', 'dense2')


def _conv(net: nn.Module, features: int, kernel_size: int = 3,
          strides: int = 1) -> convolution.Conv:
  """A Conv with the implementation and plan of the network `net` that holds it."""
  return convolution.Conv(features, kernel_size, strides, net.conv, net.conv_plan)


class PReLU(nn.Module):
  """Parametric ReLU with one learnt slope per layer (PyTorch's nn.PReLU() default, 0.25)."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.constant(0.25), ())
    return jnp.where(x >= 0, x, alpha * x)


# Dropout's mask from the fewest random bits that give its keep probability exactly: k bits an
# element when keep_prob * 2**k is a whole number (k <= MAX_MASK_BITS), else a float uniform.
# Threefry's bits cost the seed CNN's step 4.75 ms a device for the 64 x 6272 mask after conv3
# (3% of the step, AVX2 AMD EPYC); at rate 0.5 one bit an element draws 32x fewer.
MAX_MASK_BITS = 8


def mask_bits(keep_prob: float) -> Optional[int]:
  """The bits an element that draw Bernoulli(keep_prob) exactly, or None when no k <=
  MAX_MASK_BITS does."""
  for k in range(1, MAX_MASK_BITS + 1):
    if float(keep_prob * 2 ** k).is_integer():
      return k
  return None


def keep_mask(rng, keep_prob: float, shape):
  """A Bernoulli(keep_prob) mask of `shape`, reproducible from `rng`."""
  k = mask_bits(keep_prob)
  if k is None:
    return jax.random.bernoulli(rng, keep_prob, shape)
  size, per_word = math.prod(shape), 32 // k
  words = jax.random.bits(rng, (-(-size // per_word),), jnp.uint32)
  shifts = jnp.arange(per_word, dtype=jnp.uint32) * k
  values = (words[:, None] >> shifts) & jnp.uint32(2 ** k - 1)
  return (values.reshape(-1)[:size] < round(keep_prob * 2 ** k)).reshape(shape)


class Dropout(nn.Module):
  """Dropout (Srivastava et al. 2014) as nn.Dropout: kept units scaled by 1 / (1 - rate), the
  'dropout' rng; its mask from keep_mask's few bits."""
  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0:
      return x
    if self.rate == 1:  # As nn.Dropout (x / 0 would make the gradient NaN).
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    keep = keep_mask(self.make_rng('dropout'), keep_prob, x.shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


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
  # PyTorch defaults: momentum 0.1 (flax 0.9), eps 1e-5. On CPU, batch_norm.BatchNorm (the same
  # parameters and values, its sums in C++; see batch_norm.py), else flax's.
  module = batch_norm.BatchNorm if batch_norm.native_backend() else nn.BatchNorm
  return module(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                axis_name=axis_name if train else None, name=name)


class ResidualBlock(nn.Module):
  """conv3x3-BN-PReLU-conv3x3-BN plus identity skip (SRGAN paper Fig. 4)."""
  features: int
  axis_name: Optional[str] = None
  conv: str = 'auto'
  conv_plan: Optional[convolution.ConvPlan] = None

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self, self.features, 3)(x)
    y = _batch_norm(train, self.axis_name)(y)
    y = PReLU()(y)
    y = _conv(self, self.features, 3)(y)
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
  conv: str = 'auto'  # Conv implementation: one of convolution.CONV_IMPLEMENTATIONS.
  conv_plan: Optional[convolution.ConvPlan] = None  # What 'tuned' convs use (conv_tuning.tune).

  @nn.compact
  def __call__(self, lr, train: bool = False):
    x = _conv(self, self.features, 9)(lr)
    x = skip = PReLU()(x)
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(self.features, self.axis_name, self.conv, self.conv_plan)(x, train)
    x = _conv(self, self.features, 3)(x)
    x = _batch_norm(train, self.axis_name)(x)
    x = x + skip
    for _ in range(int(math.log2(self.scale))):
      x = _conv(self, 4 * self.features, 3)(x)
      if self.upsample_batch_norm:
        x = _batch_norm(train, self.axis_name)(x)
      x = pixel_shuffle(x, 2)
      x = PReLU()(x)
    x = _conv(self, self.channels, 9)(x)
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
  conv_plan: Optional[convolution.ConvPlan] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, width in enumerate(self.features):
      x = _conv(self, width, 3)(x)
      if i > 0:
        x = _batch_norm(train, self.axis_name)(x)
      x = nn.leaky_relu(x, 0.2)
      x = _conv(self, width, 3, 2)(x)
      x = _batch_norm(train, self.axis_name)(x)
      x = nn.leaky_relu(x, 0.2)
    n = x.shape[0]
    if self.head == 'dense':
      h = nn.Dense(self.dense_features)(x.reshape(n, -1))
      h = nn.leaky_relu(h, 0.2)
      logits = nn.Dense(1)(h)
    elif self.head == 'patch':
      logits = _conv(self, 1, 3)(x).reshape(n, -1)
    else:
      raise ValueError(f'Unknown discriminator head {self.head!r}: use one of '
                       f'{DISCRIMINATOR_HEADS}.')
    class_logits = None
    if self.num_classes:
      class_logits = nn.Dense(self.num_classes, name='class_head')(x.reshape(n, -1))
    return logits, class_logits


class Classifier(nn.Module):
  """The seed's MNIST CNN, which guides the generator through the auxiliary loss.

  Its convs and pools fit any image size and channel count and its first dense layer is sized
  at initialisation (28x28 digits: 7x7x128; cifar10's 32x32: 8x8x128), so it also guides on a
  labelled dataset of photographs.

  conv3x3 32-BN-ReLU, conv3x3 64-BN-ReLU, maxpool, conv3x3 128-BN-ReLU, maxpool, dropout,
  dense 128-BN-ReLU, dropout, dense 64-BN-ReLU, dropout, dense 10.
  Returns (logits, features) where features maps 'conv1'..'conv3', 'dense1', 'dense2' to the
  activations, for the classifier-feature content loss and for digit-FID.
  """
  num_classes: int = 10
  dropout_rate: float = 0.5
  axis_name: Optional[str] = None
  conv: str = 'auto'
  conv_plan: Optional[convolution.ConvPlan] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = {}
    bn = lambda: _batch_norm(train, self.axis_name)
    drop = lambda y: Dropout(self.dropout_rate, deterministic=not train)(y)
    x = features['conv1'] = nn.relu(bn()(_conv(self, 32, 3)(x)))
    x = features['conv2'] = nn.relu(bn()(_conv(self, 64, 3)(x)))
    x = image_ops.max_pool_2x2(x)
    x = features['conv3'] = nn.relu(bn()(_conv(self, 128, 3)(x)))
    x = image_ops.max_pool_2x2(x)
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
  Returns (logits, features) with 'penultimate' (dense 256) used for digit-FID (the judge's
  feature FID). Like Classifier, it fits any image size and channel count.
  """
  num_classes: int = 10
  dropout_rate: float = 0.5
  axis_name: Optional[str] = None  # unused; the same interface as Classifier.
  conv: str = 'auto'
  conv_plan: Optional[convolution.ConvPlan] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(_conv(self, 32, 5)(x))
    x = image_ops.max_pool_2x2(x)
    x = nn.relu(_conv(self, 64, 5)(x))
    x = image_ops.max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(256)(x))
    penultimate = x
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x), {'penultimate': penultimate}


CLASSIFIER_ARCHITECTURES = {'seed_cnn': Classifier, 'lenet': LeNetJudge}


def create_generator(config, axis_name=None, conv: str = 'auto',
                     conv_plan: Optional[convolution.ConvPlan] = None) -> Generator:
  """The generator of `config`; `conv` and `conv_plan` only choose how its convs compute."""
  return Generator(scale=config.data.scale, channels=config.data.channels,
                   num_res_blocks=config.generator.num_res_blocks,
                   features=config.generator.features,
                   upsample_batch_norm=config.generator.upsample_batch_norm,
                   axis_name=axis_name, conv=conv, conv_plan=conv_plan)


def create_discriminator(config, axis_name=None, conv: str = 'auto',
                         conv_plan: Optional[convolution.ConvPlan] = None) -> Discriminator:
  """The discriminator of `config`; `conv` and `conv_plan` as in create_generator."""
  # The AC-GAN head: one logit per class of the dataset (config.data.num_classes; MNIST: 10).
  num_classes = ((config.data.get('num_classes', 0) or 10)
                 if config.loss.auxiliary == 'discriminator_head' else 0)
  return Discriminator(features=tuple(config.discriminator.features),
                       head=config.discriminator.head,
                       dense_features=config.discriminator.dense_features,
                       num_classes=num_classes, axis_name=axis_name, conv=conv,
                       conv_plan=conv_plan)


def create_classifier(architecture: str, dropout_rate: float = 0.5, axis_name=None,
                      conv: str = 'auto', conv_plan: Optional[convolution.ConvPlan] = None,
                      num_classes: int = 10):
  """A classifier of `architecture` with `num_classes` outputs (MNIST, cifar10: 10); `conv`
  and `conv_plan` as in create_generator."""
  if architecture not in CLASSIFIER_ARCHITECTURES:
    raise ValueError(f'Unknown classifier architecture {architecture!r}: use one of '
                     f'{sorted(CLASSIFIER_ARCHITECTURES)}.')
  return CLASSIFIER_ARCHITECTURES[architecture](dropout_rate=dropout_rate, axis_name=axis_name,
                                                conv=conv, conv_plan=conv_plan,
                                                num_classes=int(num_classes))


def classifier_image_shape(image_size=CLASSIFIER_IMAGE_SIZE) -> Tuple[int, int]:
  """(height, width) of a classifier's images from an int (square) or a (height, width)."""
  if isinstance(image_size, (int, np.integer)):
    return int(image_size), int(image_size)
  height, width = image_size
  return int(height), int(width)


# XLA's default LLVM optimisation spends seconds on the unrolled threefry rounds of the
# parameter initialisers: the main job's generator took 13.1 s and discriminator 8.6 s to
# compile their init, the tests' tiny ones 7.6 and 12.8 s (AVX2 AMD EPYC, 2026-12-04). At level
# 0 they compile in 0.9, 1.1, 0.6 and 0.7 s and run in 0.06 and 0.5 s; values may differ from
# the default level's in the last bit. Init runs once; the tests' JAX_DISABLE_MOST_OPTIMIZATIONS
# compiles everything at this level.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def init_variables(module, rng, *inputs, **kwargs):
  """module.init(rng, *inputs, **kwargs), jitted and compiled for a short compile
  (INIT_COMPILER_OPTIONS); traced as it is under a transformation (jax.eval_shape)."""
  init = jax.jit(lambda r: module.init(r, *inputs, **kwargs))
  if isinstance(rng, jax.core.Tracer):
    return init(rng)
  return init.lower(rng).compile(compiler_options=INIT_COMPILER_OPTIONS)(rng)


def init_classifier(module, rng, channels: int, image_size=CLASSIFIER_IMAGE_SIZE):
  """The variables of a classifier module for `channels`-channel images of `image_size` (an
  int or (height, width); 28: MNIST). The dense layers are sized from it: the convs are
  size-agnostic, so one architecture fits any dataset's images."""
  return init_variables(module, rng, _classifier_input(channels, image_size), train=False)


def classifier_template(module, channels: int, image_size=CLASSIFIER_IMAGE_SIZE):
  """The shapes and dtypes of init_classifier's variables, computing nothing."""
  x = _classifier_input(channels, image_size)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, train=False))


def _classifier_input(channels: int, image_size):
  return jnp.zeros((1,) + classifier_image_shape(image_size) + (channels,))


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
