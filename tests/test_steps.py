"""steps.gan_step (one call, D's pass over SR shared) computes what the seed's two steps compute."""

import functools
import re

import jax
import numpy as np
import pytest

from conftest import make_tiny_config
from srgan_jax import distributed
from srgan_jax import input_pipeline
from srgan_jax import steps
from srgan_jax import train
from srgan_jax import vgg
from srgan_jax.state import AXIS

NUM_STEPS = 2
BN_MOMENTUM = 0.9  # models._batch_norm's (PyTorch's 0.1).


def _two_steps(g_state, d_state, batch, frozen, *, config):
  """The seed's GAN iteration: generator_step, then discriminator_step on its SR."""
  g_state, sr, metrics = steps.generator_step(g_state, d_state, batch, frozen, config=config,
                                              adversarial=True)
  d_state, d_metrics = steps.discriminator_step(d_state, batch, sr, config=config)
  return g_state, d_state, {**metrics, **d_metrics}


def _train(config, iteration, states):
  """NUM_STEPS iterations from `states`: ({network: variables}, last metrics), on the host."""
  devices = jax.local_devices()
  split = input_pipeline.load_split(config, 'train')
  g_state, d_state = distributed.replicate(states, devices, AXIS)
  for step in range(NUM_STEPS):
    idx = input_pipeline.batch_indices(config.seed, step, config.batch_size,
                                       split.num_examples)
    batch = input_pipeline.shard(input_pipeline.get_batch(split, idx), len(devices))
    g_state, d_state, metrics = iteration(g_state, d_state, batch, steps.Frozen())
  return jax.device_get((
      {'generator': (g_state.params, g_state.ema_params, g_state.batch_stats),
       'discriminator': (d_state.params, d_state.batch_stats)}, metrics))


def _tolerance(name: str, learning_rate: float) -> float:
  """The atol of one variable after NUM_STEPS steps with Adam at `learning_rate`.

  A conv bias right before BatchNorm has a zero gradient up to rounding, which Adam scales to
  about +-lr per step: any change in the order of float operations moves it, by up to 2 lr per
  step between two runs. BatchNorm's output does not depend on it, but its running mean does:
  step k's batch mean (after k updates) enters with weight (1 - momentum) or less, so the means
  differ by up to (1 - momentum) * 2 lr * (0 + 1 + ... + NUM_STEPS - 1). Everything else must
  agree to rounding.
  """
  atol = 1e-4
  if "['bias']" in name and 'Conv' in name:
    return atol + 2 * learning_rate * NUM_STEPS
  if "['mean']" in name:
    return atol + (1 - BN_MOMENTUM) * learning_rate * NUM_STEPS * (NUM_STEPS - 1)
  return atol


@pytest.mark.long
def test_gan_step_matches_the_two_steps():
  # Relativistic + AC-GAN head: every branch of steps.gan_step that reads D's outputs.
  config = make_tiny_config(**{'loss.adversarial': 'relativistic',
                               'loss.auxiliary': 'discriminator_head'})
  assert config.pretrain_steps >= NUM_STEPS  # G's steps below run at the pretraining rate.
  learning_rates = {'generator': config.optimizer.pretrain_learning_rate,
                    'discriminator': config.optimizer.learning_rate}
  states = train.create_train_states(config, jax.random.PRNGKey(0))
  devices = jax.local_devices()
  two_steps = jax.pmap(functools.partial(_two_steps, config=config), axis_name=AXIS,
                       devices=devices, in_axes=(None, None, 0, None), out_axes=None)
  base_vars, base_metrics = _train(config, two_steps, states)
  variables, metrics = _train(
      config, steps.make_pmapped_steps(config, devices, donate=False)[1], states)
  assert metrics.keys() == base_metrics.keys()
  for k in metrics:
    np.testing.assert_allclose(metrics[k], base_metrics[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for network, learning_rate in learning_rates.items():
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(variables[network]),
                            jax.tree_util.tree_leaves(base_vars[network])):
      name = network + jax.tree_util.keystr(path)
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=_tolerance(name, learning_rate),
                                 err_msg=name)


