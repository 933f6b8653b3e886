"""Adam (Kingma & Ba 2015) as optax.adam computes it, each parameter's step, and the EMA of
the new parameter where the state keeps one, one C++ pass (adam_update.cc) through XLA's FFI.

Why: the update is memory-bound, and XLA:CPU (jax 0.10) compiles optax's Adam into three
passes over each parameter (the first moment; the parameter, recomputing the second moment;
the second moment) and a copy of the second moment, and the EMA into a fourth: 13 reads and
writes of a parameter's size where 9 are needed. In a `jax.profiler` trace of the seed's GAN
iteration on a 2-core Intel Xeon (2026-12-04), the discriminator's 3x3x512x512 kernel alone
took 11 ms of a device's 1.35 s step; on a 2-core AMD EPYC the main job's Adam updates took 42
ms of its 0.79 s GAN step (benchmarks/README.md).

`Adam` holds the hyper-parameters that optax.adam is given; `Adam.tx()` is that optax.adam,
whose state the pass reads and writes (the same tree: checkpoints do not depend on the pass).
The values are optax's and state.ema_update's to float rounding: each element goes through
their operations in float32 as XLA:CPU compiles them alone (adam_update.cc); in a larger
program XLA may fuse them otherwise and round an element's last bit differently. Where the
pass is not available (native_for: no compiler, not a Linux x86-64 CPU, not float32, a GPU or
TPU backend, SRGAN_JAX_NATIVE=0), state.py updates by optax's update and ema_update.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from srgan_jax import native

SOURCE = 'adam_update.cc'
NAME = 'adam'  # Its build's name (native.build).
# -ffp-contract=off: only the pass's own fused multiply-adds, where XLA:CPU has them;
# -fno-math-errno: sqrt vectorises (it cannot set errno: its argument is >= 0).
FLAGS = ('-O3', '-march=native', '-ffp-contract=off', '-fno-math-errno')
SYMBOLS = {'srgan_adam': 'SrganAdam', 'srgan_adam_ema': 'SrganAdamEma'}


@functools.lru_cache(maxsize=None)
def status() -> str:
  """'' when the C++ pass is ready (built, loaded, registered), else why not."""
  return native.status(SOURCE, NAME, SYMBOLS, FLAGS, "Adam's update", "optax's update")


@dataclasses.dataclass(frozen=True)
class Adam:
  """Adam's hyper-parameters: a learning rate (a float, or an optax schedule of the step),
  the moments' decays b1 and b2, and eps, as optax.adam takes them."""
  learning_rate: Union[float, Callable[[Any], Any]]
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def tx(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)


def native_for(params) -> bool:
  """Whether the C++ pass (step) serves `params`: float32 leaves on a CPU backend where it is
  built."""
  return (jax.default_backend() == 'cpu' and
          all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
          and not status())


def _learning_rate(adam: Adam, schedule_state):
  """-learning rate at this step, as optax.scale_by_learning_rate's state gives it."""
  if callable(adam.learning_rate):
    return -1 * adam.learning_rate(schedule_state.count)
  return -1 * adam.learning_rate


def step(adam: Adam, params, grads, opt_state, ema: Optional[Tuple[Any, Any]] = None):
  """(params, opt_state, ema_params) after one Adam step of `grads`, by the C++ pass (callers
  check native_for; elsewhere the state's tx and state.ema_update do it).

  `opt_state`: the state of `adam.tx()`. `ema`: (ema_params, decay at this step) to also
  update the EMA of the parameters, decay * ema + (1 - decay) * new params (state.ema_update
  gives the decay); None returns None as the EMA.
  """
  moments, schedule_state = opt_state
  count = optax.safe_increment(moments.count)
  coefficients = jnp.stack([jnp.asarray(c, jnp.float32) for c in (
      1 - adam.b1, adam.b1, 1 - adam.b2, adam.b2, 1 / (1 - adam.b1 ** count),
      1 / (1 - adam.b2 ** count), 0.0, adam.eps, _learning_rate(adam, schedule_state),
      *((ema[1], 1 - ema[1]) if ema is not None else (0.0, 0.0)))])
  leaves, treedef = jax.tree_util.tree_flatten(params)
  others = [treedef.flatten_up_to(tree) for tree in (grads, moments.mu, moments.nu)]
  if ema is not None:
    others.append(treedef.flatten_up_to(ema[0]))
  outputs = [_update(leaf, *rest, coefficients) for leaf, *rest in zip(leaves, *others)]
  new = [treedef.unflatten(column) for column in zip(*outputs)]
  moments = moments._replace(count=count, mu=new[1], nu=new[2])
  if isinstance(schedule_state, optax.ScaleByScheduleState):  # A schedule's; a float's: none.
    schedule_state = schedule_state._replace(
        count=optax.safe_increment(schedule_state.count))
  return new[0], (moments, schedule_state), (new[3] if ema is not None else None)


def _update(p, g, m, v, *rest):
  """One parameter's (p, m, v) or (p, m, v, ema) after the step: one FFI call, its outputs in
  the inputs' buffers where XLA can give them (the steps donate their states)."""
  shape = jax.ShapeDtypeStruct(p.shape, p.dtype)
  with_ema = len(rest) == 2
  target = 'srgan_adam_ema' if with_ema else 'srgan_adam'
  aliases = {0: 0, 2: 1, 3: 2, **({4: 3} if with_ema else {})}
  return jax.ffi.ffi_call(target, (shape,) * (4 if with_ema else 3),
                          vmap_method=native.VMAP_METHOD,
                          input_output_aliases=aliases)(p, g, m, v, *rest)
