"""Process-level set-up of a command before JAX starts: XLA:CPU's host devices, their scheduler,
fusion code generator and convolution library, the allocator's policy for freed memory; and a
log without Orbax's chatter or JAX's note that there is no TPU; and a quick exit."""

import ctypes
import gc
import importlib.metadata
import os
import re
from typing import Optional

from absl import logging

from srgan_jax import errors
from srgan_jax import native

_HOST_DEVICES_FLAG = '--xla_force_host_platform_device_count'
# XLA:CPU (jax 0.10) hands each convolution to YNNPACK unless this fusion type is removed; it
# then runs on XLA's own (Eigen) convolution. YNNPACK keeps its other fusions (dots, elementwise).
_YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
_YNN_CONVOLUTIONS_OFF = f'{_YNN_FUSION_FLAG}=-individual_convolution'
CONV_LIBRARIES = ('eigen', 'ynnpack')
# XLA:CPU's concurrency-optimized scheduler (on by default in jax 0.10) orders a step's ops so
# that independent ones can run side by side; with one device per core, XLA's default order was
# faster. Measured on a 2-core Intel Xeon (benchmarks/README.md, 2026-12-02): the SRResNet
# pretrain step 384-389 -> 428-443 images/s, the seed CNN step and the GAN iteration 1-4%.
_SCHEDULER_FLAG = '--xla_cpu_enable_concurrency_optimized_scheduler'
# XLA:CPU (jax 0.10) generates its fusions' code with its new MLIR-based emitters unless this is
# false; its older LLVM IR emitter compiles them faster and ran this project's steps as fast or
# faster (benchmarks/README.md: AVX2 AMD EPYC, 2026-12-04).
_FUSION_EMITTERS_FLAG = '--xla_cpu_use_fusion_emitters'
# XLA aborts a process whose XLA_FLAGS names a flag it does not know ("Unknown flag in
# XLA_FLAGS"), and its CPU flags come and go between releases: each tuning flag is set only on
# the jaxlib releases (major, minor) seen to accept it. jax 0.11.2 (an H200 machine's, 2026-12-04)
# accepted the scheduler and YNNPACK flags and aborted on the fusion-emitter one.
_FLAG_RELEASES = {
    _SCHEDULER_FLAG: ((0, 10), (0, 11)),
    _YNN_FUSION_FLAG: ((0, 10), (0, 11)),
    _FUSION_EMITTERS_FLAG: ((0, 10),),
}


def jaxlib_release() -> tuple:
  """(major, minor) of the installed jaxlib, read from its metadata (imports nothing)."""
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(p) for p in re.findall(r'\d+', version)[:2])


def _xla_knows(flag: str) -> bool:
  """Whether this jaxlib's XLA is known to accept `flag`; logs the skip when not."""
  if jaxlib_release() in _FLAG_RELEASES[flag]:
    return True
  seen = ', '.join('.'.join(map(str, r)) for r in _FLAG_RELEASES[flag])
  logging.info('XLA_FLAGS: %s left unset: it was seen on jaxlib %s, not on this jaxlib %s '
               '(XLA aborts on flags it does not know; set it yourself if yours has it).',
               flag, seen, '.'.join(map(str, jaxlib_release())) or '(none)')
  return False


def _xla_flag(flag: str) -> Optional[str]:
  """The value XLA_FLAGS gives `flag` (its last setting, the one XLA keeps); None if unset."""
  values = [f.partition('=')[2] for f in os.environ.get('XLA_FLAGS', '').split()
            if f.partition('=')[0] == flag]
  return values[-1] if values else None


