"""What the study runs: step budgets, loss arms, each run's config and directory.

Change the budget here (or scale it with --steps_scale). Every arm of a scale gets the same
budget, the scale's setting (``SCALE_SETTINGS``) and the scale's shared guide and judge.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

from configs import mnist_acgan
from configs import mnist_cnn
from configs import mnist_perceptual
from configs import mnist_srgan
from configs import seed_x2_rgb
from srgan_jax import config_utils


class StudyError(ValueError):
  """A study that cannot go on as asked (e.g. a workdir made with another budget)."""


@dataclasses.dataclass(frozen=True)
class Budget:
  """Steps of one run: content-only pretraining, then the GAN stage; an eval every N steps."""
  pretrain_steps: int
  num_train_steps: int
  eval_every_steps: int

  @property
  def total_steps(self) -> int:
    return self.pretrain_steps + self.num_train_steps

  def scaled(self, factor: float) -> 'Budget':
    if not factor > 0:
      raise ValueError(f'steps_scale must be > 0; got {factor}.')
    return Budget(max(0, round(self.pretrain_steps * factor)),
                  max(1, round(self.num_train_steps * factor)),
                  max(1, round(self.eval_every_steps * factor)))


# Per scale: the same budget for every arm (the 'srresnet' arm spends all of it on the content
# loss). Sized for about 90 minutes on 2 CPU cores for both scales, 7 arms and two seeds
# (x4: ~3.5 pretrain and ~1.5 GAN steps/s; see the README's Results for the measured time).
# Scale it with --steps_scale.
BUDGETS = {
    4: Budget(pretrain_steps=400, num_train_steps=100, eval_every_steps=100),
    2: Budget(pretrain_steps=120, num_train_steps=30, eval_every_steps=30),
}
DEFAULT_SCALES = (4, 2)
DEFAULT_SEEDS = (0, 1)
# Test images of the final numbers (all 10k) and of each curve point before the last (the
# first 2000: a curve point costs a fifth of a full evaluation).
EVAL_EXAMPLES = 10000
CURVE_EXAMPLES = 2000
# Training images of the shared guide classifier and judge (0: all 60k, minus their
# validation hold-out), at every scale: the judge does not depend on an arm's data.
CLASSIFIER_TRAIN_EXAMPLES = 0
# Guide and judge are trained from the seed-0 config of the scale (judge seed: 1000).
CLASSIFIER_SEED = 0
# Epochs of the guide (the judge's are config.eval.judge_epochs): 2, ~99.2% (results/ used 2).
CLASSIFIER_EPOCHS = 2
CHECKPOINTS_PER_RUN = 5

# The setting of each scale: a configs/ module whose differences from configs/mnist_srgan are
# applied to every arm (for x4 there are none).
SCALE_SETTINGS = {4: mnist_srgan, 2: seed_x2_rgb}


def _srresnet():
  return mnist_srgan.get_config()  # Content loss only: the budget makes it pretrain-only.


def _srgan():
  return mnist_srgan.get_config()


def _cnn(weight, labels='true'):
  def build():
    config = mnist_cnn.get_config()
    config.loss.auxiliary_weight = weight
    config.loss.auxiliary_labels = labels
    return config
  return build


@dataclasses.dataclass(frozen=True)
class Arm:
  build: Callable[[], object]   # -> ConfigDict, before the scale setting and the budget.
  source: str                   # where the config comes from, for the report.
  description: str
  content_only: bool = False    # no GAN stage: the whole budget is content-loss steps.


ARMS = {
    'srresnet': Arm(_srresnet, 'mnist_srgan, pretraining only',
                    'MSE content loss only, no adversary (SRResNet)', content_only=True),
    'srgan': Arm(_srgan, 'mnist_srgan', 'MSE + LSGAN 1e-3 (the seed\'s SRGAN)'),
    'cnn_0.001': Arm(_cnn(0.001), 'mnist_cnn, auxiliary_weight=0.001',
                     'SRGAN + guide-CNN cross-entropy on true labels, weight 0.001'),
    'cnn_0.1': Arm(_cnn(0.1), 'mnist_cnn',
                   'SRGAN + guide-CNN cross-entropy on true labels, weight 0.1'),
    'cnn_pseudo': Arm(_cnn(0.1, 'pseudo'), 'mnist_cnn, auxiliary_labels=pseudo',
                      'SRGAN + guide-CNN cross-entropy on its own HR predictions, weight 0.1'),
    'acgan': Arm(mnist_acgan.get_config, 'mnist_acgan',
                 'SRGAN with an AC-GAN class head on the discriminator, weight 0.1'),
    'perceptual': Arm(mnist_perceptual.get_config, 'mnist_perceptual',
                      'guide-CNN feature maps (conv2, conv3) as content loss + its '
                      'cross-entropy 0.1'),
}

# Fields a run must keep for its checkpoint / results to count in the study.
RUN_FIELDS = ('seed', 'data.scale', 'data.channels', 'data.train_examples', 'data.eval_examples',
              'batch_size', 'pretrain_steps', 'num_train_steps', 'eval_every_steps',
              'loss.content', 'loss.adversarial', 'loss.adversarial_weight', 'loss.auxiliary',
              'loss.auxiliary_weight', 'loss.auxiliary_labels')
# A run's record of its RUN_FIELDS and training time, in its directory.
RUN_INFO = 'study_run.json'


def parse_arms(arms) -> list:
  """The arm names asked for (None or empty: all, in ARMS order); unknown names are an error."""
  arms = list(ARMS) if not arms else list(arms)
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise StudyError(f'Unknown arm(s) {unknown}; arms: {", ".join(ARMS)}.')
  return arms


def scale_setting(scale: int) -> dict:
  """What the scale's configs/ module changes relative to configs/mnist_srgan."""
  if scale not in SCALE_SETTINGS:
    raise StudyError(f'scale {scale} is not one of {sorted(SCALE_SETTINGS)}.')
  return config_utils.diff(mnist_srgan.get_config().to_dict(),
                           SCALE_SETTINGS[scale].get_config().to_dict())


