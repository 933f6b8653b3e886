"""Upscales images (PNG, JPEG, BMP, WebP) with a trained generator, from its checkpoint alone.

  python -m srgan_jax.upscale --workdir=runs/mnist_cnn digit.png digit_x4.png
  python -m srgan_jax.upscale --workdir=runs/mnist_cnn lr_digits/ sr_digits/
  python -m srgan_jax.upscale --workdir=runs/photos --tile_size=96 photo.jpg photo_x4.png

The second form upscales every image file directly inside the input directory (not its
subdirectories) and writes each as `<its name>.png` (PNG: lossless, so the SR pixels are the
network's) into the output directory, which is created. An output path that is an existing
directory receives `<input name>.png` when the input is a single file; an output file is
written in the format its extension names (.png, .jpg/.jpeg at quality 95, .bmp, .webp
lossless), PNG for any other extension.

Greyscale images give greyscale images; colour images give colour images for a 3-channel
generator, and are converted to greyscale (with a note) for a greyscale generator.
Transparency is dropped. Problems (no checkpoint, an unreadable image, ...) are reported as one
message and exit code 1; every input is read (and so checked) before the first output is
written.

Large images are upscaled by tiles of --tile_size LR pixels (default 128; 0 upscales whole
images), each with --tile_margin pixels of context (default: the generator's receptive radius,
which makes the tiled result the untiled one), --tile_batch_size tiles at a time, so memory
stays bounded whatever the image size; jobs of many tiles print their progress and an ETA on
stderr. Images are upscaled one size at a time and written as soon as they are done.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from srgan_jax import inference
from srgan_jax import platform
from srgan_jax.errors import CheckpointError
from srgan_jax.errors import UpscaleError

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, defined when it runs as a command and not on import: the notebook
  and scripts import upscale_files beside main.py, whose --workdir would clash with these."""
  flags.DEFINE_string('workdir', None, 'Training workdir whose checkpoints hold the generator.',
                      flag_values=flag_values)
  flags.DEFINE_integer('step', None, 'Checkpoint step to use (default: the latest usable one).',
                       flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 256, 'Images upscaled at once (images upscaled whole).',
                       flag_values=flag_values)
  flags.DEFINE_integer('tile_size', inference.DEFAULT_TILE_SIZE,
                       'LR pixels of each tile (square) of larger images; 0: whole images.',
                       flag_values=flag_values)
  flags.DEFINE_integer('tile_margin', None,
                       'LR pixels of context each tile is computed with on every side '
                       '(default: the receptive radius of the generator, so tiling changes '
                       'nothing).', flag_values=flag_values)
  flags.DEFINE_integer('tile_batch_size', inference.DEFAULT_TILE_BATCH_SIZE,
                       'Tiles upscaled at once (bounds the memory used).',
                       flag_values=flag_values)
  flags.mark_flag_as_required('workdir', flag_values=flag_values)

USAGE = ('usage: python -m srgan_jax.upscale --workdir=RUN_DIR INPUT.png OUTPUT.png\n'
         '       python -m srgan_jax.upscale --workdir=RUN_DIR INPUT_DIR OUTPUT_DIR')
# What a directory's image files end with, and the Pillow format (with options) each output
# extension is written in.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
WRITE_FORMATS = {'.png': ('PNG', {}), '.jpg': ('JPEG', {'quality': 95}),
                 '.jpeg': ('JPEG', {'quality': 95}), '.bmp': ('BMP', {}),
                 '.webp': ('WEBP', {'lossless': True})}


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def _png_name(name: str) -> str:
  """`<name>.png` for a PNG's name itself (digit.png stays digit.png), else `<stem>.png`."""
  stem, ext = os.path.splitext(name)
  return name if ext.lower() == '.png' else stem + '.png'


def _plan(src: str, dst: str) -> list:
  """[(input path, output path)] for an image file or a directory of them."""
  if os.path.abspath(src) == os.path.abspath(dst):
    raise UpscaleError(f'The output {dst!r} is the input; choose another output path so the '
                       f'input images are not overwritten.')
  if os.path.isdir(src):
    if os.path.exists(dst) and not os.path.isdir(dst):
      raise UpscaleError(f'The input {src!r} is a directory, so the output must be one too; '
                         f'{dst!r} is a file.')
    names = sorted(n for n in os.listdir(src)
                   if _is_image(n) and os.path.isfile(os.path.join(src, n)))
    if not names:
      raise UpscaleError(f'No image files ({", ".join(IMAGE_EXTENSIONS)}) in {src!r}.')
    outputs = {}
    for n in names:
      outputs.setdefault(_png_name(n), []).append(n)
    for out, ins in outputs.items():
      if len(ins) > 1:
        raise UpscaleError(f'{" and ".join(repr(os.path.join(src, n)) for n in ins)} would both '
                           f'be written as {os.path.join(dst, out)!r}; rename one of them.')
    return [(os.path.join(src, n), os.path.join(dst, _png_name(n))) for n in names]
  if not os.path.exists(src):
    raise UpscaleError(f'No such file or directory: {src!r}.')
  if os.path.isdir(dst):
    dst = os.path.join(dst, _png_name(os.path.basename(src)))
    if os.path.abspath(src) == os.path.abspath(dst):
      raise UpscaleError(f'Writing into {os.path.dirname(dst)!r} would overwrite the input '
                         f'{src!r}; choose another output path.')
  return [(src, dst)]


