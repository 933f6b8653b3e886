"""Training with the VGG19 and the classifier-feature content losses."""

import os

import jax
import numpy as np
import pytest

from srgan_jax import train
from srgan_jax import vgg
from tests.conftest import make_tiny_config


def _write_small_vgg_npz(path):
  params = vgg.random_vgg19_params(jax.random.PRNGKey(0), ['conv1_2'])
  arrays = {f'{layer}/{name}': np.asarray(value)
            for layer, p in params.items() for name, value in p.items()}
  np.savez(path, **arrays)


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
  grads, (_, _, metrics) = jax.grad(train.generator_loss, has_aux=True)(
      g_state.params, g_state, d_state, batch, frozen, config=config, adversarial=False)
  assert float(metrics['content']) > 0
  assert sum(float(np.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)) > 0
  summary = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(summary['psnr_sr'])


def test_missing_vgg_weights_fail_before_training(tmp_path):
  config = make_tiny_config(**{'loss.content': 'vgg',
                               'loss.vgg.weights': str(tmp_path / 'nope.h5')})
  with pytest.raises(vgg.VGGWeightsError, match='nope.h5'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_classifier_feature_content_loss_trains(tmp_path):
  config = make_tiny_config(**{
      'loss.content': 'classifier', 'loss.classifier_layers': {'conv2': 1.0, 'conv3': 0.5},
      'pretrain_steps': 2, 'num_train_steps': 2})
  summary = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(summary['psnr_sr'])
  assert os.path.isdir(tmp_path / 'run' / 'classifier' / 'checkpoints')
