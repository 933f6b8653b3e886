"""Orbax checkpoints that resume training and restore without the config file that made them.

A checkpoint step directory holds named items:
- 'state': everything training needs to resume exactly (both TrainStates, optimizer states);
- 'model': the variables used for inference (the generator's EMA parameters, or a classifier's
  variables), restorable on their own in Colab;
- 'config': the experiment's config as JSON; the single source of truth for restoring;
- 'extra': small JSON facts (e.g. a classifier's test accuracy).
Orbax writes each step to a temporary directory and renames it when complete, so a killed save
never becomes the latest checkpoint.
"""

import contextlib
import os
import sys
import threading
import time
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from srgan_jax import config_utils
from srgan_jax.errors import CheckpointError

ITEMS = ('state', 'model', 'config', 'extra')

# Config fields that fix the shapes of the saved networks: a checkpoint cannot be resumed or
# restored under a config that changes any of them.
ARCHITECTURE_FIELDS = (
    'task', 'data.scale', 'data.channels', 'generator.num_res_blocks', 'generator.features',
    'generator.upsample_batch_norm', 'discriminator.features', 'discriminator.head',
    'discriminator.dense_features', 'loss.auxiliary', 'classifier.architecture',
)
# Config fields that fix shapes only with the dense discriminator head (its dense layer is
# sized from the crop: 96 -> 6x6xC); the patch head and the generator are fully convolutional,
# so with them a run may resume on other crops. A config that predates a field has its
# default (0: whole images).
DENSE_HEAD_FIELDS = (('data.hr_crop', 0),)


