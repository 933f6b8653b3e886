"""The study runner on a tiny budget: tables, curves and grid written; finished runs skipped."""

import csv
import io
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from configs import mnist_srgan
from experiments.study import arms as study_arms
from experiments.study import plots
from experiments.study import report
from experiments.study import runner
from srgan_jax import classifier_train
from srgan_jax import config_utils
from srgan_jax import train
from srgan_jax import writers
from tests.conftest import make_tiny_config

# The budget fields are the study's (BUDGETS); everything else comes from the tiny config.
_BUDGET_FIELDS = ('pretrain_steps', 'num_train_steps', 'log_every_steps', 'eval_every_steps',
                  'checkpoint_every_steps')
TINY = {k: v for k, v in config_utils.diff(mnist_srgan.get_config().to_dict(),
                                            make_tiny_config().to_dict()).items()
        if k not in _BUDGET_FIELDS}


def shrink(config):
  """conftest.make_tiny_config's sizes applied to any arm's config."""
  for key, value in TINY.items():
    config_utils.set_field(config, key, value)
  return config


def _csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_configs_share_budget_and_networks_and_x2_is_the_seed_setting(tmp_path):
  workdir = str(tmp_path)
  configs = {(arm, scale): study_arms.build_config(arm, scale, 1, workdir)
             for arm in study_arms.ARMS for scale in (4, 2)}
  for scale in (4, 2):
    budget = study_arms.BUDGETS[scale]
    for arm in study_arms.ARMS:
      c = configs[arm, scale]
      assert c.seed == 1 and c.data.scale == scale
      assert c.pretrain_steps + c.num_train_steps == budget.total_steps
      assert c.num_train_steps == (0 if arm == 'srresnet' else budget.num_train_steps)
      assert c.data.eval_examples == study_arms.EVAL_EXAMPLES
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
  epochs = study_arms.classifier_config(4, workdir).classifier.num_epochs
  assert epochs == study_arms.CLASSIFIER_EPOCHS == 2
  with pytest.raises(study_arms.StudyError):
    study_arms.build_config('nope', 4, 0, workdir)


def test_steps_to_threshold_and_summary():
  assert report.first_step_reaching({10: 0.5, 20: 0.91, 30: 0.96}, 0.9) == 20
  assert report.first_step_reaching({10: 0.5, 20: None}, 0.9) is None
  runs = {'a': {0: {'summary': {'psnr_sr': 20.0, 'ssim_sr': 0.8, 'judge_accuracy_sr': 0.9,
                                'fid_sr': 3.0, 'step': 30, 'psnr_bicubic': 15.0,
                                'judge_accuracy_hr': 0.99},
                    'judge': {10: 0.5, 20: 0.92}, 'psnr': {10: 18.0, 20: 20.0}},
                1: {'summary': {'psnr_sr': 22.0, 'ssim_sr': 0.9, 'judge_accuracy_sr': 0.96,
                                'fid_sr': 1.0, 'step': 30, 'psnr_bicubic': 15.0,
                                'judge_accuracy_hr': 0.99},
                    'judge': {10: 0.9, 20: 0.96}, 'psnr': {10: 20.0, 20: 22.0}}}}
  rows, refs, curves = report.summarise(runs)
  (row,) = rows
  assert row['psnr'][0] == pytest.approx(21.0) and row['psnr'][1] == pytest.approx(2 ** 0.5)
  assert row['steps_to_0.9'] == (15.0, 2) and row['steps_to_0.95'] == (20.0, 1)
  assert curves['a']['judge'] == {10: pytest.approx(0.7), 20: pytest.approx(0.94)}
  steps_md = report.steps_markdown(rows)
  assert '| a | 15 | 20 (1/2 seeds) |' in steps_md
  table = report.results_markdown(rows, refs)
  assert '| SR: a | 21.00 ± 1.41 |' in table and '| HR | inf |' in table
  parsed = list(csv.DictReader(io.StringIO(report.results_csv(rows, refs))))
  assert [r['arm'] for r in parsed] == ['HR', 'bicubic', 'a']
  assert float(parsed[2]['psnr_mean']) == pytest.approx(21.0)


def _files_under(path):
  """relative path -> (mtime_ns, size) of every file below `path`."""
  out = {}
  for root, _, names in os.walk(path):
    for name in names:
      st = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), path)] = (st.st_mtime_ns, st.st_size)
  return out


def _judge_curve(run_path):
  return {int(r['step']): r['eval/judge_accuracy_sr'] for r in writers.read_metrics(run_path)
          if 'eval/judge_accuracy_sr' in r}


