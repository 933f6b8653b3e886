"""Evaluation of a generator on the test split: PSNR, SSIM, judge accuracy and digit-FID.

Every figure is reported for SR, for the bicubic baseline (LR upsampled by bicubic) and, where
it makes sense, for HR itself (the ceiling). Recognisability is measured by the *judge*, a
classifier never used in any loss, so a generator cannot score well by pleasing its teacher.
The FID is the Fréchet distance between the judge's penultimate features of SR (or bicubic)
and of HR test images: on MNIST "digit-FID"; on another labelled dataset (cifar10) the same
figure in its own judge's features, named "judge-FID" (not the Inception FID of published
tables, whose network and features differ). Its keys are fid_{bicubic,sr} on every dataset.

Photographs (a PhotoSplit) are evaluated as the SR literature does, so the numbers compare
with published tables: each whole test image, cut to a multiple of the scale, is upscaled on
its own, SR and bicubic are rounded to uint8 (as saved files are) and scored by
metrics.image_psnr_ssim on the Y channel (or RGB) with `crop_border` pixels shaved; the
figures are means over the images. To compile the generator once per size class rather than
per image, the LR is padded at the bottom and right (edge values) to a multiple of
config.eval.bucket and the SR cropped back; only the last few rows and columns, within the
generator's receptive field of the padding, can differ from an unpadded pass.
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
from srgan_jax import validation
from srgan_jax.errors import ImageDataError

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
  judge_accuracy_{hr,bicubic,sr} and fid_{bicubic,sr} (the judge-feature FID against HR, digit-FID
  on MNIST; 0 for HR itself).
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


def fid_name(data_config) -> str:
  """The name of the judge-feature FID in tables: 'digit-FID' on MNIST, else 'judge-FID'."""
  return 'digit-FID' if validation.is_mnist(data_config) else 'judge-FID'


def results_table(summary: dict, fid_label: str = 'digit-FID') -> str:
  """Markdown table comparing HR, bicubic and SR on every figure in `summary`; `fid_label`
  names the FID column (fid_name: 'digit-FID' on MNIST)."""
  def cell(key, fmt):
    return fmt.format(summary[key]) if key in summary else '—'
  lines = [f'| images | PSNR (dB) | SSIM | judge accuracy | {fid_label} |',
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


# ----------------------------------------------------------------------------- photographs


def _model_output_to_uint8(images) -> np.ndarray:
  """The generator's tanh range [-1, 1] -> uint8, rounded as a saved file (metrics.to_uint8)."""
  return metrics.to_uint8(np.asarray(images), (-1.0, 1.0))


def make_sr_fn(generator):
  """A jitted (g_vars, uint8 (1, h, w, C) LR) -> float SR in [-1, 1]; one compilation per LR
  shape (see pad_to_bucket)."""
  return jax.jit(lambda g_vars, lr: generator.apply(g_vars, image_ops.to_model_range(lr),
                                                     train=False))


def pad_to_bucket(lr: np.ndarray, bucket: int) -> np.ndarray:
  """uint8 (h, w, C) -> (h', w', C) with h', w' the next multiples of `bucket` (0: as is),
  padded at the bottom and right by repeating the edge pixels."""
  if bucket <= 0:
    return lr
  h, w = lr.shape[:2]
  return np.pad(lr, ((0, -h % bucket), (0, -w % bucket), (0, 0)), mode='edge')


def super_resolve(sr_fn, g_vars, lr: np.ndarray, scale: int, bucket: int) -> np.ndarray:
  """uint8 (h, w, C) LR -> uint8 (h*scale, w*scale, C) SR, through a padded bucket."""
  h, w = lr.shape[:2]
  sr = sr_fn(g_vars, pad_to_bucket(lr, bucket)[None])[0]
  return _model_output_to_uint8(jax.device_get(sr)[:h * scale, :w * scale])


@functools.partial(jax.jit, static_argnums=1)
def _bicubic(lr, scale: int):
  return image_ops.upsample_bicubic(image_ops.to_model_range(lr), scale)


def bicubic_uint8(lr: np.ndarray, scale: int) -> np.ndarray:
  """The baseline: uint8 LR (h, w, C) -> bicubic upsampling, clipped and rounded to uint8
  (jitted: one compilation per size, instead of one per operation and size)."""
  return _model_output_to_uint8(jax.device_get(_bicubic(lr[None], scale))[0])


def _channel_view(image: np.ndarray) -> np.ndarray:
  return image[..., 0] if image.shape[-1] == 1 else image


def score_pair(sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool) -> tuple:
  """(PSNR, SSIM) of uint8 (H, W, C) SR against HR by metrics.image_psnr_ssim."""
  return metrics.image_psnr_ssim(_channel_view(sr), _channel_view(hr), crop_border=crop_border,
                                 y_channel=y_channel)


