"""The study runner on a tiny budget: tables, curves and grid written; finished runs skipped."""

import csv
import io
import os

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
from PIL import Image
import pytest

from configs import mnist_srgan
from srgan_jax import classifier_train
from srgan_jax import study
from srgan_jax import train
from tests.conftest import make_tiny_config

# The budget fields are the study's (BUDGETS); everything else comes from the tiny config.
_BUDGET_FIELDS = ('pretrain_steps', 'num_train_steps', 'log_every_steps', 'eval_every_steps',
                  'checkpoint_every_steps')
TINY = {k: v for k, v in study._diff(mnist_srgan.get_config().to_dict(),
                                      make_tiny_config().to_dict()).items()
        if k not in _BUDGET_FIELDS}


def shrink(config):
  """conftest.make_tiny_config's sizes applied to any arm's config."""
  for key, value in TINY.items():
    study._set(config, key, value)
  return config


@pytest.fixture
def compile_cache(tmp_path):
  """A persistent XLA cache for this test: the runs compile the same programs (data, eval,
  state init, inference) again, and on busy CPUs compilation is most of the test's time."""
  options = {'jax_compilation_cache_dir': str(tmp_path / 'jax_cache'),
             'jax_persistent_cache_min_compile_time_secs': 0.0,
             'jax_persistent_cache_min_entry_size_bytes': 0}
  saved = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_configs_share_budget_and_networks_and_x2_is_the_seed_setting(tmp_path):
  workdir = str(tmp_path)
  configs = {(arm, scale): study.build_config(arm, scale, 1, workdir)
             for arm in study.ARMS for scale in (4, 2)}
  for scale in (4, 2):
    budget = study.BUDGETS[scale]
    for arm in study.ARMS:
      c = configs[arm, scale]
      assert c.seed == 1 and c.data.scale == scale
      assert c.pretrain_steps + c.num_train_steps == budget.total_steps
      assert c.num_train_steps == (0 if arm == 'srresnet' else budget.num_train_steps)
      assert c.data.eval_examples == study.EVAL_EXAMPLES
      assert c.eval.judge_workdir == os.path.join(workdir, f'x{scale}', 'judge')
      assert c.loss.classifier_workdir == os.path.join(workdir, f'x{scale}', 'classifier')
      assert budget.total_steps // budget.eval_every_steps >= 5
  x2 = configs['cnn_0.1', 2]
  assert (x2.data.channels, x2.data.train_examples, x2.batch_size) == (3, 20000, 128)
  assert configs['cnn_0.1', 4].data.channels == 1
  assert configs['cnn_pseudo', 4].loss.auxiliary_labels == 'pseudo'
  assert configs['cnn_0.001', 4].loss.auxiliary_weight == 0.001
  assert configs['acgan', 2].loss.auxiliary == 'discriminator_head'
  assert configs['perceptual', 2].loss.content == 'classifier'
  assert configs['srgan', 4].loss.adversarial == 'lsgan'
  # The study's protocol, whatever the main job's configs choose: the guide's loss from the
  # first step (as in the seed), and the published guide's 2 epochs.
  for arm in ('cnn_0.001', 'cnn_0.1', 'cnn_pseudo', 'perceptual'):
    assert configs[arm, 4].loss.auxiliary_during_pretrain, arm
  assert not configs['acgan', 4].loss.auxiliary_during_pretrain
  assert study.classifier_config(4, workdir).classifier.num_epochs == study.CLASSIFIER_EPOCHS == 2
  with pytest.raises(study.StudyError):
    study.build_config('nope', 4, 0, workdir)


def test_steps_to_threshold_and_summary():
  assert study.first_step_reaching({10: 0.5, 20: 0.91, 30: 0.96}, 0.9) == 20
  assert study.first_step_reaching({10: 0.5, 20: None}, 0.9) is None
  runs = {'a': {0: {'summary': {'psnr_sr': 20.0, 'ssim_sr': 0.8, 'judge_accuracy_sr': 0.9,
                                'fid_sr': 3.0, 'step': 30, 'psnr_bicubic': 15.0,
                                'judge_accuracy_hr': 0.99},
                    'judge': {10: 0.5, 20: 0.92}, 'psnr': {10: 18.0, 20: 20.0}},
                1: {'summary': {'psnr_sr': 22.0, 'ssim_sr': 0.9, 'judge_accuracy_sr': 0.96,
                                'fid_sr': 1.0, 'step': 30, 'psnr_bicubic': 15.0,
                                'judge_accuracy_hr': 0.99},
                    'judge': {10: 0.9, 20: 0.96}, 'psnr': {10: 20.0, 20: 22.0}}}}
  rows, refs, curves = study.summarise(runs)
  (row,) = rows
  assert row['psnr'][0] == pytest.approx(21.0) and row['psnr'][1] == pytest.approx(2 ** 0.5)
  assert row['steps_to_0.9'] == (15.0, 2) and row['steps_to_0.95'] == (20.0, 1)
  assert curves['a']['judge'] == {10: pytest.approx(0.7), 20: pytest.approx(0.94)}
  steps_md = study.steps_markdown(rows)
  assert '| a | 15 | 20 (1/2 seeds) |' in steps_md
  table = study.results_markdown(rows, refs)
  assert '| SR: a | 21.00 ± 1.41 |' in table and '| HR | inf |' in table
  parsed = list(csv.DictReader(io.StringIO(study.results_csv(rows, refs))))
  assert [r['arm'] for r in parsed] == ['HR', 'bicubic', 'a']
  assert float(parsed[2]['psnr_mean']) == pytest.approx(21.0)