def configure_cpu_devices(enabled: bool = True) -> None:
  """One XLA host device per CPU core, so pmap spreads convolutions over all cores, each
  device's ops in XLA's default order rather than its concurrency-optimized one.

  XLA:CPU runs each convolution on a single core; with one host device per core the pmapped
  train steps use every core (measured: 2x conv throughput on a 2-core machine). Harmless on
  GPU/TPU, where the host devices are not used. Respects a device count and a scheduler
  setting already in XLA_FLAGS. Call before the first JAX computation (importing jax is fine:
  its backends start lazily).
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if not enabled:
    return
  if _SCHEDULER_FLAG not in flags and _xla_knows(_SCHEDULER_FLAG):
    flags = f'{flags} {_SCHEDULER_FLAG}=false'
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  if _HOST_DEVICES_FLAG not in flags and cores and cores > 1:
    flags = f'{flags} {_HOST_DEVICES_FLAG}={cores}'
  os.environ['XLA_FLAGS'] = flags.strip()


def configure_cpu_fusion_emitters(new: bool = False) -> None:
  """Which code generator XLA:CPU compiles its fusions (elementwise loops, concatenations,
  transposes: what is not a library call) with: its new MLIR-based emitters, or by default
  here its older LLVM IR emitter.

  Measured on a 2-core AVX2 AMD EPYC (family 25), in turns, JAX side of benchmarks.compare,
  images/s, older vs new: the seed CNN step 807-862 vs 776-800, the SRResNet step 397-398 vs
  352-375, the GAN iteration 54.4-55.5 vs 55.8-57.2; compiling the CNN step 8.2-9.2 vs
  12.0-12.6 s, and the main job's conv tuning 8.7 vs 11.0 s (its candidates are small
  programs that compile more than they run). The setting is process-wide, so `conv_tuning`
  keys its decisions by it. Respects a setting already in XLA_FLAGS. Call before the first JAX
  computation.
  """
  if _xla_flag(_FUSION_EMITTERS_FLAG) is None and _xla_knows(_FUSION_EMITTERS_FLAG):
    flags = os.environ.get('XLA_FLAGS', '')
    os.environ['XLA_FLAGS'] = f'{flags} {_FUSION_EMITTERS_FLAG}={str(new).lower()}'.strip()


def cpu_fusion_emitters() -> str:
  """'new' or 'older': the fusion code generator of XLA:CPU in this process, as XLA_FLAGS
  sets it (XLA's default: 'new')."""
  value = _xla_flag(_FUSION_EMITTERS_FLAG)
  return 'older' if value is not None and value.lower() in ('false', '0') else 'new'


def configure_cpu_convolutions(library: str = 'eigen') -> None:
  """Which library XLA:CPU runs its convolutions on (what the 'xla' conv implementation means):
  'eigen' (XLA's own) or 'ynnpack' (XLA:CPU's default in jax 0.10).

  Measured on a 2-core Intel Xeon (cpu family 6 model 167, AVX-512): YNNPACK's input and
  kernel gradients were 2-4x slower than Eigen's for most of this project's convs (the seed
  CNN's 3x3x32->64 at 28x28: kernel gradient 54 vs 14 ms), and with Eigen the seed CNN's train
  step ran 1.4-1.5x faster, the seed's GAN iteration 1.2x (benchmarks/README.md). Eigen's
  results depend in their last bits on the device count (it blocks work by a device's
  threads), so a checkpoint restored on another count matches to float rounding, not bit for
  bit. The setting is process-wide, so `conv_tuning` keys its decisions by it. Respects a
  YNNPACK fusion setting already in XLA_FLAGS. Call before the first JAX computation.
  """
  if library not in CONV_LIBRARIES:
    raise errors.ConfigError(f'config.cpu_conv_library = {library!r} is not supported; use one '
                             f'of {list(CONV_LIBRARIES)}.')
  if library == 'eigen' and _xla_flag(_YNN_FUSION_FLAG) is None and _xla_knows(_YNN_FUSION_FLAG):
    flags = os.environ.get('XLA_FLAGS', '')
    os.environ['XLA_FLAGS'] = f'{flags} {_YNN_CONVOLUTIONS_OFF}'.strip()


def cpu_conv_library() -> str:
  """The library XLA:CPU runs convolutions on in this process, as XLA_FLAGS sets it."""
  ynn = _xla_flag(_YNN_FUSION_FLAG)
  if ynn is None:
    return 'ynnpack'
  types = ynn.split(',')
  if all(t[:1] in '+-' for t in types):  # Changes to XLA's default list, which has convs.
    return 'eigen' if '-individual_convolution' in types else 'ynnpack'
  return 'ynnpack' if 'individual_convolution' in types else 'eigen'  # The whole list.


# glibc's mallopt parameters (<malloc.h>).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_TOP_PAD_BYTES = 1 << 28
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, _TOP_PAD_BYTES),
             (_M_ARENA_MAX, 1))
# The same settings as glibc tunables, for a process started with them (benchmarks.compare's
# PyTorch side, when asked to run under the same policy).
KEEP_FREED_MEMORY_TUNABLES = (f'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={2**31 - 1}:'
                              f'glibc.malloc.top_pad={_TOP_PAD_BYTES}')
