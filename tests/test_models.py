"""Shapes and parameter counts of the networks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import image_ops
from srgan_jax import models
from srgan_jax import onednn
from srgan_jax import winograd
from srgan_jax import winograd_native


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
  lr = jax.random.normal(jax.random.PRNGKey(1), (2, 28 // scale, 28 // scale, channels))
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
  n = models.count_params(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))['params'])
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


@pytest.mark.parametrize('size,kernel,stride', [(28, 3, 1), (28, 3, 2), (7, 3, 2), (4, 3, 2),
                                                (7, 9, 1), (9, 5, 1)])
def test_matmul_conv_equals_xla_conv(size, kernel, stride):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size + 1, 5))
  conv = models.Conv(7, kernel, stride, implementation='xla')
  variables = jax.jit(conv.init)(jax.random.PRNGKey(0), x)
  matmul = models.Conv(7, kernel, stride, implementation='matmul')
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
  sig = models.ConvSignature(2, height, width, cin, cout, kernel, stride, 'float32')
  x, w = (jax.random.normal(jax.random.PRNGKey(i), s)
          for i, s in enumerate(models.conv_phase('forward', 'xla', sig)[1][:2]))
  y, vjp = jax.vjp(lambda x, w: models.conv_forward('xla', x, w, stride), x, w)
  dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  expected = dict(zip(models.CONV_PHASES, (y,) + vjp(dy)))
  jobs = [(phase, impl) for phase, impls in models.PHASE_CANDIDATES.items() for impl in impls
          if models.computes(impl, sig)]
  # Winograd's 3 on 3x3/1; oneDNN's 3 where it is ready (test_onednn.py).
  assert len(jobs) == (14 if (kernel, stride) == (3, 1) else 11) + 3 * onednn.available()
  outs = jax.jit(lambda x, w, dy: [models.conv_phase(phase, impl, sig)[0](x, w, dy)
                                   for phase, impl in jobs])(x, w, dy)  # One compile.
  for (phase, impl), out in zip(jobs, outs):
    np.testing.assert_allclose(out, expected[phase], rtol=1e-4, atol=1e-4,
                               err_msg=f'{phase} {impl}')


def test_tuned_conv_mixes_implementations_with_xla_values_and_gradients():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 8, 3))
  xla = models.Conv(4, 3, 2, implementation='xla')
  variables = xla.init(jax.random.PRNGKey(0), x)
  sig = models.conv_signature(x.shape, x.dtype, 3, 4, 2)
  plan = ((sig, models.ConvChoice('gather', 'xla_t', 'gather_t')),)
  tuned = models.Conv(4, 3, 2, implementation='tuned', plan=plan)
  assert jax.tree_util.tree_map(jnp.shape, tuned.init(jax.random.PRNGKey(0), x)) == (
      jax.tree_util.tree_map(jnp.shape, variables))
  outs = [(m.apply(variables, x),
           jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1))(variables, x))
          for m in (xla, tuned)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         *outs)


def test_tuned_conv_missing_from_the_plan_warns_and_uses_auto():
  x = jnp.ones((1, 5, 5, 2))
  conv = models.Conv(3, 3, implementation='tuned', plan=())
  with pytest.warns(UserWarning, match=r"3x3x2->3 @5x5 b1.*'xla'"):
    variables = conv.init(jax.random.PRNGKey(0), x)
    y = conv.apply(variables, x)
  np.testing.assert_allclose(y, models.Conv(3, 3).apply(variables, x), atol=1e-6)


@pytest.mark.usefixtures('without_onednn', 'without_direct_convs', 'xla_winograd_transforms')
def test_workspace_bounds_keep_the_narrow_side_of_im2col():
  # A 9x9 conv from 64 features to 1: im2col of x (81 x 64 per pixel) is not tried for the
  # kernel gradient, im2col of the output gradient (81 x 1) is.
  wide_in = models.ConvSignature(32, 28, 28, 64, 1, 9, 1, 'float32')
  assert models.phase_candidates(wide_in, 'kernel_grad') == ('xla', 'xla_dot', 'gather_t')
  # Its forward pass: kn2row's buffer (81 x 1 per padded pixel), not im2col's; its input
  # gradient: also im2col of the output gradient (81 x 1 per pixel), not col2im's (81 x 64).
  assert models.phase_candidates(wide_in, 'forward') == ('xla', 'kn2row')
  assert models.phase_candidates(wide_in, 'input_grad') == ('xla_t', 'gather_t')
  wide_out = models.ConvSignature(32, 7, 7, 1, 64, 9, 1, 'float32')
  assert models.phase_candidates(wide_out, 'kernel_grad') == ('xla', 'gather')
  assert models.phase_candidates(wide_out, 'forward') == ('xla', 'gather')
  # As many output features as input ones: im2col of dy is no narrower (and lost: 5.9 vs 1.8 ms).
  square = models.ConvSignature(32, 7, 7, 64, 64, 3, 1, 'float32')
  assert models.phase_candidates(square, 'kernel_grad', 'ynnpack') == ('xla', 'gather')
  assert models.phase_candidates(square, 'input_grad') == ('xla_t', 'matmul')


@pytest.mark.usefixtures('without_onednn', 'without_direct_convs', 'xla_winograd_transforms')
def test_gather_on_wide_inputs_is_tried_where_xla_convs_run_on_ynnpack_only():
  """On Eigen, 'gather' on wide inputs is Eigen's own product with the patches written out
  first (it lost there); on YNNPACK it won kernel gradients; on narrow inputs it is tap-major."""
  wide = models.ConvSignature(32, 7, 7, models.TAP_MAJOR_MAX_FEATURES + 1, 64, 3, 1, 'float32')
  for phase in ('forward', 'kernel_grad'):
    assert models.phase_candidates(wide, phase, 'eigen') == ('xla',)
    assert models.phase_candidates(wide, phase, 'ynnpack') == ('xla', 'gather')
    narrow = wide._replace(in_features=models.TAP_MAJOR_MAX_FEATURES)
    assert models.phase_candidates(narrow, phase, 'eigen') == ('xla', 'gather')
  # The input gradient's im2col ('matmul', on the output side) is tried on either.
  assert models.phase_candidates(wide, 'input_grad', 'eigen') == ('xla_t', 'matmul')


@pytest.mark.usefixtures('without_onednn', 'xla_winograd_transforms')
def test_xla_input_grad_of_a_stride_1_conv_is_not_a_candidate_xla_t_is_the_reference():
  # xla_t is the same conv with the kernel's flip spelled out, and XLA's lost to it in every
  # phase timed on two machine classes: XLA's would only cost tuning time.
  for sig in [models.ConvSignature(32, 14, 14, 64, 128, 3, 1, 'float32'),
              models.ConvSignature(32, 28, 28, 64, 1, 9, 1, 'float32'),
              models.ConvSignature(32, 28, 28, 1, 32, 3, 1, 'float32')]:
    candidates = models.phase_candidates(sig, 'input_grad')
    assert candidates[0] == 'xla_t' and 'xla' not in candidates, sig
    assert models.phase_candidates(sig, 'forward')[0] == 'xla'
  # No gather_t: its buffer would be k*k copies of the wider side; and no im2col ('matmul')
  # where Winograd applies.
  assert models.phase_candidates(
      models.ConvSignature(32, 7, 7, 64, 128, 3, 1, 'float32'), 'input_grad') == (
          'xla_t', 'matmul')
  assert models.phase_candidates(
      models.ConvSignature(32, 14, 14, 64, 128, 3, 1, 'float32'), 'input_grad') == (
          'xla_t', 'winograd_t')


@pytest.mark.usefixtures('without_onednn')
def test_xla_input_grad_of_a_wide_strided_conv_is_not_a_candidate():
  # XLA:CPU's slowest case (about 1 s a call on 4x4 maps, 'matmul' 4-8 ms) costs tuning time.
  wide = models.ConvSignature(32, 4, 4, 512, 512, 3, 2, 'float32')
  assert models.phase_candidates(wide, 'input_grad') == ('matmul',)
  assert models.phase_candidates(wide, 'forward', 'ynnpack') == ('xla', 'gather')
  assert models.phase_candidates(wide._replace(strides=1), 'input_grad')[0] == 'xla_t'
  narrower = wide._replace(in_features=256, height=7, width=7, features=256)
  assert models.phase_candidates(narrower, 'input_grad') == ('xla', 'matmul')


@pytest.mark.parametrize('shape', [(2, 6, 8, 3), (1, 7, 5, 2)])
def test_max_pool_2x2_equals_flax_values_and_gradients(shape):
  # Few distinct values: windows with tied maxima, whose gradient goes to the first one.
  x = jax.random.randint(jax.random.PRNGKey(0), shape, 0, 3).astype(jnp.float32)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(image_ops.max_pool_2x2(x), flax_pool(x))
  w = jax.random.normal(jax.random.PRNGKey(1), flax_pool(x).shape)
  grads = [jax.grad(lambda x, f=f: jnp.sum(f(x) * w))(x)
           for f in (image_ops.max_pool_2x2, flax_pool)]
  np.testing.assert_array_equal(*grads)


def test_kernel_gradients_by_the_identity_product_are_tried_on_large_wide_inputs_only():
  """'xla_dot' (x turned feature-major by a matmul with the identity) where XLA's transpose
  of x costs most: more than TAP_MAJOR_MAX_FEATURES features and DOT_TRANSPOSE_MIN_BYTES."""
  large = models.ConvSignature(32, 28, 28, 64, 64, 3, 2, 'float32')  # 6.4 MB of input.
  assert 'xla_dot' in models.phase_candidates(large, 'kernel_grad')
  for other in [large._replace(batch=8),  # 1.6 MB.
                large._replace(in_features=models.TAP_MAJOR_MAX_FEATURES, batch=4096)]:
    assert 'xla_dot' not in models.phase_candidates(other, 'kernel_grad'), other
  for phase in ('forward', 'input_grad'):
    assert 'xla_dot' not in models.phase_candidates(large, phase)


def test_xla_dot_kernel_gradient_turns_x_by_the_identity_product():
  """'xla_dot' is XLA's kernel gradient with one more matmul (the identity's), 'xla' is not:
  equal values alone (test_every_conv_candidate_equals_xla) would not tell them apart."""
  sig = models.ConvSignature(2, 6, 6, 8, 4, 3, 2, 'float32')
  count = lambda impl: str(jax.make_jaxpr(models.conv_phase('kernel_grad', impl, sig)[0])(
      *(jnp.zeros(s) for s in models.conv_phase('kernel_grad', impl, sig)[1]))).count(
          'dot_general')
  assert (count('xla'), count('xla_dot')) == (0, 1)


def test_features_first_is_the_transpose_exactly():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4, 6))
  np.testing.assert_array_equal(jax.jit(models._features_first)(x),  # pylint: disable=protected-access
                                jnp.transpose(x, (3, 1, 2, 0)))


@pytest.mark.usefixtures('without_onednn', 'xla_winograd_transforms')
def test_winograd_is_a_candidate_of_wide_3x3_stride_1_convs_only():
  """Where Winograd is tried, im2col is not (it lost there); elsewhere im2col is tried."""
  wide = models.ConvSignature(64, 28, 28, 32, 64, 3, 1, 'float32')
  assert models.phase_candidates(wide, 'forward') == ('xla', 'winograd')
  assert models.phase_candidates(wide, 'input_grad') == ('xla_t', 'winograd_t')
  assert models.phase_candidates(wide, 'kernel_grad') == ('xla', 'xla_dot', 'winograd')
  for other in [wide._replace(in_features=1),  # The seed CNN's first conv: transforms dominate.
                wide._replace(height=7, width=7),  # Padded to 8x8 tiles: rarely won.
                wide._replace(strides=2), wide._replace(kernel_size=5)]:
    candidates = {c for phase in models.CONV_PHASES
                  for c in models.phase_candidates(other, phase, 'ynnpack')}
    assert not any(c.startswith('winograd') for c in candidates), other
    assert set(models.IM2COL) <= candidates, other
  x = jnp.ones((1, 6, 6, 2))
  with pytest.raises(ValueError, match='3x3 stride-1 convs only'):
    models.conv_forward('winograd', x, jnp.ones((5, 5, 2, 3)), 1)


@pytest.mark.parametrize('native', [False, True])
def test_winograd_batch_chunks_fit_the_budget_and_compute_the_same(monkeypatch, native):
  """Winograd's transforms take the batch a chunk at a time, the most images (a divisor of the
  batch) whose tiles fit winograd.CHUNK_BYTES: the same output and gradients as whole, with
  XLA's transforms and with winograd_native's."""
  if native and not winograd_native.available():
    pytest.skip(f'Winograd\'s native transforms are unavailable: {winograd_native.status()}')
  monkeypatch.setattr(winograd_native, 'available', lambda: native)
  sig = models.ConvSignature(6, 9, 7, 5, 4, 3, 1, 'float32')
  # 3x2 tiles of 36 values and 5 features an image: 4320 bytes.
  per_image = winograd.workspace_bytes(1, 9, 7, 5, 4, 4)
  assert per_image == 3 * 2 * 36 * 5 * 4
  chunk_of = lambda budget: (monkeypatch.setattr(winograd, 'CHUNK_BYTES', budget),
                             winograd.batch_chunk(6, 9, 7, 5, 4, 4))[1]
  assert chunk_of(1 << 30) == 6
  assert chunk_of(5 * per_image) == 3  # 4 and 5 images would fit, but do not divide 6.
  assert chunk_of(per_image - 1) == 1  # One image at a time when none fits.
  assert winograd.workspace_bytes(6, 9, 7, 5, 4, 4) == per_image
  x, w = (jax.random.normal(jax.random.PRNGKey(i), s)
          for i, s in enumerate(models.conv_phase('forward', 'xla', sig)[1][:2]))
  b = jax.random.normal(jax.random.PRNGKey(3), (4,))
  choice = models.ConvChoice('winograd', 'winograd_t', 'winograd')
  dy = jax.random.normal(jax.random.PRNGKey(2), (6, 9, 7, 4))

  def outputs(budget):
    monkeypatch.setattr(winograd, 'CHUNK_BYTES', budget)

    def phases(x, w, b, dy):
      y, vjp = jax.vjp(lambda x, w, b: models.tuned_conv(x, w, b, 1, choice), x, w, b)
      return (y,) + vjp(dy)
    # One program a budget (a new function: traced with this budget), not one an operation.
    return jax.jit(phases)(x, w, b, dy)

  def loops(budget):  # The while loops (lax.map, lax.scan) of the three phases' program.
    monkeypatch.setattr(winograd, 'CHUNK_BYTES', budget)
    program = str(jax.make_jaxpr(lambda x, w: jax.vjp(
        lambda x, w: models.tuned_conv(x, w, b, 1, choice), x, w)[1](dy))(x, w))
    assert ('ffi_call' in program) == native  # The transforms the test means to check.
    return program.count(' scan[')

  assert loops(1 << 30) == 0 and loops(2 * per_image) == 3
  whole = outputs(1 << 30)
  for budget in (2 * per_image, 3 * per_image):  # Chunks of 2 and 3 images.
    for got, want in zip(outputs(budget), whole):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  y, vjp = jax.vjp(lambda x, w, b: models.conv_forward('xla', x, w, 1) + b, x, w, b)
  for got, want in zip(whole, (y,) + vjp(dy)):  # The bias and its gradient too.
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)


def test_winograd_computes_xla_conv_on_partial_tiles_of_many_features():
  """F(4x4, 3x3) on maps that are not a multiple of its 4x4 tiles, with enough features that
  its float32 rounding would show: the output and both gradients as XLA's conv."""
  sig = models.ConvSignature(2, 10, 7, 24, 20, 3, 1, 'float32')
  x, w = (jax.random.normal(jax.random.PRNGKey(i), s)
          for i, s in enumerate(models.conv_phase('forward', 'xla', sig)[1][:2]))
  y, vjp = jax.vjp(lambda x, w: models.conv_forward('xla', x, w, 1), x, w)
  dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  dx, dw = vjp(dy)
  choice = models.ConvChoice('winograd', 'winograd_t', 'winograd')
  y_w, vjp_w = jax.vjp(lambda x, w: models.tuned_conv(x, w, jnp.zeros((20,)), 1, choice), x, w)
  for got, want in zip((y_w,) + vjp_w(dy), (y, dx, dw)):
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)
