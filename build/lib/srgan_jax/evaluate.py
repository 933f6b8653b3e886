"""Evaluation of a generator on the test split: PSNR, SSIM, judge accuracy and digit-FID.

Every figure is reported for SR, for the bicubic baseline (LR upsampled by bicubic) and, where
it makes sense, for HR itself (the ceiling). Recognisability is measured by the *judge*, a
classifier never used in any loss, so a generator cannot score well by pleasing its teacher.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from srgan_jax import image_ops
from srgan_jax import images as images_lib
from srgan_jax import input_pipeline
from srgan_jax import metrics

ROWS = ('hr', 'bicubic', 'sr')


def _eval_step(g_vars, judge_vars, batch, *, generator, judge, scale, crop_border):
  """Per-example metrics for one (padded) batch; pure, so it can be pmapped."""
  hr = image_ops.to_model_range(batch['hr'])
  lr = image_ops.to_model_range(batch['lr'])
  images = {
      'hr': hr,
      'bicubic': image_ops.upsample_bicubic(lr, scale),
      'sr': generator.apply(g_vars, lr, train=False),
  }
  unit = {k: image_ops.to_unit_range(v) for k, v in images.items()}
  out = {}
  for row in ('bicubic', 'sr'):
    out[f'psnr_{row}'] = metrics.psnr(unit[row], unit['hr'], crop_border)
    out[f'ssim_{row}'] = metrics.ssim(unit[row], unit['hr'], crop_border)
  if judge is not None:
    for row in ROWS:
      logits, feats = judge.apply(judge_vars, images[row], train=False)
      out[f'judge_correct_{row}'] = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
      out[f'features_{row}'] = feats['penultimate']
  return out


def make_eval_fn(generator, judge, scale: int, crop_border: int, devices):
  """A pmapped eval step over `devices`: (g_vars, judge_vars, sharded batch) -> sharded dict."""
  step = functools.partial(_eval_step, generator=generator, judge=judge, scale=scale,
                           crop_border=crop_border)
  return jax.pmap(step, in_axes=(None, None, 0), devices=devices)


def evaluate(eval_fn, g_vars, judge_vars, split, batch_size: int, num_devices: int) -> dict:
  """Runs `eval_fn` over the whole split and returns the summary figures.

  Keys: psnr_{bicubic,sr}, ssim_{bicubic,sr} (means over images), and with a judge
  judge_accuracy_{hr,bicubic,sr} and fid_{bicubic,sr} (digit-FID against HR; 0 for HR itself).
  """
  sums, count = {}, 0
  moments = {}
  for batch in input_pipeline.eval_batches(split, batch_size):
    mask = batch.pop('mask')
    out = jax.device_get(eval_fn(g_vars, judge_vars, input_pipeline.shard(batch, num_devices)))
    count += int(mask.sum())
    for key, value in out.items():
      value = np.asarray(value).reshape((mask.shape[0],) + value.shape[2:])
      if key.startswith('features_'):
        moments.setdefault(key, metrics.FeatureMoments()).update(value, mask)
      else:
        sums[key] = sums.get(key, 0.0) + float(np.sum(value[mask], dtype=np.float64))
  summary = {}
  for key, total in sums.items():
    name = key.replace('judge_correct_', 'judge_accuracy_')
    summary[name] = total / count
  if moments:
    hr_stats = moments['features_hr'].statistics()
    for row in ('bicubic', 'sr'):
      summary[f'fid_{row}'] = metrics.frechet_distance(*moments[f'features_{row}'].statistics(),
                                                       *hr_stats)
  return summary


def results_table(summary: dict) -> str:
  """Markdown table comparing HR, bicubic and SR on every figure in `summary`."""
  def cell(key, fmt):
    return fmt.format(summary[key]) if key in summary else '—'
  lines = ['| images | PSNR (dB) | SSIM | judge accuracy | digit-FID |',
           '|---|---|---|---|---|']
  for row, label in (('hr', 'HR (ceiling)'), ('bicubic', 'bicubic'), ('sr', 'SR')):
    psnr = 'inf' if row == 'hr' else cell(f'psnr_{row}', '{:.2f}')
    ssim = '1.0000' if row == 'hr' else cell(f'ssim_{row}', '{:.4f}')
    acc = cell(f'judge_accuracy_{row}', '{:.2%}')
    fid = ('0.00' if 'fid_sr' in summary else '—') if row == 'hr' else cell(f'fid_{row}', '{:.2f}')
    lines.append(f'| {label} | {psnr} | {ssim} | {acc} | {fid} |')
  return '\n'.join(lines)


def sample_grid(generator, g_vars, split, num_images: int, scale: int,
                indices: Optional[np.ndarray] = None) -> np.ndarray:
  """The picture people look at first: rows of HR | bicubic | SR for a few test digits."""
  if indices is None:
    indices = np.arange(min(num_images, split.num_examples))
  batch = input_pipeline.get_batch(split, indices)
  lr = image_ops.to_model_range(batch['lr'])
  sr = generator.apply(g_vars, lr, train=False)
  bicubic = image_ops.upsample_bicubic(lr, scale)
  to_unit = lambda x: np.asarray(image_ops.to_unit_range(x))
  hr = batch['hr'].astype(np.float32) / 255.0
  return images_lib.sr_comparison_grid(hr, to_unit(bicubic), to_unit(sr))
