"""The pretrained classifier, the auxiliary classifier loss, the AC-GAN head and the judge."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import targets
from configs import mnist_cnn
from configs import mnist_srgan
from srgan_jax import checkpoints
from srgan_jax import classifier_train
from srgan_jax import config_utils
from srgan_jax import conv_tuning
from srgan_jax import errors
from srgan_jax import image_ops
from srgan_jax import inference
from srgan_jax import input_pipeline
from srgan_jax import losses
from srgan_jax import models
from srgan_jax import state as state_lib
from srgan_jax import steps
from srgan_jax import train
from srgan_jax import validation
from tests.conftest import make_tiny_config


def test_mnist_cnn_is_mnist_srgan_plus_the_classifier_loss():
  cnn = mnist_cnn.get_config()
  diff = config_utils.diff(mnist_srgan.get_config().to_dict(), cnn.to_dict())
  # The SRGAN itself (networks, losses, optimizer, budget) is mnist_srgan's; only the guide's
  # loss, the judge and the guide's epochs are added.
  assert diff == {'loss.auxiliary': 'classifier', 'eval.judge_workdir': 'judge',
                  'classifier.num_epochs': 1}
  assert (cnn.loss.auxiliary_weight, cnn.loss.auxiliary_labels) == (0.1, 'true')


def test_one_command_trains_classifier_and_judge_first(one_command_run):
  config, workdir, summary, _ = one_command_run
  assert checkpoints.has_checkpoint(os.path.join(workdir, 'classifier'))
  assert checkpoints.has_checkpoint(os.path.join(workdir, 'judge'))
  for key in ('judge_accuracy_hr', 'judge_accuracy_bicubic', 'judge_accuracy_sr', 'fid_sr',
              'fid_bicubic', 'psnr_sr', 'ssim_sr'):
    assert np.isfinite(summary[key]), key
  with open(os.path.join(workdir, 'results.md')) as f:
    table = f.read()
  assert 'judge accuracy' in table and 'digit-FID' in table and 'bicubic' in table
  assert config.loss.auxiliary == 'classifier'


def test_one_command_tunes_every_network_at_once_before_training(one_command_run):
  """The guide's, the judge's and the SRGAN's convs are timed in one tuning, before the guide
  trains; the classifiers' and the SRGAN's own tunings then find their decisions cached."""
  first, *later = one_command_run.tunings
  assert first[0].startswith('Conv tuning: ')
  measured = {line.split(' (measured)')[0] for line in first if '(measured)' in line}
  assert measured >= {'Convs tuned for the seed_cnn classifier',
                      'Convs tuned for the lenet classifier', 'Convs tuned for the generator',
                      'Convs tuned for the discriminator'}
  # The guide's training, the judge's, then the SRGAN's.
  assert [lines[0].split(' (')[0] for lines in later] == [
      'Convs tuned for the seed_cnn classifier', 'Convs tuned for the lenet classifier',
      'Convs tuned for the generator']
  assert all('(cached)' in line for lines in later for line in lines)


def test_benchmarks_targets_reads_the_main_jobs_figures(one_command_run):
  """benchmarks.targets on the shrunk main job: its results.json and tuning log lines, against
  each target."""
  log = '\n'.join(line for lines in one_command_run.tunings for line in lines)
  figures = targets.main_job_figures(one_command_run.workdir, log, seconds=61.0)
  with open(os.path.join(one_command_run.workdir, 'results.json')) as f:
    results = json.load(f)
  assert figures['judge_accuracy_sr'] == results['judge_accuracy_sr']
  assert figures['psnr_sr'] == results['psnr_sr'] and figures['ssim_sr'] == results['ssim_sr']
  assert 0 < figures['tuning_seconds'] < 60  # Its tuning ran: an empty cache at the start.
  rows = {r['target'].split(' ')[0]: r for r in targets.judge({'main': figures})}
  assert rows['main']['met'] is True and rows['main']['figure'] == '1 min 01 s'
  assert rows['judge']['met'] == (results['judge_accuracy_sr'] >= 0.98)
  assert rows['PSNR']['met'] == (results['psnr_sr'] >= results['psnr_bicubic'] + 7)
  assert rows['conv']['met'] == (figures['tuning_seconds'] < 10)
  late = targets.judge({'main': {**figures, 'seconds': 15 * 60 + 1}})
  assert late[0]['met'] is False and late[0]['figure'] == '15 min 01 s'
  assert targets.judge({'main': {**figures, 'seconds': 479.6}})[0]['figure'] == '8 min 00 s'
  assert targets.judge({'main': {**figures, 'peak_rss_mib': 2355.2}})[0]['figure'] == (
      '1 min 01 s, peak RSS 2.3 GiB')
  assert targets.tuning_seconds('Convs tuned for the generator (cached): ...') is None
  with pytest.raises(targets.TargetsError, match='results.json'):
    targets.main_job_figures(os.path.dirname(one_command_run.workdir), log, seconds=1.0)


def test_a_guide_that_cannot_be_trained_is_reported_before_any_tuning(tmp_path, monkeypatch):
  config = make_tiny_config(conv_implementation='tuned')
  config.loss = mnist_cnn.get_config().loss
  config.classifier.validation_examples = 10 ** 9

  def tune(*args, **kwargs):
    raise AssertionError('the convs were tuned before the data were checked')
  monkeypatch.setattr(conv_tuning, 'tune', tune)
  with pytest.raises(errors.ConfigError, match='classifier.validation_examples = 1000000000'):
    train.train_and_evaluate(config, str(tmp_path))


def test_classifier_checkpoint_restores_and_judge_is_not_the_guide(one_command_run):
  config, workdir, _, _ = one_command_run
  guide, guide_vars, extra = inference.restore_classifier(os.path.join(workdir, 'classifier'))
  judge, judge_vars, _ = inference.restore_classifier(os.path.join(workdir, 'judge'))
  assert 0.0 <= extra['test_accuracy'] <= 1.0
  assert isinstance(guide, models.Classifier) and isinstance(judge, models.LeNetJudge)
  assert jax.tree_util.tree_structure(guide_vars) != jax.tree_util.tree_structure(judge_vars)
  _, saved_guide, _ = checkpoints.read_config(os.path.join(workdir, 'classifier'))
  _, saved_judge, _ = checkpoints.read_config(os.path.join(workdir, 'judge'))
  assert saved_guide['seed'] != saved_judge['seed']
  assert saved_guide['classifier']['num_epochs'] == config.classifier.num_epochs == 1
  assert saved_judge['classifier']['num_epochs'] == config.eval.judge_epochs == 2
  # The restored variables are the ones whose test accuracy was recorded (same test images).
  split = input_pipeline.load_split(make_tiny_config(), 'test')
  acc = classifier_train.accuracy(guide, guide_vars, split, 32, jax.local_devices()[:1])
  assert acc == pytest.approx(extra['test_accuracy'])


def _frozen_classifier(config, seed=0):
  model = models.create_classifier('seed_cnn')
  variables = jax.jit(model.init)(jax.random.PRNGKey(seed),
                                  jnp.zeros((1, 28, 28, config.data.channels)))
  return steps.Frozen(classifier=model, classifier_vars=variables)


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {'hr': rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
          'lr': rng.integers(0, 256, (n, 7, 7, 1), dtype=np.uint8),
          'label': rng.integers(0, 10, (n,)).astype(np.int32)}


def test_auxiliary_gradient_reaches_generator_and_classifier_stays_fixed():
  config = make_tiny_config(**{'loss.auxiliary': 'classifier', 'loss.content_weight': 0.0,
                               'loss.auxiliary_during_pretrain': True})
  frozen = _frozen_classifier(config)
  before = jax.device_get(frozen.classifier_vars)
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(0), axis_name=None)
  # Jitted (one compilation each; op by op, these passes took 20 s).
  grad_fn = jax.jit(lambda params, g, d, batch: jax.grad(steps.generator_loss, has_aux=True)(
      params, g, d, batch, frozen, config=config, adversarial=False))
  grads, (_, _, metrics) = grad_fn(g_state.params, g_state, d_state, _batch())
  norm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads))
  assert norm > 0 and float(metrics['auxiliary']) > 0
  step_fn = jax.jit(lambda g, d, batch: steps.generator_step(
      g, d, batch, frozen, config=config, adversarial=False, axis_name=None))
  new_g, _, _ = step_fn(g_state, d_state, _batch())
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(new_g.params), jax.tree_util.tree_leaves(g_state.params)))
  after = jax.device_get(frozen.classifier_vars)
  jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)


def test_pseudo_labels_are_the_classifier_argmax_on_hr():
  config = make_tiny_config(**{'loss.auxiliary': 'classifier', 'loss.auxiliary_labels': 'pseudo',
                               'loss.content_weight': 0.0, 'loss.auxiliary_weight': 1.0,
                               'loss.auxiliary_during_pretrain': True})
  frozen = _frozen_classifier(config)
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(0), axis_name=None)
  batch = _batch()
  loss, (sr, _, _) = jax.jit(lambda params, g, d, b: steps.generator_loss(
      params, g, d, b, frozen, config=config, adversarial=False))(
          g_state.params, g_state, d_state, batch)
  hr = image_ops.to_model_range(batch['hr'])
  classify = jax.jit(frozen.classifier.apply)  # One program, not one an operation.
  hr_logits, _ = classify(frozen.classifier_vars, hr)
  sr_logits, _ = classify(frozen.classifier_vars, sr)
  expected = losses.auxiliary_classifier_loss(sr_logits, jnp.argmax(hr_logits, -1))
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  with_true = losses.auxiliary_classifier_loss(sr_logits, batch['label'])
  assert abs(float(with_true) - float(expected)) > 1e-6  # Random labels differ from argmax.


def test_acgan_discriminator_head_losses():
  config = make_tiny_config(**{'loss.auxiliary': 'discriminator_head'})
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(0), axis_name=None)
  batch = _batch()
  _, (sr, _, metrics) = jax.jit(lambda params, g, d, b: steps.generator_loss(
      params, g, d, b, steps.Frozen(), config=config, adversarial=True))(
          g_state.params, g_state, d_state, batch)
  # Chance-level cross-entropy at initialisation is about log(10).
  assert 0.5 < float(metrics['auxiliary']) < 10
  _, d_metrics = jax.jit(lambda d, b, x: steps.discriminator_step(
      d, b, x, config=config, axis_name=None))(d_state, batch, sr)
  assert float(d_metrics['discriminator']) == pytest.approx(
      float(d_metrics['discriminator_adversarial'] + d_metrics['discriminator_auxiliary']),
      rel=1e-5)
  logits, class_logits = d_state.apply_fn(
      {'params': d_state.params, 'batch_stats': d_state.batch_stats}, sr)
  assert class_logits.shape == (8, 10) and logits.shape[0] == 8


def test_classifier_for_another_channel_count_is_a_clear_error(one_command_run, tmp_path):
  _, workdir, _, _ = one_command_run
  config = make_tiny_config(**{'loss.auxiliary': 'classifier', 'data.channels': 3,
                               'loss.classifier_workdir': os.path.join(workdir, 'classifier'),
                               'eval.judge_workdir': ''})
  with pytest.raises(errors.CheckpointError, match='data.channels') as e:
    train.train_and_evaluate(config, str(tmp_path / 'rgb'))
  assert 'classifier' in str(e.value)


def test_classifier_checkpoint_with_missing_files_is_a_clear_error(one_command_run, tmp_path):
  _, workdir, _, _ = one_command_run
  broken = tmp_path / 'classifier'
  shutil.copytree(os.path.join(workdir, 'classifier'), broken)
  for step_dir in (broken / 'checkpoints').iterdir():
    shutil.rmtree(step_dir / 'model')  # the weights are gone; config and metadata remain.
  config = make_tiny_config(**{'loss.auxiliary': 'classifier', 'loss.classifier_workdir':
                               str(broken), 'eval.judge_workdir': ''})
  run = tmp_path / 'run'
  with pytest.raises(errors.CheckpointError, match='No usable checkpoint') as e:
    train.train_and_evaluate(config, str(run))
  assert str(broken) in str(e.value) and 'Delete the directory' in str(e.value)
  assert not (run / 'checkpoints').exists()  # raised before any SRGAN work.


def test_labels_needed_but_missing_is_a_clear_error(tmp_path, monkeypatch):
  real = input_pipeline.load_split

  def unlabelled(config, split):
    s = real(config, split)
    return input_pipeline.Split(s.hr, s.lr, None)

  monkeypatch.setattr(input_pipeline, 'load_split', unlabelled)
  config = make_tiny_config(**{'loss.auxiliary': 'discriminator_head'})
  with pytest.raises(errors.ConfigError, match='labels'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_random_shift_translates_each_digit_within_bounds():
  images = jnp.full((6, 28, 28, 1), -1.0).at[:, 10:18, 12:16, :].set(1.0)  # a bar.
  shifted = classifier_train.random_shift(images, jax.random.PRNGKey(0), max_shift=2)
  assert shifted.shape == images.shape
  for orig, out in zip(np.asarray(images), np.asarray(shifted)):
    ys, xs = np.nonzero(out[..., 0] > 0)
    dy, dx = ys.min() - 10, xs.min() - 12
    assert abs(dy) <= 2 and abs(dx) <= 2
    np.testing.assert_array_equal(np.roll(orig, (dy, dx), axis=(0, 1)), out)
  assert not np.array_equal(np.asarray(shifted), np.asarray(images))  # some moved.
  np.testing.assert_array_equal(classifier_train.random_shift(images, None, 0), images)


def test_classifier_recipe_schedule_and_polyak_average():
  config = make_tiny_config(**{'task': 'classifier', 'classifier.learning_rate': 1e-2,
                               'classifier.warmup_fraction': 0.1})
  schedule = classifier_train.learning_rate_schedule(config, 100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(1e-2)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
  # The Polyak average follows the parameters, more slowly than they move.
  ema = state_lib.ema_update({'w': jnp.zeros(())}, {'w': jnp.ones(())}, 0.99, 1000)
  assert float(ema['w']) == pytest.approx(0.01)
  # Early on the warm-up keeps it from staying anchored at the initialisation.
  assert float(state_lib.ema_update({'w': jnp.zeros(())}, {'w': jnp.ones(())}, 0.99, 0)['w']) == (
      pytest.approx(0.9))


@pytest.mark.parametrize('field,value', [('warmup_fraction', 1.0), ('ema_decay', -0.1),
                                         ('max_shift', -1), ('num_epochs', 0)])
def test_bad_classifier_recipe_is_a_clear_error(field, value):
  config = make_tiny_config(**{'task': 'classifier', f'classifier.{field}': value})
  with pytest.raises(errors.ConfigError, match=f'classifier.{field}'):
    validation.validate_config(config, 1)
