"""benchmarks.conv_library: each library timed in its own process, lines that parse back, and
the ratio of the sums (no timed asserts)."""

import io
import math

import pytest

from benchmarks import conv_library
from srgan_jax import platform

TINY = (2, 8, 4, 4, 3)


def test_lines_parse_back():
  line = conv_library.format_line(TINY, 'eigen', {'fwd': 1.5, 'dx': 2.0, 'dw': 0.25})
  assert line == 'conv: 3x3x4->4@8x8/b2 eigen fwd=1.500 dx=2.000 dw=0.250'
  assert conv_library.parse_lines(f'info: x\n{line}\n') == {
      ('3x3x4->4@8x8/b2', 'eigen'): {'fwd': 1.5, 'dx': 2.0, 'dw': 0.25}}


@pytest.mark.long
def test_each_library_in_its_own_process():
  out = io.StringIO()
  ratios = conv_library.compare([TINY], runs=1, out=out)
  lines = conv_library.parse_lines(out.getvalue())
  assert set(lines) == {('3x3x4->4@8x8/b2', library) for library in platform.CONV_LIBRARIES}
  for phases in lines.values():
    assert set(phases) == {'fwd', 'dx', 'dw'} and all(v > 0 for v in phases.values())
  name = conv_library.layer_name(TINY)
  assert math.isclose(ratios[name], sum(lines[name, 'ynnpack'].values()) /
                      sum(lines[name, 'eigen'].values()))
  assert f'ratio: {name} ynnpack/eigen = ' in out.getvalue()
