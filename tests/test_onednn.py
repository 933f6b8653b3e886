"""The experimental 'onednn' conv candidate (srgan_jax/onednn.py): absent unless opted in and
installed; where it is ready, its three phases equal XLA's and the tuner offers it."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import convolution
from srgan_jax import onednn


@pytest.fixture
def fresh_status():
  onednn.status.cache_clear()
  yield
  onednn.status.cache_clear()


def test_absent_unless_opted_in(monkeypatch, fresh_status):
  monkeypatch.delenv(onednn.OPT_IN_ENV, raising=False)
  assert not onednn.available() and onednn.OPT_IN_ENV in onednn.status()
  assert onednn.version() == 'none'
  sig = convolution.ConvSignature(2, 8, 8, 4, 4, 3, 1, 'float32')
  for phase in convolution.CONV_PHASES:
    assert 'onednn' not in convolution.phase_candidates(sig, phase)
  with pytest.raises(RuntimeError, match='unavailable'):
    convolution.conv_forward('onednn', jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4)), 1)


def test_says_what_is_missing(monkeypatch, fresh_status):
  monkeypatch.setenv(onednn.OPT_IN_ENV, '1')
  monkeypatch.setattr(onednn, '_package_file', lambda package, suffix: None)
  assert 'not installed' in onednn.status() and not onednn.available()


def _ready():
  onednn.status.cache_clear()
  return os.environ.get(onednn.OPT_IN_ENV) == '1' and onednn.available()


@pytest.mark.skipif(not _ready(), reason='oneDNN not installed or not opted in '
                    '(pip install ".[onednn]"; SRGAN_JAX_ONEDNN=1)')
@pytest.mark.parametrize('sig', [(2, 9, 9, 3, 5, 3, 1), (2, 9, 7, 4, 6, 3, 2), (1, 12, 12, 5, 2, 9, 1)])
def test_phases_equal_xla_and_are_offered(sig):
  sig = convolution.ConvSignature(*sig, 'float32')
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((sig.batch, sig.height, sig.width, sig.in_features)),
                  jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((sig.kernel_size, sig.kernel_size, sig.in_features,
                                            sig.features)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((sig.batch,) + sig.output_size + (sig.features,)),
                   jnp.float32)
  for phase in convolution.CONV_PHASES:
    fn, _ = convolution.conv_phase(phase, 'onednn', sig)
    ref, _ = convolution.conv_phase(phase, 'xla', sig)
    np.testing.assert_allclose(jax.jit(fn)(x, kernel, dy), jax.jit(ref)(x, kernel, dy),
                               rtol=1e-4, atol=1e-4)
    assert 'onednn' in convolution.phase_candidates(sig, phase)
  # Differentiable as one conv, as convolution.Conv uses it when every phase chose it.
  loss = lambda impl: lambda x, k: jnp.sum(convolution.conv_forward(impl, x, k, sig.strides) * dy)
  for got, want in zip(jax.grad(loss('onednn'), (0, 1))(x, kernel),
                       jax.grad(loss('xla'), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