def scale_dir(workdir: str, scale: int) -> str:
  return os.path.join(os.path.abspath(workdir), f'x{scale}')


def run_dir(workdir: str, scale: int, arm: str, seed: int) -> str:
  return os.path.join(scale_dir(workdir, scale), arm, f'seed{seed}')


def budget_for(scale: int, steps_scale: float = 1.0) -> Budget:
  if scale not in BUDGETS:
    raise StudyError(f'scale {scale} has no budget; BUDGETS has {sorted(BUDGETS)}.')
  return BUDGETS[scale].scaled(steps_scale)


def build_config(arm: str, scale: int, seed: int, workdir: str, steps_scale: float = 1.0,
                 override_fn: Optional[Callable] = None):
  """The config of one run: the arm's config, the scale's setting, the budget, shared nets."""
  if arm not in ARMS:
    raise StudyError(f'Unknown arm {arm!r}; arms: {", ".join(ARMS)}.')
  spec = ARMS[arm]
  config = spec.build()
  reference = mnist_srgan.get_config().to_dict()
  current = config.to_dict()
  for key, value in scale_setting(scale).items():
    if config_utils.get_field(current, key) != config_utils.get_field(reference, key):
      raise StudyError(f'Arm {arm!r} sets {key} itself, which the x{scale} setting also '
                       f'changes; the arm cannot be run at x{scale} unchanged.')
    config_utils.set_field(config, key, value)
  budget = budget_for(scale, steps_scale)
  if spec.content_only:
    config.pretrain_steps, config.num_train_steps = budget.total_steps, 0
  else:
    config.pretrain_steps, config.num_train_steps = budget.pretrain_steps, budget.num_train_steps
  config.eval_every_steps = budget.eval_every_steps
  # The study's protocol: the guide's loss acts from the first step, as in the seed (the main
  # job's configs/mnist_cnn keeps it for the GAN stage).
  config.loss.auxiliary_during_pretrain = config.loss.auxiliary == 'classifier'
  # A checkpoint at every k-th evaluation, about CHECKPOINTS_PER_RUN per run.
  evals = max(1, budget.total_steps // budget.eval_every_steps)
  config.checkpoint_every_steps = budget.eval_every_steps * max(
      1, round(evals / CHECKPOINTS_PER_RUN))
  config.log_every_steps = max(1, min(config.log_every_steps, budget.eval_every_steps))
  config.seed = seed
  config.data.eval_examples = EVAL_EXAMPLES
  config.eval.curve_examples = CURVE_EXAMPLES
  config.loss.classifier_workdir = os.path.join(scale_dir(workdir, scale), 'classifier')
  config.eval.judge_workdir = os.path.join(scale_dir(workdir, scale), 'judge')
  if override_fn is not None:
    config = override_fn(config) or config
  return config


def classifier_config(scale: int, workdir: str, steps_scale: float = 1.0,
                      override_fn: Optional[Callable] = None):
  """The config the shared guide and judge of a scale are trained from (channels of the scale)."""
  config = build_config('srgan', scale, CLASSIFIER_SEED, workdir, steps_scale)
  config.data.train_examples = CLASSIFIER_TRAIN_EXAMPLES
  # The main job's (configs/mnist_cnn) classifier recipe, with the guide's epochs of the
  # published study (the main job trains its guide for fewer to fit its time budget).
  config.classifier = mnist_cnn.get_config().classifier
  config.classifier.num_epochs = CLASSIFIER_EPOCHS
  if override_fn is not None:
    config = override_fn(config) or config
  return config


def run_fields(config) -> dict:
  """The RUN_FIELDS of a run's config, by dotted name."""
  d = config.to_dict()
  return {k: config_utils.get_field(d, k) for k in RUN_FIELDS}