def test_after_is_a_dependency_xla_keeps_and_changes_no_value():
  """steps._after: x's values exactly (an inf or a NaN in what it waits for too), and the
  compiled program still reads what it waits for (an optimization barrier does not survive
  XLA:CPU's compilation; this dependency must)."""
  after = jax.jit(lambda x, earlier: steps._after(x, earlier))  # pylint: disable=protected-access
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  earlier = {'a': np.array([2.0, 1.0], np.float32), 'b': np.array([np.nan], np.float32),
             'c': np.array([np.inf], np.float32)}
  np.testing.assert_array_equal(after(x, earlier), x)
  hlo = after.lower(x, earlier).compile().as_text()
  entry = hlo[hlo.index('ENTRY'):]
  for i in (1, 2, 3):  # The leaves of `earlier`.
    param = re.search(rf'(%\S+) = \S+ parameter\({i}\)', entry)
    assert param, f'no parameter {i}:\n{entry}'
    name = param.group(1)
    assert re.search(rf'\({name}[,)]|, {name}[,)]', entry), f'parameter {i} unused:\n{entry}'


def _entry_computation(hlo: str):
  """{instruction: its operands}, {instruction: its op_name} of a compiled program's entry."""
  entry = hlo[hlo.index('\nENTRY'):]
  operands, op_names = {}, {}
  for line in entry[entry.index('{') + 1:].splitlines():
    match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (.*)', line)
    if match:
      name, rest = match.groups()
      operands[name] = set(re.findall(r'%([\w.\-]+)', rest))
      op_name = re.search(r'op_name="([^"]*)"', rest)
      op = re.search(r' ([a-z][\w\-]*)\(', ' ' + rest)
      op_names[name] = (op and op.group(1), op_name.group(1) if op_name else '')
  return {k: v & operands.keys() for k, v in operands.items()}, op_names


def _unordered_passes(hlo: str):
  """(convolution, all-reduce) op_names of the program's forward convolutions (of G, D and
  VGG19) and all-reduces (BatchNorm's, the gradients') that no chain of data dependencies
  orders, the one thing XLA:CPU's runtime orders by."""
  operands, op_names = _entry_computation(hlo)
  ancestors = {}

  def ancestors_of(name):
    if name not in ancestors:
      seen, stack = set(), list(operands[name])
      while stack:
        node = stack.pop()
        if node not in seen:
          seen.add(node)
          stack.extend(operands[node])
      ancestors[name] = seen
    return ancestors[name]
  all_reduces = [n for n, (op, _) in op_names.items() if op in ('all-reduce', 'all-reduce-start')]
  convs = [n for n, (op, op_name) in op_names.items()
           if op == 'convolution' and op_name and 'transpose(' not in op_name]
  assert all_reduces and convs, hlo
  return [(op_names[c][1], op_names[a][1]) for c in convs for a in all_reduces
          if a not in ancestors_of(c) and c not in ancestors_of(a)]


@pytest.mark.long
@pytest.mark.parametrize('step', ['pretrain', 'gan', 'discriminator'])
def test_every_device_runs_the_passes_in_one_order(step):
  """In the compiled steps, every forward convolution is ordered with every all-reduce by data
  dependencies (steps._after): XLA:CPU runs independent operations in an order each device
  picks, and a device that reaches an all-reduce first waits there while the other runs the
  other branch (the GAN iteration's devices waited up to 330 ms at D's BatchNorm all-reduces
  while the other ran VGG19). With _after made the identity, it fails for each of the three."""
  config = make_tiny_config(**{'loss.content': 'vgg', 'loss.vgg.layers': {'conv2_1': 1.0},
                               'loss.vgg.random_weights_for_benchmark': True,
                               'loss.adversarial': 'relativistic',
                               'loss.auxiliary': 'discriminator_head'})
  params, feature_fn = vgg.load_feature_extractor(config.loss.vgg)
  frozen = steps.Frozen(vgg_params=params, vgg_fn=feature_fn)
  devices = jax.local_devices()
  g_state, d_state = distributed.replicate(
      train.create_train_states(config, jax.random.PRNGKey(0)), devices, AXIS)
  split = input_pipeline.load_split(config, 'train')
  batch = input_pipeline.shard(input_pipeline.get_batch(split, input_pipeline.batch_indices(
      config.seed, 0, config.batch_size, split.num_examples)), len(devices))
  pretrain, gan = steps.make_pmapped_steps(config, devices, donate=False)
  if step == 'discriminator':
    d_step = jax.pmap(functools.partial(steps.discriminator_step, config=config),
                      axis_name=AXIS, in_axes=(None, 0, 0), out_axes=None, devices=devices)
    lowered = d_step.lower(d_state, batch, batch['hr'].astype(np.float32))
  else:
    lowered = {'pretrain': pretrain, 'gan': gan}[step].lower(g_state, d_state, batch, frozen)
  unordered = _unordered_passes(lowered.compile().as_text())
  assert not unordered, sorted(set(unordered))[:10]
