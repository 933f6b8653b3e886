"""What the benchmark times: batches, placed states, random frozen nets and judge, GAN iterations.

The pretrained networks the losses need (the guide classifier, VGG19) and the evaluation judge
are randomly initialised unless given, since the cost of a step does not depend on the values
of frozen weights; each says so with a ``WARNING:`` line.
"""

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax

from benchmarks import timing
from srgan_jax import distributed
from srgan_jax import inference
from srgan_jax import input_pipeline
from srgan_jax import models
from srgan_jax import steps
from srgan_jax import train
from srgan_jax import validation
from srgan_jax import vgg
from srgan_jax.state import AXIS

# GAN iterations that can be timed besides the training path (see make_gan_iteration).
VARIANTS = ('two_steps', 'one_device')


# ---------------------------------------------------------------------------------------------
# Frozen networks with random weights.


def random_frozen(config, rep: timing.Reporter) -> steps.Frozen:
  """steps.Frozen with randomly initialised networks where the losses need them (cost only)."""
  frozen = steps.Frozen()
  if validation.needs_guide(config):
    rep.warning(f'the {config.classifier.architecture!r} loss classifier has RANDOM weights: '
                'timings only, never results.')
    model = models.create_classifier(config.classifier.architecture)
    variables = models.init_classifier(model, jax.random.PRNGKey(1), config.data.channels)
    frozen = frozen.replace(classifier=model, classifier_vars=variables)
  if config.loss.content == 'vgg':
    if config.loss.vgg.random_weights_for_benchmark:
      rep.warning('VGG19 with RANDOM weights (--random_vgg / '
                  'config.loss.vgg.random_weights_for_benchmark): timings only, never results.')
    params, fn = vgg.load_feature_extractor(config.loss.vgg)
    frozen = frozen.replace(vgg_params=params, vgg_fn=fn)
  return frozen


def make_judge(config, judge_workdir: str, rep: timing.Reporter):
  """(module, variables) of the evaluation judge: the classifier in `judge_workdir`, or ''
  for a random LeNet (eval cost only)."""
  if judge_workdir:
    model, variables, _ = inference.restore_classifier(judge_workdir)
    return model, variables
  rep.warning('the evaluation judge is a RANDOM LeNet: eval timings only.')
  model = models.create_classifier('lenet')
  return model, models.init_classifier(model, jax.random.PRNGKey(2), config.data.channels)


# ---------------------------------------------------------------------------------------------
# The data and the states.


@dataclasses.dataclass
class Workload:
  """A config's training inputs as the timed steps see them.

  The states are placed once on every device of the pmap mesh, as every step after the first
  sees them (pmap's out_axes=None outputs live on all devices of its mesh). Passing the
  host-made states of create_train_states instead makes jax 0.10 compile each step twice: once
  for the first call, once for the second.
  """
  config: Any
  devices: Sequence[Any]
  split: input_pipeline.Split
  g_state: Any
  d_state: Any
  frozen: steps.Frozen

  def batch(self, step: int, num_devices: Optional[int] = None) -> dict:
    """The training batch of `step`, sharded over `num_devices` (default: all the devices)."""
    config = self.config
    idx = input_pipeline.batch_indices(config.seed, step, config.batch_size,
                                       self.split.num_examples, jax.process_index(),
                                       jax.process_count())
    return input_pipeline.shard(input_pipeline.get_batch(self.split, idx),
                                num_devices or len(self.devices))


def make_workload(config, devices, rep: timing.Reporter) -> Workload:
  """The random frozen networks, the 'train' split and the initial states of `config`, their
  convs computed by config.conv_implementation (tuned first when 'tuned')."""
  frozen = random_frozen(config, rep)
  split = input_pipeline.load_split(config, 'train')
  conv_plan, frozen, _ = train.tune_convs(config, frozen, hr_size=split.hr.shape[1],
                                          log=rep.info)
  g_state, d_state = train.create_train_states(config, jax.random.PRNGKey(config.seed),
                                               split.hr.shape[1], conv_plan=conv_plan)
  rep.info(f'parameters: generator {models.count_params(g_state.params)}, discriminator '
           f'{models.count_params(d_state.params)}')
  g_state, d_state = distributed.replicate((g_state, d_state), devices, AXIS)
  return Workload(config, devices, split, g_state, d_state, frozen)


def fresh_copy(tree, devices):
  """A copy of `tree` on every device of the pmap mesh over `devices`, that a donating step may
  consume."""
  return distributed.replicate(jax.device_get(tree), devices, AXIS)


# ---------------------------------------------------------------------------------------------
# GAN iterations (the maths of steps.gan_step).


def check_variants(variants: Sequence[str]) -> None:
  """Raises ValueError naming a variant that is not one of VARIANTS."""
  for variant in variants:
    if variant not in VARIANTS:
      raise ValueError(f'unknown variant {variant!r}: use some of {VARIANTS}')


def make_gan_iteration(config, devices, variant: str = 'train'):
  """A function (g_state, d_state, batch, frozen) -> (g_state, d_state, metrics) that consumes
  (donates) the states it is given.

  'train': steps.make_pmapped_steps's GAN iteration (gan_step, one pmapped call), as trained.
  'two_steps': the seed's iteration as two pmapped calls, steps.generator_step then
    steps.discriminator_step (the same maths; D's pass over SR runs twice).
  'one_device': 'train' pmapped over the first device only (the caller gives devices[:1]).
  """
  if variant != 'train':
    check_variants([variant])
  if variant != 'two_steps':
    return steps.make_pmapped_steps(config, devices)[1]
  pmap = functools.partial(jax.pmap, axis_name=AXIS, devices=devices)
  gen = pmap(functools.partial(steps.generator_step, config=config, adversarial=True),
             in_axes=(None, None, 0, None), out_axes=(None, 0, None), donate_argnums=(0,))
  disc = pmap(functools.partial(steps.discriminator_step, config=config),
              in_axes=(None, 0, 0), out_axes=(None, None), donate_argnums=(0,))

  def iteration(g_state, d_state, batch, frozen):
    g_state, sr, metrics = gen(g_state, d_state, batch, frozen)
    d_state, d_metrics = disc(d_state, batch, sr)
    return g_state, d_state, {**metrics, **d_metrics}
  return iteration