# A user's own malloc settings (glibc's tunables, or its older MALLOC_*_ variables) win.
_MALLOC_ENV = ('GLIBC_TUNABLES', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_')


def keep_freed_memory() -> bool:
  """glibc's malloc keeps the memory a train step frees for the next step, instead of handing
  it back to the kernel; returns whether the setting was made (glibc only, and only when the
  environment sets none of malloc's own settings).

  A step allocates and frees XLA's buffers of up to ~100 MB; glibc serves those with mmap and
  returns them with munmap (its default for blocks over 32 MiB, and for smaller ones in the
  worker threads' arenas), so the next step faults in fresh zeroed pages again: 74.6 million
  minor page faults (285 GiB) and 186 s of system time in the main job. Measured on a 2-core
  AMD EPYC (cpu family 25, AVX2, a VM guest; benchmarks/README.md, 2026-12-03), in turns: the
  seed CNN step 464-475 -> 550-557 images/s, the SRResNet pretrain step 280-288 -> 325-327. The
  price is a resident size that stays at its peak, which a training process reaches anyway.
  All threads share one arena (M_ARENA_MAX=1): a block of 64 MiB or more that a worker thread
  allocates would otherwise be mapped afresh each time (glibc's thread arenas grow no larger),
  and XLA:CPU allocates each step's temporaries as one block, 115 MB in the seed CNN step once
  its convs are Winograd's (64 MB before). Measured on the same AVX2 EPYC (2026-12-03, in
  turns): the seed CNN step 64,000 -> 2,600 page faults a step, 470-486 -> 635-663 images/s;
  the GAN iteration 49-51 -> 50-56; the SRResNet step 293-300 -> 283-311 (one arena had made
  the two steps 4-10% slower before, when every block fitted a thread's arena). Call early
  (blocks already mapped keep their policy, threads keep the arena they have).
  """
  if any(name in os.environ for name in _MALLOC_ENV):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (AttributeError, OSError):  # Not glibc (macOS, musl): nothing to do.
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all([mallopt(param, value) == 1 for param, value in _SETTINGS])


# XLA's flag for the widest vector instructions its CPU code may use (e.g. AVX2).
XLA_MAX_ISA_FLAG = '--xla_cpu_max_isa'


def held_isa() -> str:
  """What holds this process's code below its CPU's vector instructions, '' when nothing does:
  XLA's (--xla_cpu_max_isa in XLA_FLAGS) and the C++ passes' (native.MARCH_ENV), as
  benchmarks.targets --isa=avx2 sets them. Part of the conv tuner's cache key when set."""
  xla = _xla_flag(XLA_MAX_ISA_FLAG)
  march = os.environ.get(native.MARCH_ENV)
  return ', '.join(filter(None, (f'XLA max ISA {xla}' if xla else '',
                                 f'C++ -march={march}' if march else '')))


# Orbax's warning on opening a checkpoint directory read-only (checkpoint_manager.py).
_ORBAX_READ_ONLY = 'Given directory is read only'
# JAX's INFO record that it found no TPU runtime (xla_bridge.py): the first line of every run
# on a CPU or GPU ("Unable to initialize backend 'tpu': ... libtpu.so ..."), though nothing
# is wrong. Its records about other backends (a GPU that did not start) pass.
_JAX_NO_TPU = "Unable to initialize backend 'tpu'"


def quiet_logs(min_level: int = logging.WARNING) -> None:
  """Keeps Orbax's records below `min_level` (absl level: INFO, WARNING, ERROR) out of the log,
  its warning that a directory is read-only, and JAX's INFO note that there is no TPU.

  Orbax logs several INFO lines per save and restore; a training log should show our own
  lines. It also warns each time a checkpoint directory is opened read-only, which is how the
  guide, the judge and a resume's checks open theirs on purpose (8 warnings in the main job).
  Every other record passes as it is.
  """
  threshold = logging.converter.absl_to_standard(min_level)
  info = logging.converter.absl_to_standard(logging.INFO)

  def keep(record) -> bool:
    if 'orbax' in record.pathname:
      return record.levelno >= threshold and not str(record.msg).startswith(_ORBAX_READ_ONLY)
    return record.levelno > info or not str(record.msg).startswith(_JAX_NO_TPU)

  logging.get_absl_handler().addFilter(keep)


def configure_cpu(devices_per_core: bool = True, conv_library: str = 'eigen') -> bool:
  """main.py's set-up of XLA:CPU for training, before the first JAX computation: one host
  device per core (config.cpu_devices_per_core), the convolution library
  (config.cpu_conv_library), the fusion code generator, and freed memory kept by malloc.
  Returns whether keep_freed_memory made its setting. The commands that time or profile
  main.py's steps call it too, so that they measure what the main job runs."""
  configure_cpu_devices(devices_per_core)
  configure_cpu_convolutions(conv_library)
  configure_cpu_fusion_emitters()
  return keep_freed_memory()


def freeze_imported_objects() -> None:
  """Takes every object alive now out of Python's garbage collection for the rest of the
  process: called after a command's imports, that is JAX's, Flax's, Orbax's modules and what
  they made (about 160,000 objects), which live as long as the process anyway.

  Python's last collections as it exits walk and free them all: about 0.7 s a process on a
  2-core AMD EPYC (`python -c 'import main'` 2.09 -> 1.40 s), a second on every command, and
  tens of seconds of the test suite's CPU, whose tests start ~45 such processes. Objects made
  afterwards (the run's arrays, steps, files) are collected as before.
  """
  gc.freeze()
