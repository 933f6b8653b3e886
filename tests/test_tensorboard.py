"""What the trainer writes for TensorBoard, read back with TensorBoard's own reader.

The events are written by tensorboardX (no TensorFlow); this reads them with the `tensorboard`
package's EventAccumulator, which is what `tensorboard --logdir` (and Colab's %tensorboard)
serves, so a file it cannot parse or a missing tag fails here.
"""

import io
import os

import numpy as np
from PIL import Image

from srgan_jax import images as images_lib
from srgan_jax import writers


def _accumulator(logdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  # 0: keep every event of each kind (the defaults sample images down to 4).
  acc = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def test_tensorboard_reads_the_scalars_and_sample_images(one_command_run):
  config, workdir, _, _ = one_command_run
  logdir = os.path.join(workdir, writers.TENSORBOARD_DIR)
  acc = _accumulator(logdir)
  tags = acc.Tags()
  # Every number of metrics.jsonl is a TensorBoard scalar, at the same step, with its value.
  records = writers.read_metrics(workdir)
  expected = {}
  for record in records:
    for name, value in record.items():
      if name != 'step' and isinstance(value, (int, float)):
        expected.setdefault(name, {})[record['step']] = value
  for name in ('content', 'adversarial', 'auxiliary', 'discriminator', 'd_real', 'd_fake',
               'steps_per_second', 'eval/psnr_sr', 'eval/ssim_sr', 'eval/judge_accuracy_sr'):
    assert name in expected, sorted(expected)
  assert set(expected) <= set(tags['scalars']), sorted(set(expected) - set(tags['scalars']))
  for name, by_step in expected.items():
    events = acc.Scalars(name)
    assert {e.step for e in events} == set(by_step), name
    for e in events:
      np.testing.assert_allclose(e.value, by_step[e.step], rtol=1e-6, err_msg=name)
  # The sample grid (HR | bicubic | SR rows) of each evaluation, as the PNG in samples/.
  assert 'samples' in tags['images'], tags['images']
  final_step = config.pretrain_steps + config.num_train_steps
  eval_steps = sorted({s for s in expected['eval/psnr_sr']})
  events = acc.Images('samples')
  assert [e.step for e in events] == eval_steps and eval_steps[-1] == final_step
  grid = np.asarray(Image.open(io.BytesIO(events[-1].encoded_image_string)))
  saved = np.asarray(Image.open(os.path.join(workdir, 'samples', f'step_{final_step}.png')))
  assert (events[-1].height, events[-1].width) == grid.shape[:2]
  np.testing.assert_array_equal(grid, images_lib.to_uint8_rgb(saved))
