"""The auxiliary classifier on photographs: cifar10 at x4 (8x8 -> 32x32 RGB), offline.

tfds.testing.mock_data stands in for the prepared dataset (random images and labels of
cifar10's feature shapes, from the dataset's code: no download, no metadata files), and the
real training loop runs for a few steps with tiny networks: the guide and the judge train on
the 32x32x3 images first, the guide's loss reaches the generator, the judge scores the test
images. configs/cifar10_cnn.py itself is for a GPU or Colab, where cifar10 is prepared.
"""

import contextlib
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_cnn
from configs import default
from srgan_jax import classifier_train
from srgan_jax import config_utils
from srgan_jax import errors
from srgan_jax import evaluate
from srgan_jax import inference
from srgan_jax import models
from srgan_jax import steps
from srgan_jax import train
from srgan_jax import validation

from tests import conftest

tfds = pytest.importorskip('tensorflow_datasets')

NUM_EXAMPLES = 64  # of each split, under mock_data.
HR = 32


@contextlib.contextmanager
def _mock():
  with conftest.tfds_scratch(), tfds.testing.mock_data(
      num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def _tiny_config(**overrides):
  """configs/cifar10_cnn.py shrunk to seconds: GAN steps only (the auxiliary loss is off in
  pretraining), tiny G and D, one epoch of each classifier on the mock images."""
  config = cifar10_cnn.get_config()
  config.data.eval_examples = 0
  config.generator.num_res_blocks = 1
  config.generator.features = 8
  config.discriminator.features = (8, 16)
  config.discriminator.dense_features = 16
  config.batch_size = 8
  config.pretrain_steps = 0
  config.num_train_steps = 2
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval.batch_size = 32
  config.eval.curve_examples = 0
  config.eval.num_sample_images = 2
  config.eval.judge_epochs = 1
  config.classifier.num_epochs = 1
  config.classifier.batch_size = 8
  config.classifier.validation_examples = 8
  config.conv_implementation = 'xla'  # no timing of convs: these tests check what is computed.
  config.cpu_devices_per_core = False
  for key, value in overrides.items():
    config_utils.set_field(config, key, value)
  return config


@pytest.fixture(scope='module')
def cifar_run(tmp_path_factory):
  """One command on mock cifar10: guide and judge trained first, then 2 SRGAN steps."""
  config = _tiny_config()
  workdir = str(tmp_path_factory.mktemp('cifar'))
  with _mock():
    summary = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return types.SimpleNamespace(config=config, workdir=workdir, summary=summary, records=records)


def test_guide_and_judge_train_at_the_datasets_size_and_channels(cifar_run):
  guide_dir = os.path.join(cifar_run.workdir, 'classifier')
  guide, guide_vars, extra = inference.restore_classifier(guide_dir)
  judge, judge_vars, judge_extra = inference.restore_classifier(
      os.path.join(cifar_run.workdir, 'judge'))
  assert isinstance(guide, models.Classifier) and isinstance(judge, models.LeNetJudge)
  for facts in (extra, judge_extra):
    assert facts['image_size'] == [HR, HR] and facts['num_classes'] == 10
    assert 0.0 <= facts['test_accuracy'] <= 1.0
  # RGB in; the dense layers sized from 32x32 (two 2x2 pools: 8x8), 10 classes out.
  params = guide_vars['params']
  assert params['Conv_0']['kernel'].shape[-2:] == (3, 32)
  assert params['Dense_0']['kernel'].shape == (8 * 8 * 128, 128)
  assert judge_vars['params']['Dense_0']['kernel'].shape == (8 * 8 * 64, 256)
  assert params['Dense_2']['kernel'].shape[-1] == 10
  # From the checkpoint alone (inference): 32x32 RGB images, not MNIST's 28x28.
  classifier = inference.load_classifier(guide_dir)
  images = np.random.default_rng(0).integers(0, 256, (5, HR, HR, 3), dtype=np.uint8)
  assert classifier.logits(images).shape == (5, 10)
  with pytest.raises(ValueError, match='must be 32x32'):
    classifier.predict(images[:, :28, :28])
  # A guide of one dataset is refused for another (its classes would be other things).
  other = classifier_train.role_config(cifar_run.config, 'guide')
  other.data.name = 'cifar100'
  with pytest.raises(errors.CheckpointError, match="data.name: checkpoint has 'cifar10'"):
    inference.restore_classifier(guide_dir, other)


def test_auxiliary_loss_trains_the_generator_and_the_judge_reports(cifar_run):
  gan = [r for r in cifar_run.records if r.get('stage') == 1]
  assert [r['step'] for r in gan] == [1, 2]
  assert all(np.isfinite(r['auxiliary']) and r['auxiliary'] > 0 for r in gan)
  summary = cifar_run.summary
  for key in ('judge_accuracy_hr', 'judge_accuracy_bicubic', 'judge_accuracy_sr', 'fid_sr',
              'fid_bicubic', 'psnr_sr', 'psnr_bicubic', 'ssim_sr'):
    assert np.isfinite(summary[key]), key
  for row in ('hr', 'bicubic', 'sr'):  # 64 test images: accuracies in steps of 1/64.
    assert float(summary[f'judge_accuracy_{row}'] * NUM_EXAMPLES).is_integer()
  with open(os.path.join(cifar_run.workdir, 'results.md')) as f:
    table = f.read()
  assert 'judge accuracy' in table and 'judge-FID' in table and 'digit-FID' not in table


def test_auxiliary_gradient_reaches_the_generator_at_32x32(cifar_run):
  # The trained guide and the auxiliary loss alone (no content loss, no adversary): its
  # gradient is all the generator gets, through the frozen guide at 32x32x3.
  config = _tiny_config(**{'loss.content_weight': 0.0, 'loss.auxiliary_during_pretrain': True,
                           'loss.auxiliary_weight': 1.0})
  model, variables, _ = inference.restore_classifier(
      os.path.join(cifar_run.workdir, 'classifier'))
  frozen = steps.Frozen(classifier=model, classifier_vars=variables)
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(0), HR,
                                               axis_name=None)
  rng = np.random.default_rng(1)
  batch = {'hr': rng.integers(0, 256, (4, HR, HR, 3), dtype=np.uint8),
           'lr': rng.integers(0, 256, (4, HR // 4, HR // 4, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, (4,)).astype(np.int32)}
  grads, (sr, _, metrics) = jax.jit(jax.grad(
      lambda params: steps.generator_loss(params, g_state, d_state, batch, frozen,
                                          config=config, adversarial=False),
      has_aux=True))(g_state.params)
  assert sr.shape == (4, HR, HR, 3)
  assert float(metrics['auxiliary']) > 0 and 'content' in metrics
  norms = [float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > len(norms) // 2


# ----------------------------------------------------------------------------- checks, no run


def test_cifar10_config_validates_and_names_its_fid():
  config = cifar10_cnn.get_config()
  validation.validate_config(config, 1)
  assert validation.is_labelled_whole(config.data) and not validation.is_mnist(config.data)
  assert validation.needs_guide(config)
  assert evaluate.fid_name(config.data) == 'judge-FID'
  assert evaluate.fid_name(default.get_config().data) == 'digit-FID'


@pytest.mark.parametrize('overrides,match', [
    ({'data.hr_crop': 16}, 'not random crops'),
    ({'data.hr_crop': 16, 'loss.auxiliary': 'none'}, 'judge classifier.*not random crops'),
    ({'data.source': 'folder', 'data.train_dir': '/x', 'data.test_dir': '/y',
      'data.hr_crop': 16}, 'no class labels'),
    ({'data.source': 'skimage', 'data.hr_crop': 16, 'task': 'classifier'},
     'labelled tfds dataset of whole images'),
    ({'data.num_classes': 1}, 'data.num_classes = 1'),
])
def test_classifiers_refused_where_they_cannot_apply(overrides, match):
  config = cifar10_cnn.get_config()
  for key, value in overrides.items():
    config_utils.set_field(config, key, value)
  with pytest.raises(errors.ConfigError, match=match):
    validation.validate_config(config, 1)


def test_number_of_classes_from_the_config_or_tfds_metadata():
  config = cifar10_cnn.get_config()
  labels = np.arange(10, dtype=np.int32)
  assert classifier_train.dataset_num_classes(config, labels) == 10
  config.data.num_classes = 0
  config.data.name = 'cifar100'  # the tfds label feature's num_classes, not max + 1.
  with conftest.tfds_scratch():
    assert classifier_train.dataset_num_classes(config, labels) == 100
  config.data.num_classes = 5
  with pytest.raises(errors.ConfigError, match='outside the 5 classes'):
    classifier_train.dataset_num_classes(config, labels)


def test_old_mnist_checkpoints_restore_at_28x28_with_10_classes():
  assert inference.classifier_image_size({}) == (28, 28)
  assert inference.classifier_num_classes({}) == 10
  assert inference.classifier_image_size({'image_size': [32, 32]}) == (32, 32)
  model = models.create_classifier('lenet', num_classes=7)
  template = models.classifier_template(model, 3, (32, 24))
  assert template['params']['Dense_0']['kernel'].shape == (8 * 6 * 64, 256)
  assert template['params']['Dense_1']['kernel'].shape == (256, 7)


def test_random_hflip_mirrors_whole_images():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4, 5, 3)), jnp.float32)
  out = np.asarray(classifier_train.random_hflip(images, jax.random.PRNGKey(0)))
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, np.asarray(images))]
  kept = [np.array_equal(o, i) for o, i in zip(out, np.asarray(images))]
  assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 16
