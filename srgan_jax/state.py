"""Training state shared by every trainer: TrainStates, the parameter EMA, one cross-device mean.

The SRGAN trainer (train.py) and the classifier trainer (classifier_train.py) both keep an
exponential moving average of their parameters (the generator's EMA of the SRGAN literature,
the classifier's Polyak average) and average gradients over the pmap axis. Those pieces live
here, below both trainers, so neither imports the other for them (flaxmodels' StyleGAN2
trainer splits its training_utils the same way).
"""

from typing import Any, Optional

from flax import struct
from flax.training import train_state
import jax
import jax.flatten_util
import jax.numpy as jnp

from srgan_jax import adam as adam_lib

AXIS = 'batch'  # The pmap axis of every training step.


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm statistics, and the hyper-parameters of its Adam when
  it was created with `adam` (its update then takes adam.step's one pass on CPU; a state given
  another optimizer must be given adam=None with its tx)."""
  batch_stats: Any = None
  adam: Optional[adam_lib.Adam] = struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, *, apply_fn, params, tx=None, adam=None, **kwargs):
    """flax's create, with `adam` (an adam.Adam) in place of `tx` for Adam."""
    if (tx is None) == (adam is None):
      raise ValueError('give a TrainState either tx or adam')
    return super().create(apply_fn=apply_fn, params=params, tx=tx or adam.tx(), adam=adam,
                          **kwargs)

  def fused(self) -> bool:
    """Whether the update is adam.step's one pass (an `adam` whose pass serves the params)."""
    return self.adam is not None and adam_lib.native_for(self.params)

  def apply_gradients(self, *, grads, **kwargs):
    """flax's apply_gradients; with `adam` where its pass runs, adam.step (the same values)."""
    if not self.fused():
      return super().apply_gradients(grads=grads, **kwargs)
    params, opt_state, _ = adam_lib.step(self.adam, self.params, grads, self.opt_state)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)


class AveragedTrainState(TrainState):
  """A TrainState with the EMA of its parameters: the weights that are evaluated and saved."""
  ema_params: Any = None


def ema_update(ema_params, params, decay, step):
  """The exponential moving average of parameters after `step` updates.

  With the usual warm-up (TF's ExponentialMovingAverage with num_updates): early on, the
  average must not stay anchored to the random initialisation of a short run.
  """
  decay = ema_decay_at(decay, step)
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)


def ema_decay_at(decay, step):
  """The EMA's decay after `step` updates: `decay`, or less early on (ema_update)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def apply_averaged_gradients(state: AveragedTrainState, grads, batch_stats, ema_decay):
  """One optimizer step of `state` and the EMA update of its parameters (both in adam.step's
  one pass where the state's update is fused)."""
  if not state.fused():
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return new_state.replace(ema_params=ema_update(state.ema_params, new_state.params,
                                                   ema_decay, new_state.step))
  step = state.step + 1
  params, opt_state, ema_params = adam_lib.step(
      state.adam, state.params, grads, state.opt_state,
      ema=(state.ema_params, ema_decay_at(ema_decay, step)))
  return state.replace(step=step, params=params, opt_state=opt_state, batch_stats=batch_stats,
                       ema_params=ema_params)


def pmean_once(tree, axis_name: Optional[str]):
  """Averages a pytree over `axis_name` in ONE all-reduce of its flattened leaves.

  On CPU, XLA runs each host device's collectives on a shared thread pool with as many threads
  as cores; one all-reduce per gradient leaf lets a device block every pool thread in
  collectives that wait for another device, which then cannot run (seen as a 40 s rendezvous
  timeout on 2 cores). A single all-reduce after the backward pass cannot starve that way, and
  is also cheaper. `axis_name=None` (outside pmap) returns the tree as it is.
  """
  if axis_name is None:
    return tree
  flat, unravel = jax.flatten_util.ravel_pytree(tree)
  return unravel(jax.lax.pmean(flat, axis_name))
