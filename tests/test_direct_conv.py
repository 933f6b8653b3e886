"""Thin stride-1 convs computed directly in C++ (srgan_jax/direct_conv.py), convolution's 'direct'
candidate: the values and both gradients of XLA's conv, under pmap; where it is a candidate;
and what happens where it cannot be built."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import conv_tuning
from srgan_jax import convolution
from srgan_jax import direct_conv
from srgan_jax import native

from tests import conftest

needs_native = pytest.mark.skipif(not direct_conv.available(),
                                  reason=f'direct convs unavailable: {direct_conv.status()}')


_close = conftest.assert_close


def _xla_conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@needs_native
@pytest.mark.parametrize('n, h, w, c, f, k', [
    (3, 11, 9, 64, 1, 9),   # The generator's last conv: to one channel (input side wide).
    (2, 10, 7, 32, 3, 5),   # To three channels.
    (2, 6, 6, 48, 4, 3),    # To four (the thinnest side's most), 48 = 3 blocks of 16.
    (2, 9, 12, 1, 64, 9),   # The generator's first conv: from one channel (output side wide).
    (2, 8, 9, 3, 32, 3),    # From three, 32 output features.
    (2, 5, 13, 2, 16, 3),   # From two, 16 output features; rows narrower than 3 pixel blocks.
])
def test_conv_and_kernel_gradient_equal_xla(n, h, w, c, f, k):
  """Asymmetric and wide padding (the input gradient's), and a cropped side, so each tap's
  edges are read as zeros or skipped."""
  x = conftest.gaussian(0, (n, h, w, c))
  kernel = conftest.gaussian(1, (k, k, c, f))
  for padding in (((k // 2, k - 1 - k // 2), (k // 2 + 1, k - 2 - k // 2)),
                  ((k - 1, k - 1), (0, k - 1)), ((-1, 2), (1, 0))):
    want = _xla_conv(x, kernel, padding)
    _close(direct_conv.conv(x, kernel, padding), want)
    dy = conftest.gaussian(2, want.shape)
    _, vjp = jax.vjp(lambda kk, padding=padding: _xla_conv(x, kk, padding), kernel)
    _close(direct_conv.kernel_grad(x, dy, k, padding), vjp(dy)[0])


@needs_native
@pytest.mark.parametrize('c, f', [(64, 3), (3, 32)])
def test_pmapped_tuned_conv_with_direct_phases_equals_xla(c, f):
  """Each device's thread runs its own calls: the value and both gradients (through the
  flipped kernel of the input gradient) equal XLA's conv's."""
  sig = convolution.ConvSignature(3, 10, 9, c, f, 9, 1, 'float32')
  # Outputs of order 1: sin's slope does not amplify.
  got, want, program = conftest.pmapped_tuned_conv_and_xla(
      convolution.ConvChoice('direct', 'direct', 'direct'), sig,
      kernel_scale=1 / np.sqrt(9 * 9 * c))
  # The value, the gradient's forward pass and its input gradient; the kernel gradient.
  assert program.count('srgan_direct_conv') == 3 and 'srgan_direct_kernel_grad' in program
  for g, w in zip(got, want):
    _close(g, w, atol=2e-5)


@pytest.mark.usefixtures('without_onednn')
def test_direct_is_a_candidate_for_thin_stride_1_f32_convs_only(monkeypatch):
  monkeypatch.setattr(direct_conv, 'available', lambda: True)
  last = convolution.ConvSignature(32, 28, 28, 64, 1, 9, 1, 'float32')
  first = convolution.ConvSignature(32, 7, 7, 1, 64, 9, 1, 'float32')
  for phase in convolution.CONV_PHASES:
    assert 'direct' in convolution.phase_candidates(last, phase)
    assert 'direct' in convolution.phase_candidates(first, phase)
    for other in (last._replace(strides=2), last._replace(dtype='bfloat16'),
                  last._replace(features=8), last._replace(in_features=40),
                  last._replace(in_features=direct_conv.MAX_WIDE_FEATURES + 16),
                  last._replace(kernel_size=direct_conv.MAX_KERNEL_SIZE + 1),
                  convolution.ConvSignature(32, 14, 14, 64, 64, 3, 1, 'float32')):
      assert 'direct' not in convolution.phase_candidates(other, phase), (other, phase)
  monkeypatch.setattr(direct_conv, 'available', lambda: False)
  assert 'direct' not in convolution.phase_candidates(last, 'forward')


def test_without_a_compiler_direct_is_no_candidate(monkeypatch, tmp_path):
  monkeypatch.delenv(native.OPT_OUT_ENV, raising=False)
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setattr(native.shutil, 'which', lambda name: None)
  direct_conv.status.cache_clear()
  try:
    assert not direct_conv.available() and 'compil' in direct_conv.status()
    sig = convolution.ConvSignature(2, 8, 8, 64, 1, 9, 1, 'float32')
    assert not any('direct' in convolution.phase_candidates(sig, p)
                   for p in convolution.CONV_PHASES)
    assert 'direct convs none' in conv_tuning.machine_key('cpu', 'cpu', 2)
  finally:
    direct_conv.status.cache_clear()
  assert not list(tmp_path.glob('**/*.so*'))
  monkeypatch.setenv(native.OPT_OUT_ENV, '0')
  try:
    assert native.OPT_OUT_ENV in direct_conv.status()
  finally:
    direct_conv.status.cache_clear()


@needs_native
def test_vmapped_direct_conv_and_its_gradients_equal_each_alone():
  """Both orientations (to 1 feature, from 1), their input and kernel gradients."""
  rng = np.random.default_rng(3)
  xs = jnp.asarray(rng.normal(size=(2, 3, 12, 11, 16)), jnp.float32)
  for x, kernel in ((xs, rng.normal(size=(9, 9, 16, 1))), (xs[..., :1], rng.normal(size=(3, 3, 1, 16)))):
    kernel = jnp.asarray(kernel, jnp.float32)
    k = kernel.shape[0]
    padding = ((k // 2, k // 2), (k // 2, k // 2))
    loss = lambda x, kernel: jnp.sum(jnp.sin(direct_conv.conv(x, kernel, padding)))
    conftest.assert_vmap_equals_each_alone(jax.grad(loss, (0, 1)), x, kernel)
