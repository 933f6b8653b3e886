"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` from flags or env vars.

One process per host (or several on one host, e.g. for tests), all running the same program:

  # host 0                                   # host 1
  python main.py ... \\                       python main.py ... \\
    --coordinator_address=10.0.0.1:1234 \\     --coordinator_address=10.0.0.1:1234 \\
    --num_processes=2 --process_id=0           --num_processes=2 --process_id=1

or the same through the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
jax 0.10 reads JAX_COORDINATOR_ADDRESS (and JAX_LOCAL_DEVICE_IDS) itself, but the process
count and id only through its cluster auto-detection (Slurm, Open MPI, Kubernetes, Cloud TPU),
so this module reads JAX_NUM_PROCESSES / JAX_PROCESS_ID. Flags win over the environment.
With no coordinator anywhere, nothing happens: a single process, as before.

On CPU the cross-process collectives (the pmean of gradients and BatchNorm statistics) need a
collectives implementation; ``initialize`` selects gloo (over TCP) before JAX starts its
backends, unless JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise.

Must run before any JAX computation (jax.distributed.initialize refuses afterwards).
Training across processes also needs the pmapped steps built over the *global* devices
(``jax.devices()``): in jax 0.10 ``jax.pmap(..., devices=jax.local_devices())`` builds its mesh
from the local devices only, so its pmean stays inside each process.
"""

import dataclasses
import os
from typing import Optional

from absl import flags
from absl import logging
import jax
import numpy as np

from srgan_jax.errors import DistributedConfigError

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
ENV_CPU_COLLECTIVES = 'JAX_CPU_COLLECTIVES_IMPLEMENTATION'
DEFAULT_CPU_COLLECTIVES = 'gloo'


@dataclasses.dataclass(frozen=True)
class Settings:
  coordinator_address: str
  num_processes: int
  process_id: int


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name, '').strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedConfigError(f'{name}={value!r} is not an integer.') from None


def resolve(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
            process_id: Optional[int] = None) -> Optional[Settings]:
  """The multi-process settings from the arguments, else the environment; None: one process.

  Raises DistributedConfigError when they are incomplete or inconsistent.
  """
  address = coordinator_address or os.environ.get(ENV_COORDINATOR, '').strip() or None
  count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if address is None:
    if (count is not None and count > 1) or (index is not None and index > 0):
      raise DistributedConfigError(
          f'num_processes={count}, process_id={index} but no coordinator address: pass '
          f'--coordinator_address=HOST:PORT (process 0 listens there) or set {ENV_COORDINATOR}.')
    return None
  if ':' not in address:
    raise DistributedConfigError(
        f'coordinator address {address!r} must be HOST:PORT, e.g. 10.0.0.1:1234.')
  if count is None or index is None:
    raise DistributedConfigError(
        f'coordinator {address!r} given, but the number of processes ({count}) or this '
        f'process id ({index}) is missing: pass --num_processes and --process_id, or set '
        f'{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}.')
  if count < 1 or not 0 <= index < count:
    raise DistributedConfigError(
        f'process_id={index} must be in [0, num_processes={count}) and num_processes >= 1.')
  return Settings(address, int(count), int(index))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, initialization_timeout: int = 300) -> bool:
  """Joins a multi-process JAX job when a coordinator is given; returns whether it did.

  Arguments (or, when None, JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)
  name the coordinator (process 0 serves it at that address), the number of processes and
  this process's id. Without a coordinator this is a no-op returning False. Calling it again
  after a successful call is a no-op returning True.
  """
  settings = resolve(coordinator_address, num_processes, process_id)
  if settings is None:
    return False
  if jax.distributed.is_initialized():
    return True
  if not os.environ.get(ENV_CPU_COLLECTIVES):
    # Cross-process pmean on CPU devices; jax 0.10 defaults to gloo too, but say so.
    jax.config.update('jax_cpu_collectives_implementation', DEFAULT_CPU_COLLECTIVES)
  logging.info('Joining a %d-process JAX job as process %d (coordinator %s).',
               settings.num_processes, settings.process_id, settings.coordinator_address)
  try:
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id,
                               initialization_timeout=initialization_timeout)
  except RuntimeError as e:
    if 'before any JAX computations' in str(e):
      raise RuntimeError(f'{e} Call srgan_jax.distributed.initialize() first thing in main(), '
                         'before anything that touches jax devices or arrays.') from e
    raise
  return True


# ---------------------------------------------------------------------------------------------
# Flags for main.py.

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --coordinator_address, --num_processes and --process_id (once)."""
  if 'coordinator_address' in flag_values:
    return
  flags.DEFINE_string('coordinator_address', None,
                      f'HOST:PORT of process 0 for a multi-process run (or ${ENV_COORDINATOR}). '
                      'Unset: one process.', flag_values=flag_values)
  flags.DEFINE_integer('num_processes', None,
                       f'Number of processes of a multi-process run (or ${ENV_NUM_PROCESSES}).',
                       flag_values=flag_values)
  flags.DEFINE_integer('process_id', None,
                       f'This process, 0..num_processes-1 (or ${ENV_PROCESS_ID}).',
                       flag_values=flag_values)


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
  """initialize() with the values of the flags from define_flags (env vars where unset)."""
  return initialize(flag_values.coordinator_address, flag_values.num_processes,
                    flag_values.process_id)


# ---------------------------------------------------------------------------------------------
# Helpers for a training loop that spans processes.


def global_devices():
  """The devices of every process, grouped by process: what the pmapped train steps need.

  This is the order jax.pmap uses itself when `devices` is None, so each process's shard of
  the global batch (input_pipeline.batch_indices(..., process_index, process_count)) lands on
  its own devices, in the same order as in a single-process run.
  """
  return [d for p in range(jax.process_count()) for d in jax.local_devices(process_index=p)]


def replicate(tree, devices, axis_name: str = 'batch'):
  """`tree` placed once on every device of the pmap mesh over `devices` (the sharding that
  pmap's outputs with out_axes=None have), so that a pmapped step sees the same input sharding
  from its first call on and compiles once; for several processes, `devices` is
  global_devices()."""
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray(devices), (axis_name,)),
                                        jax.sharding.PartitionSpec())
  return jax.device_put(tree, sharding)