def architecture_mismatches(saved: dict, current: dict) -> list:
  """Names the architecture fields whose values differ between two config dicts (and the
  crop size when both use the dense discriminator head)."""
  out = []
  for field in ARCHITECTURE_FIELDS:
    a = config_utils.get_field(saved, field, None)
    b = config_utils.get_field(current, field, None)
    if isinstance(a, (list, tuple)):
      a = list(a)
    if isinstance(b, (list, tuple)):
      b = list(b)
    if a != b:
      out.append(f'{field}: checkpoint has {a!r}, config has {b!r}')
  dense = 'dense'
  if (config_utils.get_field(saved, 'discriminator.head', None) == dense and
      config_utils.get_field(current, 'discriminator.head', None) == dense):
    for field, default in DENSE_HEAD_FIELDS:
      a = config_utils.get_field(saved, field, default)
      b = config_utils.get_field(current, field, default)
      if a != b:
        out.append(f'{field}: checkpoint has {a!r}, config has {b!r} (it sizes the dense '
                   'discriminator head)')
  return out


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def ensure_writable(workdir: str):
  """Fails early, with a clear message, when the workdir cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise CheckpointError(
        f'Cannot write to workdir {workdir!r} ({e.strerror}). Choose a directory you can '
        f'write to with --workdir.') from None


def manager(workdir: str, keep: Optional[int] = None, read_only: bool = False):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      save_interval_steps=0 if read_only else 1,  # Orbax warns when it has to set it.
      enable_async_checkpointing=False, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds at least one finished checkpoint (Orbax's view of it)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return False
  return manager(workdir, read_only=True).latest_step() is not None


def save(mngr, step: int, state: Any, model: Any, config, extra: Optional[dict] = None):
  """Saves one complete checkpoint at `step` (numpy on the host; primary process writes)."""
  state, model = jax.device_get((state, model))
  if step in mngr.all_steps():  # Left by an earlier run; a resume skipped it as unusable.
    logging.warning('Replacing the unusable checkpoint at step %d in %s.', step, mngr.directory)
    mngr.delete(step)
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), model=ocp.args.StandardSave(model),
      config=ocp.args.JsonSave(config_utils.config_to_dict(config)),
      extra=ocp.args.JsonSave(extra or {}))
  mngr.save(step, args=args, force=True)
  mngr.wait_until_finished()


def _abstract(tree):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def read_config(workdir: str, step: Optional[int] = None) -> tuple:
  """The (step, config dict, extra dict) of the latest usable checkpoint (or `step`)."""
  return _restore_latest(workdir, step, lambda: dict(
      config=ocp.args.JsonRestore(), extra=ocp.args.JsonRestore()))


def restore(workdir: str, items: dict, step: Optional[int] = None) -> tuple:
  """Restores named items shaped like the given templates from the latest usable checkpoint.

  `items` maps 'state' / 'model' to a template pytree (shapes and dtypes are what matter).
  Returns (step, {item: restored, 'config': dict, 'extra': dict}). A checkpoint that fails to
  restore (truncated, deleted files) is skipped with a warning in favour of the one before.
  """
  def make_args():
    args = {k: ocp.args.StandardRestore(_abstract(v)) for k, v in items.items()}
    args.update(config=ocp.args.JsonRestore(), extra=ocp.args.JsonRestore())
    return args
  step, restored = _restore_latest(workdir, step, make_args, raw=True)
  return step, restored


# Orbax abandons a checkpoint's other array reads when one fails (a truncated or deleted file);
# each of them then completes into the event loop that the failed restore has closed, and Python
# reports every such callback as an unraisable "RuntimeError: Event loop is closed" with its
# traceback: hundreds to thousands of lines around the clear message a corrupted checkpoint
# gets. They are ignored while restoring and until DRAIN_QUIET_S pass without one (at most
# DRAIN_MAX_S) after an attempt failed; any other unraisable exception is reported as before.
DRAIN_QUIET_S = 0.2
DRAIN_MAX_S = 3.0


def _is_abandoned_read(unraisable) -> bool:
  value = unraisable.exc_value
  return isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'


@contextlib.contextmanager
def _abandoned_reads_ignored():
  """While inside, the unraisable 'Event loop is closed' reports of abandoned reads are
  dropped; yields drain(), which waits until they have stopped arriving."""
  previous = sys.unraisablehook
  last = [time.monotonic()]
  lock = threading.Lock()

  def hook(unraisable):
    if _is_abandoned_read(unraisable):
      with lock:
        last[0] = time.monotonic()
    else:
      previous(unraisable)

  def drain():  # Quiet counts from the failure too: the reads may complete just after it.
    start = time.monotonic()
    while time.monotonic() - start < DRAIN_MAX_S:
      with lock:
        quiet = time.monotonic() - max(last[0], start)
      if quiet >= DRAIN_QUIET_S:
        return
      time.sleep(DRAIN_QUIET_S - quiet)

  sys.unraisablehook = hook
  try:
    yield drain
  finally:
    sys.unraisablehook = previous


def _restore_latest(workdir, step, make_args, raw=False):
  if not has_checkpoint(workdir):
    raise CheckpointError(
        f'No checkpoint in {checkpoint_dir(workdir)!r}. Train one first with '
        f'`python main.py --config=<config> --workdir={workdir}`.')
  mngr = manager(workdir, read_only=True)
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise CheckpointError(f'No checkpoint at step {step} in {checkpoint_dir(workdir)!r}; '
                            f'available steps: {sorted(steps)}.')
    steps = [step]
  errors = []
  with _abandoned_reads_ignored() as drain:
    for s in steps:
      try:
        out = mngr.restore(s, args=ocp.args.Composite(**make_args()))
        if raw:
          return s, {k: out[k] for k in out.keys()}
        return s, out['config'], out['extra']
      except Exception as e:  # pylint: disable=broad-except
        drain()
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        errors.append(f'step {s}: {reason}')
        logging.warning('Checkpoint at step %d in %s is unusable (%s); trying an earlier one.',
                        s, checkpoint_dir(workdir), reason)
  raise CheckpointError(
      f'No usable checkpoint in {checkpoint_dir(workdir)!r}:\n  ' + '\n  '.join(errors)
      + '\nDelete the directory to start over, or restore a backup.')


def check_compatible(saved_config: dict, config, workdir: str):
  diffs = architecture_mismatches(saved_config, config_utils.config_to_dict(config))
  if diffs:
    raise CheckpointError(
        f'The checkpoint in {checkpoint_dir(workdir)!r} was made with a different '
        f'architecture:\n  ' + '\n  '.join(diffs)
        + '\nUse another --workdir, or the config the checkpoint was made with.')


def all_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree_util.tree_leaves(jax.device_get(tree))
             if np.issubdtype(np.asarray(x).dtype, np.floating))
