"""Adam's update in one C++ pass (srgan_jax/adam.py): optax.adam's values and state (with a
constant learning rate and with a schedule, with and without the EMA, under pmap), the
trainers' states taking it, and the fallback to optax's update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from srgan_jax import adam
from srgan_jax import state as state_lib
from srgan_jax import train

needs_native = pytest.mark.skipif(not adam.native_for({'x': jnp.zeros(1)}),
                                  reason=f'C++ pass unavailable: {adam.status()}')

SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)


def _params(rng):
  """Leaves of the shapes a network has: a kernel (vectorised body and remainder), a bias, a
  PReLU slope."""
  return {'kernel': jnp.asarray(rng.normal(size=(3, 3, 5, 67)), jnp.float32),
          'bias': jnp.asarray(rng.normal(size=(67,)), jnp.float32),
          'alpha': jnp.float32(0.25)}


def _run(hyper, params, grads_per_step, pass_on: bool, ema_decay=None, devices=2):
  """The averaged (EMA) state after the steps, pmapped over `devices` fake CPU devices, each
  step's gradients averaged over them as the trainers do."""
  state = state_lib.AveragedTrainState.create(apply_fn=None, params=params, adam=hyper,
                                              ema_params=params)

  def one_step(state, grads):
    grads = state_lib.pmean_once(grads, state_lib.AXIS)
    if ema_decay is None:
      return state.apply_gradients(grads=grads)
    return state_lib.apply_averaged_gradients(state, grads, None, ema_decay)

  step = jax.pmap(one_step, state_lib.AXIS, in_axes=(None, 0), out_axes=None,
                  devices=jax.local_devices()[:devices])
  with pytest.MonkeyPatch.context() as patch:
    if not pass_on:
      patch.setattr(adam, 'native_for', lambda params: False)
    for grads in grads_per_step:
      state = step(state, grads)
  return state


@needs_native
@pytest.mark.parametrize('learning_rate', [3e-3, SCHEDULE], ids=['constant', 'schedule'])
@pytest.mark.parametrize('ema_decay', [None, 0.9])
def test_equals_optax_adam_under_pmap(learning_rate, ema_decay):
  rng = np.random.default_rng(0)
  params = _params(rng)
  # Each device's gradients differ (their mean is what counts), large and small.
  grads_per_step = [jax.tree.map(lambda p: jnp.asarray(
      rng.normal(size=(2,) + p.shape) * 10.0 ** rng.integers(-3, 2), jnp.float32), params)
                    for _ in range(6)]
  hyper = adam.Adam(learning_rate, b1=0.5, b2=0.99)
  ours = _run(hyper, params, grads_per_step, True, ema_decay)
  want = _run(hyper, params, grads_per_step, False, ema_decay)
  assert jax.tree.structure(ours.opt_state) == jax.tree.structure(want.opt_state)
  assert jax.tree.structure(want.opt_state) == jax.tree.structure(
      hyper.tx().init(params))  # optax's state: checkpoints do not depend on the pass.
  assert int(ours.step) == 6 and int(ours.opt_state[0].count) == 6
  if learning_rate is SCHEDULE:
    assert int(ours.opt_state[1].count) == 6
  # Moved away from the start: the comparison below compares updates.
  assert float(jnp.max(jnp.abs(want.params['kernel'] - params['kernel']))) > 1e-3
  trees = [(ours.params, want.params), (ours.opt_state, want.opt_state)]
  if ema_decay is not None:
    trees.append((ours.ema_params, want.ema_params))
    assert float(jnp.max(jnp.abs(want.ema_params['kernel'] - params['kernel']))) > 1e-4
  for got, expected in trees:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)


@needs_native
def test_vmapped_states_update_each_their_own():
  """Two states in one vmapped step (e.g. two seeds) update as each would alone."""
  rng = np.random.default_rng(1)
  hyper = adam.Adam(SCHEDULE)
  first = state_lib.AveragedTrainState.create(apply_fn=None, params=_params(rng), adam=hyper,
                                              ema_params=_params(rng))
  states = [first, first.replace(params=_params(rng), ema_params=_params(rng))]
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
                        s.params) for s in states]
  step = lambda s, g: state_lib.apply_averaged_gradients(s, g, None, 0.9)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  both = jax.jit(jax.vmap(step))(stacked, jax.tree.map(lambda *xs: jnp.stack(xs), *grads))
  for i, (state, g) in enumerate(zip(states, grads)):
    alone = jax.jit(step)(state, g)
    for got, want in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], both)),
                         jax.tree.leaves(alone)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _pmapped_hlo(state, ema: bool) -> str:
  grads = jax.tree.map(jnp.ones_like, state.params)
  if ema:
    fn = lambda s, g: state_lib.apply_averaged_gradients(s, g, s.batch_stats, 0.99)
  else:
    fn = lambda s, g: s.apply_gradients(grads=g)
  return jax.jit(fn).lower(state, grads).as_text()


@needs_native
def test_trainers_states_take_the_pass(tiny_config, monkeypatch):
  g_state, d_state = train.create_train_states(tiny_config, jax.random.PRNGKey(0))
  assert g_state.adam == adam.Adam(g_state.adam.learning_rate, tiny_config.optimizer.b1,
                                    tiny_config.optimizer.b2)
  assert d_state.adam.learning_rate == tiny_config.optimizer.learning_rate
  assert '@srgan_adam_ema(' in _pmapped_hlo(g_state, ema=True)
  assert '@srgan_adam(' in _pmapped_hlo(d_state, ema=False)
  # A state given another optimizer (adam=None) takes its tx.
  sgd = optax.sgd(0.1)
  plain = d_state.replace(tx=sgd, adam=None, opt_state=sgd.init(d_state.params))
  assert 'srgan_adam' not in _pmapped_hlo(plain, ema=False)
  updated = plain.apply_gradients(grads=jax.tree.map(jnp.ones_like, plain.params))
  kernel = jax.tree.leaves(plain.params)[0]
  np.testing.assert_allclose(jax.tree.leaves(updated.params)[0], kernel - 0.1, rtol=1e-6)
  # Where the pass is not available: optax's update, no FFI call.
  monkeypatch.setattr(adam, 'status', lambda: 'off (a test)')
  assert 'srgan_adam' not in _pmapped_hlo(g_state, ema=True)


def test_other_dtypes_take_optax(monkeypatch):
  """bfloat16 parameters are optax's to update, and a TrainState takes tx or adam, not both."""
  params = {'w': jnp.ones((4,), jnp.bfloat16)}
  assert not adam.native_for(params)
  hyper = adam.Adam(1e-2)
  state = state_lib.TrainState.create(apply_fn=None, params=params, adam=hyper)
  updated = state.apply_gradients(grads={'w': jnp.ones((4,), jnp.bfloat16)})
  updates, _ = hyper.tx().update({'w': jnp.ones((4,), jnp.bfloat16)}, state.opt_state, params)
  np.testing.assert_array_equal(updated.params['w'], optax.apply_updates(params, updates)['w'])
  with pytest.raises(ValueError, match='either tx or adam'):
    state_lib.TrainState.create(apply_fn=None, params=params, adam=hyper, tx=hyper.tx())
