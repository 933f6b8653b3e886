"""srgan_jax.inference and the upscale CLI, on a tiny generator trained once here and the
session's judge."""

import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from PIL import Image
import pytest

from srgan_jax import errors
from srgan_jax import image_ops
from srgan_jax import inference
from srgan_jax import input_pipeline
from srgan_jax import models
from srgan_jax import train
from srgan_jax import upscale as upscale_cli
from tests.conftest import make_tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_LR = 16


def _config(judge_workdir):
  # Pretraining only (the generator is all inference needs), a checkpoint at steps 2 and 4; an
  # EMA decay that makes the EMA parameters differ from both the initial and the raw ones.
  return make_tiny_config(pretrain_steps=4, num_train_steps=0, checkpoint_every_steps=2,
                          eval_every_steps=100, ema_decay=0.5,
                          **{'eval.judge_workdir': judge_workdir})


@pytest.fixture(scope='module')
def trained(tmp_path_factory, one_command_run):
  """A workdir with a tiny SRGAN generator, judged by the session's LeNet judge."""
  workdir = str(tmp_path_factory.mktemp('inference') / 'run')
  config = _config(os.path.join(one_command_run.workdir, 'judge'))
  train.train_and_evaluate(config, workdir)
  test = input_pipeline.load_split(config, 'test')
  return types.SimpleNamespace(workdir=workdir, judge=config.eval.judge_workdir, config=config,
                               lr=test.lr[:NUM_LR, ..., 0],
                               hr=test.hr, labels=test.labels)


@pytest.fixture(scope='module')
def upscaler(trained):
  return inference.load_generator(trained.workdir)


def _expected_sr(trained, lr_uint8):
  """SR of the trained generator applied in-process: float32 [0, 1], (N, H, W, 1).

  The variables come from the training state itself (train.inference_variables of the
  restored generator state), not from the 'model' item load_generator reads.
  """
  state = ocp.PyTreeCheckpointer().restore(
      os.path.join(trained.workdir, 'checkpoints', '4', 'state'))
  variables = train.inference_variables(types.SimpleNamespace(**state['generator']))
  model = models.create_generator(trained.config)
  fn = jax.jit(lambda v, x: jnp.clip(image_ops.to_unit_range(
      model.apply(v, image_ops.to_model_range(x), train=False)), 0.0, 1.0))
  return np.asarray(fn(variables, lr_uint8[..., None])), variables


def _env():
  env = dict(os.environ)
  env.update(PYTHONPATH=REPO + os.pathsep + env.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # One CPU device, as a user would have.
  return env


def _run_all(commands, cwd):
  """Runs commands concurrently; returns their CompletedProcess-like results in order."""
  procs = [subprocess.Popen(c, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for c in commands]
  out = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=300)
    out.append(types.SimpleNamespace(returncode=p.returncode, stdout=stdout, stderr=stderr))
  return out


# ---------------------------------------------------------------------------------------------
# load_generator


def test_model_item_is_the_ema_of_the_training_state(trained):
  _, variables = _expected_sr(trained, trained.lr[:1])
  model_item = ocp.PyTreeCheckpointer().restore(
      os.path.join(trained.workdir, 'checkpoints', '4', 'model'))
  jax.tree.map(np.testing.assert_array_equal, model_item, variables)
  state = ocp.PyTreeCheckpointer().restore(
      os.path.join(trained.workdir, 'checkpoints', '4', 'state'))
  ema, raw = state['generator']['ema_params'], state['generator']['params']
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(raw)))


