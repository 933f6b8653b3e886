"""Training state shared by every trainer: TrainStates, the parameter EMA, one cross-device mean.

The SRGAN trainer (train.py) and the classifier trainer (classifier_train.py) both keep an
exponential moving average of their parameters (the generator's EMA of the SRGAN literature,
the classifier's Polyak average) and average gradients over the pmap axis. Those pieces live
here, below both trainers, so neither imports the other for them (flaxmodels' StyleGAN2
trainer splits its training_utils the same way).
"""

from typing import Any, Optional

from flax.training import train_state
import jax
import jax.flatten_util
import jax.numpy as jnp

AXIS = 'batch'  # The pmap axis of every training step.


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm statistics."""
  batch_stats: Any = None


class AveragedTrainState(TrainState):
  """A TrainState with the EMA of its parameters: the weights that are evaluated and saved."""
  ema_params: Any = None


def ema_update(ema_params, params, decay, step):
  """The exponential moving average of parameters after `step` updates.

  With the usual warm-up (TF's ExponentialMovingAverage with num_updates): early on, the
  average must not stay anchored to the random initialisation of a short run.
  """
  step = jnp.asarray(step, jnp.float32)
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)


def apply_averaged_gradients(state: AveragedTrainState, grads, batch_stats, ema_decay):
  """One optimizer step of `state` and the EMA update of its parameters."""
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return new_state.replace(ema_params=ema_update(state.ema_params, new_state.params, ema_decay,
                                                 new_state.step))


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