def _read(path: str, channels: int):
  """(uint8 array (H, W) or (H, W, 3), note or None) of a PNG for a `channels` network."""
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
        raise UpscaleError(f'Cannot use {path!r}: {mode} ({"16-bit" if "16" in mode else "32-bit"}'
                           f') images are not supported; save it as an 8-bit PNG.')
      note = None
      if mode in ('L', 'LA', '1') or (mode == 'P' and _palette_is_grey(img)):
        img = img.convert('L')
      else:
        img = img.convert('RGB')
        if channels == 1:
          img = img.convert('L')
          note = f'{path}: colour image converted to greyscale for this greyscale generator.'
      return np.asarray(img, dtype=np.uint8), note
  except UpscaleError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
    raise UpscaleError(f'Cannot read image {path!r}: {e}') from None


def _palette_is_grey(img) -> bool:
  x = np.asarray(img.convert('RGB'))
  return bool((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all())


def _write(path: str, array) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    image_format, options = WRITE_FORMATS.get(os.path.splitext(path)[1].lower(), ('PNG', {}))
    Image.fromarray(np.ascontiguousarray(array)).save(path, format=image_format, **options)
  except OSError as e:
    raise UpscaleError(f'Cannot write {path!r}: {e.strerror or e}') from None


def upscale_files(workdir: str, src: str, dst: str, step=None, batch_size: int = 256, *,
                  tile_size=inference.DEFAULT_TILE_SIZE, tile_margin=None,
                  tile_batch_size: int = inference.DEFAULT_TILE_BATCH_SIZE, progress=None):
  """Upscales an image file or a directory of them; returns (paths written, Upscaler).

  Every input is read and checked first; then the images of each size and layout are read
  again, upscaled together (large ones by tiles: see inference.Upscaler.upscale) and written,
  so that memory holds one size's images, not the whole directory's.
  """
  plan = _plan(src, dst)
  try:
    up = inference.load_generator(workdir, step)
  except CheckpointError as e:
    raise UpscaleError(str(e)) from None
  groups = {}
  for i, (path, _) in enumerate(plan):
    array, note = _read(path, up.channels)
    if note:
      print(f'Note: {note}', file=sys.stderr)
    groups.setdefault(array.shape, []).append(i)
    del array
  written = []
  for indices in groups.values():
    images = np.stack([_read(plan[i][0], up.channels)[0] for i in indices])
    try:
      sr = up.upscale(images, batch_size=batch_size, tile_size=tile_size,
                      tile_margin=tile_margin, tile_batch_size=tile_batch_size,
                      progress=progress)
    except ValueError as e:
      raise UpscaleError(f'Cannot upscale {plan[indices[0]][0]!r}: {e}') from None
    for i, out in zip(indices, sr):
      _write(plan[i][1], out)
      written.append(plan[i][1])
  order = {out_path: k for k, (_, out_path) in enumerate(plan)}
  return sorted(written, key=order.get), up


def main(argv, flag_values: flags.FlagValues = FLAGS):
  """The command: argv[1] upscaled into argv[2] by the generator of --workdir (define_flags'
  flags, parsed into `flag_values`)."""
  f = flag_values
  if len(argv) != 3:
    raise app.UsageError(f'Expected an input and an output path; got {argv[1:]}.\n{USAGE}')
  if f.batch_size <= 0:
    raise app.UsageError(f'--batch_size must be positive; got {f.batch_size}.')
  if f.tile_size < 0:
    raise app.UsageError(f'--tile_size must be >= 0 (0: whole images); got {f.tile_size}.')
  if 0 < f.tile_size < inference.MIN_TILE_SIZE:
    raise app.UsageError(f'--tile_size must be at least {inference.MIN_TILE_SIZE} LR pixels '
                         f'(or 0 for whole images); got {f.tile_size}.')
  if f.tile_margin is not None and f.tile_margin < 0:
    raise app.UsageError(f'--tile_margin must be >= 0; got {f.tile_margin}.')
  if f.tile_batch_size <= 0:
    raise app.UsageError(f'--tile_batch_size must be positive; got {f.tile_batch_size}.')
  platform.quiet_logs(logging.ERROR)  # Also its read-only warnings.
  try:
    written, up = upscale_files(f.workdir, argv[1], argv[2], f.step, f.batch_size,
                                tile_size=f.tile_size, tile_margin=f.tile_margin,
                                tile_batch_size=f.tile_batch_size)
  except UpscaleError as e:
    sys.exit(f'Error: {e}')
  where = written[0] if len(written) == 1 else os.path.dirname(written[0]) + os.sep
  print(f'Upscaled {len(written)} image(s) x{up.scale} with the generator at step {up.step} of '
        f'{f.workdir}: {where}')


if __name__ == '__main__':
  platform.freeze_imported_objects()
  define_flags()
  app.run(main)