def test_study_writes_tables_curves_grid_and_skips_finished_runs(tmp_path, monkeypatch,
                                                                 one_command_run):
  # srresnet: 4 content-loss steps; cnn_0.1: 4 GAN steps (no pretraining: one compile less).
  monkeypatch.setitem(study_arms.BUDGETS, 4, study_arms.Budget(
      pretrain_steps=0, num_train_steps=4, eval_every_steps=2))
  # A tiny judge never reaches 90%; threshold 0 is reached at the first evaluation (step 2).
  monkeypatch.setattr(report, 'JUDGE_THRESHOLDS', (0.0, 0.9))
  workdir, publish = str(tmp_path / 'study'), str(tmp_path / 'results')
  arms = ['srresnet', 'cnn_0.1']
  # The session's tiny guide and judge stand in for the study's own (trained when missing,
  # which the one-command test covers): the study uses whatever its workdir holds.
  for role in ('classifier', 'judge'):
    shutil.copytree(os.path.join(one_command_run.workdir, role), os.path.join(workdir, 'x4', role))
  grids = []

  def plot_grid(names, rows, path, title):
    grids.append((names, [len(r) for r in rows]))
    return draw_grid(names, rows, path, title)
  draw_grid = plots.plot_grid
  monkeypatch.setattr(plots, 'plot_grid', plot_grid)
  reports = runner.run_study(workdir, scales=[4], seeds=[0], arms=arms, publish_dir=publish,
                             override_fn=shrink)
  assert not reports[4]['missing']
  names = ('study_x4.md', 'study_x4.csv', 'runs_x4.csv', 'curves_x4.csv',
           'judge_accuracy_x4.png', 'psnr_x4.png', 'samples_x4.png')
  for name in names:
    with open(os.path.join(workdir, name), 'rb') as f, open(os.path.join(publish, name),
                                                            'rb') as g:
      assert f.read() == g.read(), name
  run_paths = {arm: os.path.join(workdir, 'x4', arm, 'seed0') for arm in arms}
  for path in run_paths.values():
    assert os.path.exists(os.path.join(path, 'results.json'))
  assert os.path.exists(os.path.join(workdir, 'x4', 'judge', 'checkpoints'))
  assert os.path.exists(os.path.join(workdir, 'x4', 'classifier', 'checkpoints'))

  # The tables and curves say what each run's own metrics say.
  curves_of = {arm: _judge_curve(path) for arm, path in run_paths.items()}
  for arm in arms:
    assert sorted(curves_of[arm]) == [2, 4], arm
  table = _csv(os.path.join(publish, 'study_x4.csv'))
  assert [r['arm'] for r in table] == ['HR', 'bicubic'] + arms
  runs = _csv(os.path.join(publish, 'runs_x4.csv'))
  assert [(r['arm'], r['seed'], r['step']) for r in runs] == [(a, '0', '4') for a in arms]
  for row, run in zip(table[2:], runs):
    curve = curves_of[row['arm']]
    assert float(row['judge_accuracy_mean']) == pytest.approx(curve[4], rel=1e-5)
    assert float(run['train_seconds']) > 0
    assert (run['steps_to_judge_0'], row['steps_to_judge_0_mean']) == ('2', '2')
    for t in ('0', '0.9'):
      reached = [s for s in sorted(curve) if curve[s] >= float(t)]
      want = str(reached[0]) if reached else 'not reached'
      assert run[f'steps_to_judge_{t}'] == want, (row['arm'], t)
      assert row[f'steps_to_judge_{t}_mean'] == want, (row['arm'], t)
      assert row[f'seeds_reaching_judge_{t}'] == str(len(reached[:1])), (row['arm'], t)
  for r in table:
    assert np.isfinite(float(r['judge_accuracy_mean']))
    assert float(r['psnr_mean']) > 0
  curves = _csv(os.path.join(publish, 'curves_x4.csv'))
  assert [(r['arm'], int(r['step'])) for r in curves] == [
      ('srresnet', 2), ('srresnet', 4), ('cnn_0.1', 2), ('cnn_0.1', 4)]
  for r in curves:
    assert float(r['judge_accuracy_sr']) == pytest.approx(
        curves_of[r['arm']][int(r['step'])], rel=1e-5)
  # The grid: LR, HR, bicubic, then one row per arm, each the first digit of every class.
  assert grids == [(['LR input', 'HR', 'bicubic'] + arms, [10] * 5)]
  with open(os.path.join(publish, 'study_x4.md')) as f:
    md = f.read()
  assert 'python -m experiments.study' in md and '--arms=srresnet,cnn_0.1' in md
  assert '| SR: srresnet |' in md and '| SR: cnn_0.1 |' in md and '| HR |' in md
  assert '## Steps to judge accuracy' in md and 'samples_x4.png' in md
  for name in ('judge_accuracy_x4.png', 'psnr_x4.png', 'samples_x4.png'):
    with Image.open(os.path.join(publish, name)) as im:
      assert im.size[0] > 100 and im.size[1] > 100

  # Again: every run and classifier is finished, so nothing trains and nothing of theirs is
  # written; the reports are written again, the same.
  before = _files_under(os.path.join(workdir, 'x4'))
  texts = {}
  for name in names[:4]:
    with open(os.path.join(publish, name)) as f:
      texts[name] = f.read()
    os.remove(os.path.join(publish, name))

  def fail(*args, **kwargs):
    raise AssertionError('a finished run or classifier was trained again')
  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  monkeypatch.setattr(classifier_train, 'train_and_evaluate', fail)
  runner.run_study(workdir, scales=[4], seeds=[0], arms=arms, publish_dir=publish,
                   override_fn=shrink)
  assert _files_under(os.path.join(workdir, 'x4')) == before
  for name, text in texts.items():
    with open(os.path.join(publish, name)) as f:
      assert f.read() == text, name

  # Another budget in the same workdir is an error, not a silent mix.
  with pytest.raises(study_arms.StudyError, match='other settings'):
    runner.run_study(workdir, scales=[4], seeds=[0], arms=arms, publish_dir=publish,
                     override_fn=shrink, steps_scale=2.0)
