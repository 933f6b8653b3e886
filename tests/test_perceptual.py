"""Training with the VGG19 and the classifier-feature content losses."""

import os

import jax
import numpy as np
import pytest

from srgan_jax import conv_tuning
from srgan_jax import convolution
from srgan_jax import errors
from srgan_jax import image_ops
from srgan_jax import input_pipeline
from srgan_jax import losses
from srgan_jax import steps
from srgan_jax import train
from srgan_jax import vgg
from srgan_jax import writers
from tests.conftest import make_tiny_config


def _write_small_vgg_npz(path):
  params = vgg.random_vgg19_params(jax.random.PRNGKey(0), ['conv1_2'])
  arrays = {f'{layer}/{name}': np.asarray(value)
            for layer, p in params.items() for name, value in p.items()}
  np.savez(path, **arrays)


def _assert_content_loss_was_optimised(config, workdir):
  """Trains; the content loss logged at step 1 is the selected feature loss of the first batch
  under the initial generator (recomputed here), not the pixel MSE."""
  config.log_every_steps = 1
  summary = train.train_and_evaluate(config, workdir)
  assert np.isfinite(summary['psnr_sr'])
  logged = next(r for r in writers.read_metrics(workdir) if 'content' in r)
  assert logged['step'] == 1
  frozen = train.prepare_frozen(config, workdir)  # The cached guide / the same VGG file.
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(config.seed),
                                               axis_name=None)
  split = input_pipeline.load_split(config, 'train')
  batch = input_pipeline.get_batch(split, input_pipeline.batch_indices(
      config.seed, 0, config.batch_size, split.num_examples))
  _, (sr, _, metrics) = jax.jit(lambda params, g, d, b: steps.generator_loss(  # One compile.
      params, g, d, b, frozen, config=config, adversarial=False))(
          g_state.params, g_state, d_state, batch)
  assert logged['content'] == pytest.approx(float(metrics['content']), rel=1e-3)
  pixel_mse = float(losses.mse(sr, image_ops.to_model_range(batch['hr'])))
  assert logged['content'] != pytest.approx(pixel_mse, rel=0.05)


def test_vgg_content_loss_trains_and_reaches_generator(tmp_path):
  weights = str(tmp_path / 'vgg19_small.npz')
  _write_small_vgg_npz(weights)
  config = make_tiny_config(**{
      'loss.content': 'vgg', 'loss.vgg.weights': weights, 'loss.vgg.layers': {'conv1_2': 1.0},
      'loss.vgg.criterion': 'l1', 'loss.vgg.before_activation': True,
      'pretrain_steps': 2, 'num_train_steps': 2})
  frozen = train.prepare_frozen(config, str(tmp_path))
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(0), axis_name=None)
  rng = np.random.default_rng(0)
  batch = {'hr': rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8),
           'lr': rng.integers(0, 256, (4, 7, 7, 1), dtype=np.uint8)}
  grads, (_, _, metrics) = jax.jit(lambda params, g, d, b: jax.grad(
      steps.generator_loss, has_aux=True)(params, g, d, b, frozen, config=config,
                                          adversarial=False))(
          g_state.params, g_state, d_state, batch)
  assert float(metrics['content']) > 0
  assert sum(float(np.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)) > 0
  _assert_content_loss_was_optimised(config, str(tmp_path / 'run'))


def test_vgg19_convs_are_tuned_with_the_networks_and_compute_the_same(tmp_path, monkeypatch):
  """VGG19 runs forward on SR and HR and back to SR: most of a VGG-loss GAN step. Its convs
  are tuned with G and D (forward and input gradient, no kernel gradient: it is frozen), and
  the content loss then computes them as the plan says, with the same values and gradients."""
  weights = str(tmp_path / 'vgg19_small.npz')
  _write_small_vgg_npz(weights)
  config = make_tiny_config(**{'loss.content': 'vgg', 'loss.vgg.weights': weights,
                               'loss.vgg.layers': {'conv1_2': 1.0},
                               'conv_implementation': 'tuned'})
  frozen = train.prepare_frozen(config, str(tmp_path))
  batch = config.batch_size // jax.device_count()
  vgg_sigs = [convolution.ConvSignature(batch, 28, 28, 3, 64, 3, 1, 'float32'),
              convolution.ConvSignature(batch, 28, 28, 64, 64, 3, 1, 'float32')]
  timed = []
  # im2col, or Winograd where it applies (and im2col is not tried).
  fastest = {'gather', 'matmul', 'winograd', 'winograd_t'}

  def timer(jobs):  # Not XLA's, so that the equality below compares two implementations.
    timed.extend(jobs)
    return {job: (1.0 if job[2] in fastest else 2.0) * (
        100 if job[0] in vgg_sigs else 1) for job in jobs}  # VGG19's worth tuning.
  monkeypatch.setattr(conv_tuning, 'PhaseTimer', lambda devices: timer)
  monkeypatch.setenv(conv_tuning.CACHE_ENV, str(tmp_path))  # Keep these times to this test.
  lines = []
  plan, tuned, _ = train.tune_convs(config, frozen, log=lines.append)
  assert {p for sig, p, _ in timed if sig in vgg_sigs} == {'forward', 'input_grad'}
  assert dict(plan)[vgg_sigs[0]] == convolution.ConvChoice('gather', 'matmul', 'xla')
  assert dict(plan)[vgg_sigs[1]] == convolution.ConvChoice('winograd', 'winograd_t', 'xla')
  assert any(line.startswith('Convs tuned for the VGG19 features (measured): 3x3x3->64 @28x28')
             for line in lines)
  assert tuned.vgg_fn.model.conv == 'tuned' and tuned.vgg_fn.model.conv_plan == plan

  x = image_ops.to_model_range(np.random.default_rng(0).integers(
      0, 256, (batch, 28, 28, 1), dtype=np.uint8))
  feature_sum = lambda fn: lambda x: fn(frozen.vgg_params, x)['conv1_2'].sum()
  np.testing.assert_allclose(tuned.vgg_fn(frozen.vgg_params, x)['conv1_2'],
                             frozen.vgg_fn(frozen.vgg_params, x)['conv1_2'], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(jax.grad(feature_sum(tuned.vgg_fn))(x),
                             jax.grad(feature_sum(frozen.vgg_fn))(x), rtol=1e-4, atol=1e-3)


def test_missing_vgg_weights_fail_before_training(tmp_path):
  config = make_tiny_config(**{'loss.content': 'vgg',
                               'loss.vgg.weights': str(tmp_path / 'nope.h5')})
  with pytest.raises(errors.VGGWeightsError, match='nope.h5'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_classifier_feature_content_loss_trains(tmp_path, one_command_run):
  _, trained_workdir, _, _ = one_command_run  # Its guide, trained once for the session.
  config = make_tiny_config(**{
      'loss.content': 'classifier', 'loss.classifier_layers': {'conv2': 1.0, 'conv3': 0.5},
      'loss.classifier_workdir': os.path.join(trained_workdir, 'classifier'),
      'pretrain_steps': 2, 'num_train_steps': 2})
  _assert_content_loss_was_optimised(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'classifier')  # The given guide was used.
