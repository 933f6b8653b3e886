"""Heap growth in a benchmark: which steps and runs faulted in fresh memory, and a warm-up that
lasts until the heap stops growing.

On the 2-core VMs a first-touched page costs 10-35 us, so a step that grows the heap (the
seed GAN iteration's JAX side grows it ~400 MiB at a time, mostly in its first few dozen
steps but seen up to the 76th, or again after other steps have run in between) is 1-3 s
slower than its neighbours: a timed run that holds one measures the growth, not the step
(benchmarks/README.md, section "A third class"). Growth is counted above the fewest pages a
step or run faulted in, so a process whose every step faults in the same big blocks (one whose
allocator maps and unmaps them each step) is not taken for one that grows.
"""

import resource
from typing import Callable, List, Sequence

# Fresh memory above the quietest step's (or run's) that counts as growth. Steady JAX steps
# fault in well under 1 MiB; a growth is ~400 MiB on the GAN iteration.
GROWTH_MIB = 64
# The warm-up before a step's timed runs (settle): this many steps in a row without growth,
# and at most SETTLE_MOST steps (on the GAN iteration 1-2.5 s each on the 2-core VMs). With 3
# the JAX GAN iteration's timed runs still grew the heap (2 of 5, after a settle of 6 steps):
# its growths come at irregular steps for the first few dozen. With 10, 3 of 40 timed runs still
# grew it (2026-12-05): a run of 3 steps in flight can need more heap than one blocked step,
# and in some processes growths came past the 70th step; the median of 5 runs leaves one out.
SETTLE_QUIET = 10
SETTLE_MOST = 60


def fresh_pages() -> int:
  """Pages this process has touched for the first time so far (its minor page faults)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fresh_mib(pages: int) -> float:
  """MiB of memory that `pages` fresh pages hold."""
  return pages * resource.getpagesize() / 2**20


def grew(pages: Sequence[int], growth_mib: float = GROWTH_MIB) -> List[bool]:
  """Whether each step or run of `pages` (their fresh pages) grew the heap: faulted in at
  least `growth_mib` more than the fewest of them did."""
  floor = min(pages, default=0)
  return [fresh_mib(n - floor) >= growth_mib for n in pages]


def settle(step: Callable[[], object], quiet: int = SETTLE_QUIET, most: int = SETTLE_MOST,
           growth_mib: float = GROWTH_MIB) -> List[int]:
  """Calls `step` (which must return when its work is done) until `quiet` calls in a row have
  not grown the heap, or `most` calls; returns each call's fresh pages."""
  pages = []
  while len(pages) < most and (len(pages) < quiet or any(grew(pages, growth_mib)[-quiet:])):
    before = fresh_pages()
    step()
    pages.append(fresh_pages() - before)
  return pages


def settled_note(pages: Sequence[int], quiet: int = SETTLE_QUIET,
                 growth_mib: float = GROWTH_MIB) -> str:
  """What a settle() that returned `pages` did, for a benchmark's log."""
  grown = grew(pages, growth_mib)
  text = (f'{len(pages)} settling steps ({sum(grown)} faulted in {growth_mib:g}+ MiB more than '
          'the quietest)')
  if len(pages) < quiet or any(grown[-quiet:]):
    text += ', still growing: its runs may hold growth'
  return text