class PhotoEvaluator:
  """PSNR/SSIM of SR and bicubic on whole test photographs.

  The (HR, LR) pairs and the bicubic scores depend only on the data, so with a split in memory
  they are computed once and kept; a lazily read split reads each image again per evaluation.
  """

  def __init__(self, generator, split, scale: int, crop_border: int, y_channel: bool,
               bucket: int):
    self.sr_fn = make_sr_fn(generator)
    self.split, self.scale, self.bucket = split, scale, bucket
    self.crop_border, self.y_channel = crop_border, y_channel
    self._cache = {}

  def _pair(self, i: int):
    if i in self._cache:
      return self._cache[i]
    hr, lr = input_pipeline.eval_pair(self.split, i, self.scale)
    if min(hr.shape[:2]) < 2 * self.crop_border + metrics.SSIM_FILTER_SIZE:
      raise ImageDataError(
          f'The test image {self.split.names[i]!r} is {hr.shape[0]}x{hr.shape[1]}: too small '
          f'for SSIM ({metrics.SSIM_FILTER_SIZE} pixels) after cropping {self.crop_border} '
          'at each border.')
    entry = (hr, lr, score_pair(bicubic_uint8(lr, self.scale), hr, self.crop_border,
                                self.y_channel))
    if self.split.in_memory:
      self._cache[i] = entry
    return entry

  def __call__(self, g_vars, num_images: int = 0) -> dict:
    """Means over the first `num_images` test images (0: all) of psnr_{bicubic,sr} and
    ssim_{bicubic,sr}, plus the number of images scored."""
    n = self.split.num_examples if num_images <= 0 else min(num_images, self.split.num_examples)
    sums = {key: 0.0 for key in ('psnr_bicubic', 'ssim_bicubic', 'psnr_sr', 'ssim_sr')}
    for i in range(n):
      hr, lr, (psnr_bicubic, ssim_bicubic) = self._pair(i)
      psnr_sr, ssim_sr = score_pair(super_resolve(self.sr_fn, g_vars, lr, self.scale,
                                                  self.bucket), hr, self.crop_border,
                                    self.y_channel)
      for key, value in (('psnr_bicubic', psnr_bicubic), ('ssim_bicubic', ssim_bicubic),
                         ('psnr_sr', psnr_sr), ('ssim_sr', ssim_sr)):
        sums[key] += value / n
    sums['eval_images'] = float(n)
    return sums


def photo_convention(crop_border: int, y_channel: bool, num_images) -> str:
  """The line under a photographs table that says how its numbers were computed."""
  channel = 'the Y channel of YCbCr (ITU-R BT.601, [16, 235])' if y_channel else 'RGB'
  return (f'PSNR/SSIM on {channel}, images rounded to uint8, crop_border = {crop_border}, '
          f'means over {int(num_images)} whole test images (each cut to a multiple of the '
          'scale); bicubic: antialiased-bicubic LR upsampled by bicubic.')


def photo_results_table(summary: dict, convention: str) -> str:
  """Markdown table of bicubic and SR on PSNR/SSIM, with the convention named under it."""
  lines = ['| images | PSNR (dB) | SSIM |', '|---|---|---|', '| HR (ceiling) | inf | 1.0000 |']
  for row, label in (('bicubic', 'bicubic'), ('sr', 'SR')):
    lines.append(f'| {label} | {summary[f"psnr_{row}"]:.2f} | {summary[f"ssim_{row}"]:.4f} |')
  return '\n'.join(lines) + f'\n\n{convention}'


def photo_sample_grid(sr_fn, g_vars, split, num_images: int, scale: int,
                      crop: int) -> np.ndarray:
  """Rows of HR | bicubic | SR for `crop` x `crop` pieces of the test photographs: the
  centre of each image first, then further pieces along its diagonal when more rows are
  asked for than there are images. `sr_fn` from make_sr_fn: one batch, one compilation."""
  n = split.num_examples
  size = crop - crop % scale
  hrs = []
  for k in range(num_images):
    image = split.read(k % n)
    h, w = image.shape[:2]
    t = (k // n + 1) / (-(-num_images // n) + 1)
    top, left = int(t * (h - size)), int(t * (w - size))
    hrs.append(image[top:top + size, left:left + size])
  hr = np.stack(hrs)
  lr = image_ops.downsample_bicubic(hr, scale)
  sr = _model_output_to_uint8(jax.device_get(sr_fn(g_vars, lr)))
  bicubic = _model_output_to_uint8(jax.device_get(_bicubic(lr, scale)))
  zoom = max(1, 96 // max(size, 1))
  return images_lib.make_grid([[hr[k], bicubic[k], sr[k]] for k in range(num_images)],
                              zoom=zoom)