def test_load_generator_in_a_fresh_process_reproduces_training(trained, tmp_path):
  np.save(tmp_path / 'lr.npy', trained.lr)
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from srgan_jax.inference import load_generator
      up = load_generator({trained.workdir!r})
      for name in ('configs', 'srgan_jax.train', 'srgan_jax.classifier_train'):
        assert name not in sys.modules, name + ' was imported'
      assert (up.scale, up.channels, up.step) == (4, 1, 4), (up.scale, up.channels, up.step)
      assert up.config.generator.features == 8 and up.config.data.scale == 4
      lr = np.load('lr.npy')
      np.save('sr_uint8.npy', up.upscale(lr))
      np.save('sr_float.npy', up.upscale(lr.astype(np.float32) / 255.0))
      print('OK')
  """)
  (result,) = _run_all([[sys.executable, '-c', script]], cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'OK' in result.stdout
  expected, _ = _expected_sr(trained, trained.lr)
  sr_uint8 = np.load(tmp_path / 'sr_uint8.npy')
  sr_float = np.load(tmp_path / 'sr_float.npy')
  assert sr_uint8.shape == sr_float.shape == (NUM_LR, 28, 28)
  assert sr_uint8.dtype == np.uint8 and sr_float.dtype == np.float32
  # uint8 input goes through exactly the training code path: the same numbers, up to float
  # rounding (XLA:CPU's Eigen convs block their work by the threads a device gets, which
  # depends on the device count: 1 there, 4 here), so at most one grey level at a boundary.
  want = np.clip(np.round(expected[..., 0] * 255.0), 0, 255).astype(np.int16)
  off = np.abs(sr_uint8.astype(np.int16) - want)
  assert off.max() <= 1 and np.mean(off > 0) < 1e-3, (off.max(), np.mean(off > 0))
  np.testing.assert_allclose(sr_float, expected[..., 0], atol=1e-5)


def test_load_generator_steps_and_errors(trained, tmp_path):
  assert inference.load_generator(trained.workdir, step=2).step == 2
  with pytest.raises(errors.CheckpointError, match=r'No checkpoint at step 3.*\[2, 4\]'):
    inference.load_generator(trained.workdir, step=3)
  with pytest.raises(errors.CheckpointError, match='No checkpoint in'):
    inference.load_generator(str(tmp_path / 'nothing'))
  with pytest.raises(errors.CheckpointError, match='not a generator.*load_classifier'):
    inference.load_generator(trained.judge)


# ---------------------------------------------------------------------------------------------
# Upscaler.upscale: layouts, dtypes, sizes, batching


def test_upscale_layouts_and_dtypes(upscaler, trained):
  lr = trained.lr[:5]
  batch = upscaler.upscale(lr)
  assert batch.shape == (5, 28, 28) and batch.dtype == np.uint8
  one = upscaler.upscale(lr[2])
  assert one.shape == (28, 28) and one.dtype == np.uint8
  np.testing.assert_array_equal(one, batch[2])
  nhwc = upscaler.upscale(lr[..., None])
  assert nhwc.shape == (5, 28, 28, 1) and nhwc.dtype == np.uint8
  np.testing.assert_array_equal(nhwc[..., 0], batch)
  as_list = upscaler.upscale(list(lr))
  np.testing.assert_array_equal(as_list, batch)

  as_float = upscaler.upscale(lr.astype(np.float64) / 255.0)
  assert as_float.shape == (5, 28, 28) and as_float.dtype == np.float32
  assert 0.0 <= as_float.min() and as_float.max() <= 1.0
  assert np.abs(np.round(as_float * 255.0) - batch).max() <= 1
  single_float = upscaler.upscale((lr[0] / 255.0).astype(np.float32)[..., None][None])
  assert single_float.shape == (1, 28, 28, 1) and single_float.dtype == np.float32

  empty = upscaler.upscale(np.zeros((0, 7, 7), np.uint8))
  assert empty.shape == (0, 28, 28) and empty.dtype == np.uint8


def test_upscale_any_size(upscaler):
  rng = np.random.default_rng(0)
  odd = rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)
  out = upscaler.upscale(odd)
  assert out.shape == (3, 36, 44)
  one = upscaler.upscale(odd[1])
  assert one.shape == (36, 44)
  np.testing.assert_array_equal(one, out[1])
  tall = upscaler.upscale(rng.random((13, 5)))
  assert tall.shape == (52, 20) and tall.dtype == np.float32


def test_upscale_in_batches_matches_one_batch(upscaler, trained):
  lr = np.concatenate([trained.lr] * 2)[:21]  # 21 images: 5 batches of 5, the last padded.
  whole = upscaler.upscale(lr.astype(np.float32) / 255.0, batch_size=256)
  batched = upscaler.upscale(lr.astype(np.float32) / 255.0, batch_size=5)
  assert batched.shape == whole.shape == (21, 28, 28)
  np.testing.assert_allclose(batched, whole, atol=1e-6)
  np.testing.assert_array_equal(upscaler.upscale(lr, batch_size=5)[:NUM_LR],
                                upscaler.upscale(trained.lr, batch_size=5))


@pytest.mark.parametrize('images, message', [
    (np.zeros(7, np.uint8), r'shape \(H, W\), \(N, H, W\) or \(N, H, W, C\); got shape \(7,\)'),
    (np.zeros((1, 2, 7, 7, 1), np.uint8), r'rank 5'),
    (np.zeros((2, 7, 7, 3), np.uint8), r'takes 1-channel images; got 3 channels.*greyscale'),
    (np.zeros((2, 7, 7, 2), np.float32), r'takes 1-channel images; got 2 channels.*x\[\.\.\., None\]'),
    (np.full((7, 7), np.nan, np.float32), r'49 pixel value\(s\) are NaN or infinite'),
    (np.array([[0.5, np.inf]]), r'NaN or infinite'),
    (np.full((2, 7, 7), 255.0), r'must be in \[0, 1\]; got values in \[255, 255\].*x / 255'),
    (np.full((2, 7, 7), -0.5), r'must be in \[0, 1\].*\(x \+ 1\) / 2'),
    (np.full((7, 7), 1.01), r'must be in \[0, 1\]'),
    (np.zeros((7, 7), np.int64), r'uint8 in \[0, 255\] or float in \[0, 1\]; got dtype int64'),
    (np.zeros((7, 7), bool), r'got dtype bool'),
    (np.zeros((2, 0, 7), np.uint8), r'empty side'),
])
def test_upscale_rejects_bad_input(upscaler, images, message):
  with pytest.raises(ValueError, match=message):
    upscaler.upscale(images)


def test_upscale_tolerates_float_rounding_and_checks_batch_size(upscaler):
  x = np.full((7, 7), 1.0 + 1e-4)
  x[0, 0] = -1e-4
  assert upscaler.upscale(x).shape == (28, 28)
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match='batch_size must be a positive integer'):
      upscaler.upscale(np.zeros((7, 7), np.uint8), batch_size=bad)


def test_three_channel_generator_tiles_greyscale():
  model = models.Generator(scale=2, channels=3, num_res_blocks=1, features=4)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 4, 4, 3)), train=False))(
      jax.random.PRNGKey(1))
  config = ml_collections.ConfigDict({'data': {'scale': 2, 'channels': 3}})
  up = inference.Upscaler(model, variables, config, step=0)
  grey = np.random.default_rng(1).random((2, 5, 6)).astype(np.float32)
  rgb = up.upscale(np.repeat(grey[..., None], 3, axis=-1))
  assert rgb.shape == (2, 10, 12, 3)
  out = up.upscale(grey)
  assert out.shape == (2, 10, 12)
  np.testing.assert_allclose(out, rgb.mean(-1), atol=1e-6)
  assert up.upscale(grey[..., None]).shape == (2, 10, 12, 1)
  assert up.upscale(grey[0]).shape == (10, 12)
  with pytest.raises(ValueError, match=r'takes 3-channel images \(1-channel images are tiled'):
    up.upscale(np.zeros((1, 5, 5, 2), np.float32))


# ---------------------------------------------------------------------------------------------
# The CLI


def _png(path, array):
  Image.fromarray(array).save(path)


def test_upscale_cli(trained, upscaler, tmp_path, monkeypatch):
  errors_seen = []
  lr = trained.lr
  _png(tmp_path / 'digit.png', lr[0])
  src = tmp_path / 'lr'
  src.mkdir()
  _png(src / 'a.png', lr[1])
  _png(src / 'b.png', lr[2])
  odd = np.random.default_rng(2).integers(0, 256, (9, 11), dtype=np.uint8)
  _png(src / 'odd.png', odd)
  _png(src / 'colour.png', np.repeat(lr[3][..., None], 3, axis=-1))  # RGB: made greyscale.
  (src / 'notes.txt').write_text('not an image')
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'broken.png').write_bytes(b'not a png at all')
  cli = [sys.executable, '-m', 'srgan_jax.upscale']
  file_run, dir_run = _run_all([
      cli + [f'--workdir={trained.workdir}', 'digit.png', 'digit_x4.png'],
      cli + [f'--workdir={trained.workdir}', 'lr', 'sr'],
  ], cwd=str(tmp_path))
  # The user errors in-process (a fresh process each costs seconds of imports): main exits
  # with the message alone, which Python prints without a traceback.
  monkeypatch.chdir(tmp_path)
  for workdir, src, dst in ((tmp_path / 'empty', 'digit.png', 'x.png'),
                            (trained.workdir, 'bad', 'bad_sr')):
    flag_values = flags.FlagValues()
    upscale_cli.define_flags(flag_values)
    with pytest.raises(SystemExit) as exit_info:
      upscale_cli.main(flag_values(['upscale', f'--workdir={workdir}', src, dst]), flag_values)
    errors_seen.append(str(exit_info.value.code))
  no_ckpt, broken = errors_seen

  assert file_run.returncode == 0, file_run.stderr[-3000:]
  with Image.open(tmp_path / 'digit_x4.png') as img:
    assert img.mode == 'L' and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), upscaler.upscale(lr[0]))

  assert dir_run.returncode == 0, dir_run.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / 'sr')) == ['a.png', 'b.png', 'colour.png', 'odd.png']
  for name, image in (('a.png', lr[1]), ('b.png', lr[2]), ('odd.png', odd),
                      ('colour.png', lr[3])):
    with Image.open(tmp_path / 'sr' / name) as img:
      assert img.mode == 'L'
      np.testing.assert_array_equal(np.asarray(img), upscaler.upscale(image), err_msg=name)
  assert 'colour image converted to greyscale' in dir_run.stderr

  assert no_ckpt.startswith('Error: No checkpoint in'), no_ckpt
  assert broken.startswith('Error: ') and "Cannot read image 'bad/broken.png'" in broken, broken
  assert not (tmp_path / 'bad_sr').exists()


# ---------------------------------------------------------------------------------------------
# load_classifier


def test_load_classifier_predicts_hr_digits(trained):
  judge = inference.load_classifier(trained.judge)
  assert judge.architecture == 'lenet' and judge.channels == 1
  hr = trained.hr  # uint8 (64, 28, 28, 1): the test digits the judge was scored on.
  labels = judge.predict(hr, batch_size=24)
  assert labels.shape == (hr.shape[0],) and labels.dtype == np.int32
  accuracy = float(np.mean(labels == trained.labels))
  assert accuracy == pytest.approx(judge.extra['test_accuracy'], abs=1e-9)
  assert accuracy > 0.1  # Better than chance after one tiny epoch.
  logits = judge.logits(hr[..., 0])
  assert logits.shape == (hr.shape[0], 10) and logits.dtype == np.float32
  np.testing.assert_array_equal(np.argmax(logits, -1), labels)
  assert judge.predict(hr[0, ..., 0]) == labels[0]
  assert judge.logits(hr[0, ..., 0]).shape == (10,)
  np.testing.assert_array_equal(judge.predict(hr / 255.0), labels)
  with pytest.raises(ValueError, match='must be 28x28'):
    judge.predict(trained.lr)
  with pytest.raises(errors.CheckpointError, match='not a classifier.*load_generator'):
    inference.load_classifier(trained.workdir)