def test_study_writes_tables_curves_grid_and_skips_finished_runs(tmp_path, monkeypatch,
                                                                 compile_cache):
  # srresnet: 4 content-loss steps; cnn_0.1: 4 GAN steps (no pretraining: one compile less).
  monkeypatch.setitem(study.BUDGETS, 4, study.Budget(pretrain_steps=0, num_train_steps=4,
                                                     eval_every_steps=2))
  workdir, publish = str(tmp_path / 'study'), str(tmp_path / 'results')
  arms = ['srresnet', 'cnn_0.1']
  reports = study.run_study(workdir, scales=[4], seeds=[0], arms=arms, publish_dir=publish,
                            override_fn=shrink)
  report = reports[4]
  assert not report['missing']
  for name in ('study_x4.md', 'study_x4.csv', 'runs_x4.csv', 'curves_x4.csv',
               'judge_accuracy_x4.png', 'psnr_x4.png', 'samples_x4.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
    assert os.path.exists(os.path.join(publish, name)), name
  for arm in arms:
    assert os.path.exists(os.path.join(workdir, 'x4', arm, 'seed0', 'results.json'))
  assert os.path.exists(os.path.join(workdir, 'x4', 'judge', 'checkpoints'))
  assert os.path.exists(os.path.join(workdir, 'x4', 'classifier', 'checkpoints'))

  table = _csv(os.path.join(publish, 'study_x4.csv'))
  assert [r['arm'] for r in table] == ['HR', 'bicubic'] + arms
  for r in table:
    assert np.isfinite(float(r['judge_accuracy_mean']))
    assert float(r['psnr_mean']) > 0
  assert table[2]['steps_to_judge_0.9_mean'] == 'not reached' or float(
      table[2]['steps_to_judge_0.9_mean']) in (2, 4)
  curves = _csv(os.path.join(publish, 'curves_x4.csv'))
  assert sorted((r['arm'], int(r['step'])) for r in curves) == [
      ('cnn_0.1', 2), ('cnn_0.1', 4), ('srresnet', 2), ('srresnet', 4)]
  md = open(os.path.join(publish, 'study_x4.md')).read()
  assert 'python -m srgan_jax.study' in md and '--arms=srresnet,cnn_0.1' in md
  assert '| SR: srresnet |' in md and '| SR: cnn_0.1 |' in md and '| HR |' in md
  assert '## Steps to judge accuracy' in md and 'samples_x4.png' in md
  for name in ('judge_accuracy_x4.png', 'psnr_x4.png', 'samples_x4.png'):
    with Image.open(os.path.join(publish, name)) as im:
      assert im.size[0] > 100 and im.size[1] > 100

  # Again: every run and classifier is finished, so nothing trains; the reports are rewritten.
  results = os.path.join(workdir, 'x4', 'srresnet', 'seed0', 'results.json')
  mtime = os.stat(results).st_mtime_ns

  def fail(*args, **kwargs):
    raise AssertionError('a finished run was trained again')
  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  monkeypatch.setattr(classifier_train, 'train_and_evaluate', fail)
  os.remove(os.path.join(publish, 'study_x4.csv'))
  study.run_study(workdir, scales=[4], seeds=[0], arms=arms, publish_dir=publish,
                  override_fn=shrink)
  assert os.stat(results).st_mtime_ns == mtime
  assert os.path.exists(os.path.join(publish, 'study_x4.csv'))

  # Another budget in the same workdir is an error, not a silent mix.
  with pytest.raises(study.StudyError, match='other settings'):
    study.run_study(workdir, scales=[4], seeds=[0], arms=arms, publish_dir=publish,
                    override_fn=shrink, steps_scale=2.0)
