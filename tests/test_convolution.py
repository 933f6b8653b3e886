"""Conv's implementations: each phase of each candidate computes XLA's conv and gradients, the
rules that decide which candidates a conv's phases try, and the tuned mix of them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import convolution
from srgan_jax import onednn
from srgan_jax import winograd
from srgan_jax import winograd_native
from tests import conftest


@pytest.mark.parametrize('size,kernel,stride', [(28, 3, 1), (28, 3, 2), (7, 3, 2), (4, 3, 2),
                                                (7, 9, 1), (9, 5, 1)])
def test_matmul_conv_equals_xla_conv(size, kernel, stride):
  x = conftest.gaussian(1, (2, size, size + 1, 5))
  conv = convolution.Conv(7, kernel, stride, implementation='xla')
  variables = jax.jit(conv.init)(jax.random.PRNGKey(0), x)
  matmul = convolution.Conv(7, kernel, stride, implementation='matmul')
  # Each module's pass as one program (run op by op, the test compiled 60-110 tiny ones).
  want = jax.jit(conv.apply)(variables, x)
  np.testing.assert_allclose(jax.jit(matmul.apply)(variables, x), want, atol=2e-5)
  # Same numbers as flax's own nn.Conv with SAME padding, and the same parameter layout.
  flax_conv = nn.Conv(7, (kernel, kernel), strides=(stride, stride))
  np.testing.assert_allclose(jax.jit(flax_conv.apply)(variables, x), want, atol=2e-5)
  grads = [jax.jit(jax.grad(lambda v, x, m=m: m.apply(v, x).sum(), argnums=(0, 1)))(variables, x)
           for m in (conv, matmul)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         *grads)


CONV_SHAPES = [  # (height, width, in features, out features, kernel, stride)
    (7, 7, 1, 5, 9, 1), (9, 8, 3, 4, 3, 2), (6, 6, 4, 1, 9, 1), (5, 4, 2, 3, 5, 2),
    (7, 6, 4, 5, 3, 1), (9, 12, 3, 2, 3, 1),  # 3x3 stride 1: Winograd's, with partial tiles.
    (6, 5, 6, 2, 3, 2)]  # Over TAP_MAJOR_MAX_FEATURES inputs: im2col by a gather; dy's tap-major.


@pytest.mark.parametrize('height,width,cin,cout,kernel,stride', CONV_SHAPES)
def test_every_conv_candidate_equals_xla(height, width, cin, cout, kernel, stride):
  """Each phase of each implementation (what 'tuned' may pick) gives XLA's numbers: the output,
  and the gradients w.r.t. the input and the kernel of XLA's conv. (Winograd's: 3x3 stride-1
  shapes only, where it must hold.)"""
  sig = convolution.ConvSignature(2, height, width, cin, cout, kernel, stride, 'float32')
  x, w = (conftest.gaussian(i, s)
          for i, s in enumerate(convolution.conv_phase('forward', 'xla', sig)[1][:2]))
  y, vjp = jax.vjp(lambda x, w: convolution.conv_forward('xla', x, w, stride), x, w)
  dy = conftest.gaussian(2, y.shape)
  expected = dict(zip(convolution.CONV_PHASES, (y,) + vjp(dy)))
  jobs = [(phase, impl) for phase, impls in convolution.PHASE_CANDIDATES.items() for impl in impls
          if convolution.computes(impl, sig)]
  # Winograd's 3 on 3x3/1; oneDNN's 3 where it is ready (test_onednn.py).
  assert len(jobs) == (14 if (kernel, stride) == (3, 1) else 11) + 3 * onednn.available()
  outs = jax.jit(lambda x, w, dy: [convolution.conv_phase(phase, impl, sig)[0](x, w, dy)
                                   for phase, impl in jobs])(x, w, dy)  # One compile.
  for (phase, impl), out in zip(jobs, outs):
    np.testing.assert_allclose(out, expected[phase], rtol=1e-4, atol=1e-4,
                               err_msg=f'{phase} {impl}')


def test_tuned_conv_mixes_implementations_with_xla_values_and_gradients():
  x = conftest.gaussian(1, (2, 9, 8, 3))
  xla = convolution.Conv(4, 3, 2, implementation='xla')
  variables = xla.init(jax.random.PRNGKey(0), x)
  sig = convolution.conv_signature(x.shape, x.dtype, 3, 4, 2)
  plan = ((sig, convolution.ConvChoice('gather', 'xla_t', 'gather_t')),)
  tuned = convolution.Conv(4, 3, 2, implementation='tuned', plan=plan)
  assert jax.tree_util.tree_map(jnp.shape, tuned.init(jax.random.PRNGKey(0), x)) == (
      jax.tree_util.tree_map(jnp.shape, variables))
  outs = [(m.apply(variables, x),
           jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1))(variables, x))
          for m in (xla, tuned)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         *outs)


def test_tuned_conv_missing_from_the_plan_warns_and_uses_auto():
  x = jnp.ones((1, 5, 5, 2))
  conv = convolution.Conv(3, 3, implementation='tuned', plan=())
  with pytest.warns(UserWarning, match=r"3x3x2->3 @5x5 b1.*'xla'"):
    variables = conv.init(jax.random.PRNGKey(0), x)
    y = conv.apply(variables, x)
  np.testing.assert_allclose(y, convolution.Conv(3, 3).apply(variables, x), atol=1e-6)


@pytest.mark.usefixtures('without_onednn', 'without_direct_convs', 'xla_winograd_transforms')
def test_workspace_bounds_keep_the_narrow_side_of_im2col():
  # A 9x9 conv from 64 features to 1: im2col of x (81 x 64 per pixel) is not tried for the
  # kernel gradient, im2col of the output gradient (81 x 1) is.
  wide_in = convolution.ConvSignature(32, 28, 28, 64, 1, 9, 1, 'float32')
  assert convolution.phase_candidates(wide_in, 'kernel_grad') == ('xla', 'xla_dot', 'gather_t')
  # Its forward pass: kn2row's buffer (81 x 1 per padded pixel), not im2col's; its input
  # gradient: also im2col of the output gradient (81 x 1 per pixel), not col2im's (81 x 64).
  assert convolution.phase_candidates(wide_in, 'forward') == ('xla', 'kn2row')
  assert convolution.phase_candidates(wide_in, 'input_grad') == ('xla_t', 'gather_t')
  wide_out = convolution.ConvSignature(32, 7, 7, 1, 64, 9, 1, 'float32')
  assert convolution.phase_candidates(wide_out, 'kernel_grad') == ('xla', 'gather')
  assert convolution.phase_candidates(wide_out, 'forward') == ('xla', 'gather')
  # As many output features as input ones: im2col of dy is no narrower (and lost: 5.9 vs 1.8 ms).
  square = convolution.ConvSignature(32, 7, 7, 64, 64, 3, 1, 'float32')
  assert convolution.phase_candidates(square, 'kernel_grad', 'ynnpack') == ('xla', 'gather')
  assert convolution.phase_candidates(square, 'input_grad') == ('xla_t', 'matmul')


@pytest.mark.usefixtures('without_onednn', 'without_direct_convs', 'xla_winograd_transforms')
def test_gather_on_wide_inputs_is_tried_where_xla_convs_run_on_ynnpack_only():
  """On Eigen, 'gather' on wide inputs is Eigen's own product with the patches written out
  first (it lost there); on YNNPACK it won kernel gradients; on narrow inputs it is tap-major."""
  wide = convolution.ConvSignature(32, 7, 7, convolution.TAP_MAJOR_MAX_FEATURES + 1, 64, 3, 1,
                                   'float32')
  for phase in ('forward', 'kernel_grad'):
    assert convolution.phase_candidates(wide, phase, 'eigen') == ('xla',)
    assert convolution.phase_candidates(wide, phase, 'ynnpack') == ('xla', 'gather')
    narrow = wide._replace(in_features=convolution.TAP_MAJOR_MAX_FEATURES)
    assert convolution.phase_candidates(narrow, phase, 'eigen') == ('xla', 'gather')
  # The input gradient's im2col ('matmul', on the output side) is tried on either.
  assert convolution.phase_candidates(wide, 'input_grad', 'eigen') == ('xla_t', 'matmul')


@pytest.mark.usefixtures('without_onednn', 'xla_winograd_transforms')
def test_xla_input_grad_of_a_stride_1_conv_is_not_a_candidate_xla_t_is_the_reference():
  # xla_t is the same conv with the kernel's flip spelled out, and XLA's lost to it in every
  # phase timed on two machine classes: XLA's would only cost tuning time.
  for sig in [convolution.ConvSignature(32, 14, 14, 64, 128, 3, 1, 'float32'),
              convolution.ConvSignature(32, 28, 28, 64, 1, 9, 1, 'float32'),
              convolution.ConvSignature(32, 28, 28, 1, 32, 3, 1, 'float32')]:
    candidates = convolution.phase_candidates(sig, 'input_grad')
    assert candidates[0] == 'xla_t' and 'xla' not in candidates, sig
    assert convolution.phase_candidates(sig, 'forward')[0] == 'xla'
  # No gather_t: its buffer would be k*k copies of the wider side; and no im2col ('matmul')
  # where Winograd applies.
  assert convolution.phase_candidates(
      convolution.ConvSignature(32, 7, 7, 64, 128, 3, 1, 'float32'), 'input_grad') == (
          'xla_t', 'matmul')
  assert convolution.phase_candidates(
      convolution.ConvSignature(32, 14, 14, 64, 128, 3, 1, 'float32'), 'input_grad') == (
          'xla_t', 'winograd_t')


@pytest.mark.usefixtures('without_onednn')
def test_xla_input_grad_of_a_wide_strided_conv_is_not_a_candidate():
  # XLA:CPU's slowest case (about 1 s a call on 4x4 maps, 'matmul' 4-8 ms) costs tuning time.
  wide = convolution.ConvSignature(32, 4, 4, 512, 512, 3, 2, 'float32')
  assert convolution.phase_candidates(wide, 'input_grad') == ('matmul',)
  assert convolution.phase_candidates(wide, 'forward', 'ynnpack') == ('xla', 'gather')
  assert convolution.phase_candidates(wide._replace(strides=1), 'input_grad')[0] == 'xla_t'
  narrower = wide._replace(in_features=256, height=7, width=7, features=256)
  assert convolution.phase_candidates(narrower, 'input_grad') == ('xla', 'matmul')


def test_kernel_gradients_by_the_identity_product_are_tried_on_large_wide_inputs_only():
  """'xla_dot' (x turned feature-major by a matmul with the identity) where XLA's transpose
  of x costs most: more than TAP_MAJOR_MAX_FEATURES features and DOT_TRANSPOSE_MIN_BYTES."""
  large = convolution.ConvSignature(32, 28, 28, 64, 64, 3, 2, 'float32')  # 6.4 MB of input.
  assert 'xla_dot' in convolution.phase_candidates(large, 'kernel_grad')
  for other in [large._replace(batch=8),  # 1.6 MB.
                large._replace(in_features=convolution.TAP_MAJOR_MAX_FEATURES, batch=4096)]:
    assert 'xla_dot' not in convolution.phase_candidates(other, 'kernel_grad'), other
  for phase in ('forward', 'input_grad'):
    assert 'xla_dot' not in convolution.phase_candidates(large, phase)


def test_xla_dot_kernel_gradient_turns_x_by_the_identity_product():
  """'xla_dot' is XLA's kernel gradient with one more matmul (the identity's), 'xla' is not:
  equal values alone (test_every_conv_candidate_equals_xla) would not tell them apart."""
  sig = convolution.ConvSignature(2, 6, 6, 8, 4, 3, 2, 'float32')
  count = lambda impl: str(jax.make_jaxpr(convolution.conv_phase('kernel_grad', impl, sig)[0])(
      *(jnp.zeros(s) for s in convolution.conv_phase('kernel_grad', impl, sig)[1]))).count(
          'dot_general')
  assert (count('xla'), count('xla_dot')) == (0, 1)


def test_features_first_is_the_transpose_exactly():
  x = conftest.gaussian(0, (3, 5, 4, 6))
  np.testing.assert_array_equal(jax.jit(convolution._features_first)(x),  # pylint: disable=protected-access
                                jnp.transpose(x, (3, 1, 2, 0)))


@pytest.mark.usefixtures('without_onednn', 'xla_winograd_transforms')
def test_winograd_is_a_candidate_of_wide_3x3_stride_1_convs_only():
  """Where Winograd is tried, im2col is not (it lost there); elsewhere im2col is tried."""
  wide = convolution.ConvSignature(64, 28, 28, 32, 64, 3, 1, 'float32')
  assert convolution.phase_candidates(wide, 'forward') == ('xla', 'winograd')
  assert convolution.phase_candidates(wide, 'input_grad') == ('xla_t', 'winograd_t')
  assert convolution.phase_candidates(wide, 'kernel_grad') == ('xla', 'xla_dot', 'winograd')
  for other in [wide._replace(in_features=1),  # The seed CNN's first conv: transforms dominate.
                wide._replace(height=7, width=7),  # Padded to 8x8 tiles: rarely won.
                wide._replace(strides=2), wide._replace(kernel_size=5)]:
    candidates = {c for phase in convolution.CONV_PHASES
                  for c in convolution.phase_candidates(other, phase, 'ynnpack')}
    assert not any(c.startswith('winograd') for c in candidates), other
    assert set(convolution.IM2COL) <= candidates, other
  x = jnp.ones((1, 6, 6, 2))
  with pytest.raises(ValueError, match='3x3 stride-1 convs only'):
    convolution.conv_forward('winograd', x, jnp.ones((5, 5, 2, 3)), 1)


@pytest.mark.parametrize('native', [False, True])
def test_winograd_batch_chunks_fit_the_budget_and_compute_the_same(monkeypatch, native):
  """Winograd's transforms take the batch a chunk at a time, the most images (a divisor of the
  batch) whose tiles fit winograd.CHUNK_BYTES: the same output and gradients as whole, with
  XLA's transforms and with winograd_native's."""
  if native and not winograd_native.available():
    pytest.skip(f'Winograd\'s native transforms are unavailable: {winograd_native.status()}')
  monkeypatch.setattr(winograd_native, 'available', lambda: native)
  sig = convolution.ConvSignature(6, 9, 7, 5, 4, 3, 1, 'float32')
  # 3x2 tiles of 36 values and 5 features an image: 4320 bytes.
  per_image = winograd.workspace_bytes(1, 9, 7, 5, 4, 4)
  assert per_image == 3 * 2 * 36 * 5 * 4
  chunk_of = lambda budget: (monkeypatch.setattr(winograd, 'CHUNK_BYTES', budget),
                             winograd.batch_chunk(6, 9, 7, 5, 4, 4))[1]
  assert chunk_of(1 << 30) == 6
  assert chunk_of(5 * per_image) == 3  # 4 and 5 images would fit, but do not divide 6.
  assert chunk_of(per_image - 1) == 1  # One image at a time when none fits.
  assert winograd.workspace_bytes(6, 9, 7, 5, 4, 4) == per_image
  x, w = (conftest.gaussian(i, s)
          for i, s in enumerate(convolution.conv_phase('forward', 'xla', sig)[1][:2]))
  b = conftest.gaussian(3, (4,))
  choice = convolution.ConvChoice('winograd', 'winograd_t', 'winograd')
  dy = conftest.gaussian(2, (6, 9, 7, 4))

  def outputs(budget):
    monkeypatch.setattr(winograd, 'CHUNK_BYTES', budget)

    def phases(x, w, b, dy):
      y, vjp = jax.vjp(lambda x, w, b: convolution.tuned_conv(x, w, b, 1, choice), x, w, b)
      return (y,) + vjp(dy)
    # One program a budget (a new function: traced with this budget), not one an operation.
    return jax.jit(phases)(x, w, b, dy)

  def loops(budget):  # The while loops (lax.map, lax.scan) of the three phases' program.
    monkeypatch.setattr(winograd, 'CHUNK_BYTES', budget)
    program = str(jax.make_jaxpr(lambda x, w: jax.vjp(
        lambda x, w: convolution.tuned_conv(x, w, b, 1, choice), x, w)[1](dy))(x, w))
    assert ('ffi_call' in program) == native  # The transforms the test means to check.
    return program.count(' scan[')

  assert loops(1 << 30) == 0 and loops(2 * per_image) == 3
  whole = outputs(1 << 30)
  for budget in (2 * per_image, 3 * per_image):  # Chunks of 2 and 3 images.
    for got, want in zip(outputs(budget), whole):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  y, vjp = jax.vjp(lambda x, w, b: convolution.conv_forward('xla', x, w, 1) + b, x, w, b)
  for got, want in zip(whole, (y,) + vjp(dy)):  # The bias and its gradient too.
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)


def test_winograd_computes_xla_conv_on_partial_tiles_of_many_features():
  """F(4x4, 3x3) on maps that are not a multiple of its 4x4 tiles, with enough features that
  its float32 rounding would show: the output and both gradients as XLA's conv."""
  sig = convolution.ConvSignature(2, 10, 7, 24, 20, 3, 1, 'float32')
  x, w = (conftest.gaussian(i, s)
          for i, s in enumerate(convolution.conv_phase('forward', 'xla', sig)[1][:2]))
  y, vjp = jax.vjp(lambda x, w: convolution.conv_forward('xla', x, w, 1), x, w)
  dy = conftest.gaussian(2, y.shape)
  dx, dw = vjp(dy)
  choice = convolution.ConvChoice('winograd', 'winograd_t', 'winograd')
  y_w, vjp_w = jax.vjp(lambda x, w: convolution.tuned_conv(x, w, jnp.zeros((20,)), 1, choice), x, w)
  for got, want in zip((y_w,) + vjp_w(dy), (y, dx, dw)):
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)
