"""The convolution of every network: one square SAME conv (`Conv`, the parameters of `nn.Conv`)
and the several ways of computing it and its two gradients, one chosen per phase.

Which way is fastest depends on the layer and on the machine (XLA:CPU computes some convs and
most of their gradients on slow paths), so `Conv` computes each phase by the implementation its
`ConvPlan` names, which conv_tuning.py measures; 'auto', 'xla' and 'matmul' are fixed rules.
"""

import functools
from typing import NamedTuple, Optional, Tuple
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from srgan_jax import direct_conv
from srgan_jax import onednn
from srgan_jax import winograd

# Strided convs whose patch (k * k * input features) has at most this many values are im2col +
# matmul under 'auto' on CPU (auto_implementation); from this size up, XLA's input gradient of
# a strided conv is not a candidate (phase_candidates).
MAX_MATMUL_PATCH = 3 * 3 * 512

# 'auto': the rule below; 'xla' | 'matmul': that implementation everywhere; 'tuned': per conv,
# what conv_tuning measured fastest on this machine (an explicit ConvPlan).
CONV_IMPLEMENTATIONS = ('auto', 'xla', 'matmul', 'tuned')
# What training computes for a conv: its output, the gradient w.r.t. its input (to reach the
# layers below) and w.r.t. its kernel (to train it). Each can use its own implementation.
CONV_PHASES = ('forward', 'input_grad', 'kernel_grad')
# The candidates of each phase: 'xla' (XLA's convolution and its autodiff), 'matmul' (the
# transpose of im2col + matmul: col2im), 'gather' (im2col by one gather, or as tap-major planes,
# + one matmul), 'kn2row' (one matmul of each input pixel with every kernel tap, then the taps'
# shifted outputs summed: the cheap side when a conv has few output features, like the 9x9
# convs to 1 or 3 channels that end the generator), 'winograd' (Winograd's F(4x4, 3x3): 4x
# fewer multiplies for 3x3 stride-1 convs, see winograd.py), 'xla_t' | 'gather_t' |
# 'winograd_t', which compute a gradient as a conv over the output gradient dilated by the
# stride (see conv_input_grad, conv_kernel_grad), 'xla_dot', XLA's kernel gradient with its
# input turned feature-major by a product with the identity (see _features_first), 'direct',
# stride-1 convs with at most 4 features on one side computed directly in C++ (direct_conv.py:
# a generator's 9x9 convs to and from 1 or 3 channels, the first conv of a discriminator or
# classifier; f32 only, where a C++ compiler is at hand), and 'onednn', oneDNN's convolution
# through XLA's FFI: experimental, offered only when opted in and installed (onednn.py; f32
# only).
PHASE_CANDIDATES = {
    'forward': ('xla', 'gather', 'kn2row', 'winograd', 'direct', 'onednn'),
    'input_grad': ('xla', 'matmul', 'xla_t', 'gather_t', 'winograd_t', 'direct', 'onednn'),
    'kernel_grad': ('xla', 'xla_dot', 'gather', 'gather_t', 'winograd', 'direct', 'onednn'),
}
# Bumped when a candidate's program changes under the same name, or the rules of
# phase_candidates change, so that conv_tuning's cached decisions are retimed (2: 'xla' kernel
# gradients with their layouts spelled out, 'kn2row' padding the products instead of the input;
# 3: no 'xla' input gradient for wide strided convs; 4: nor for stride-1 convs; 5: 'gather_t'
# input gradients for convs to fewer features; 6: 'gather_t' kernel gradients at x's pixels;
# 7: 'gather_t' for convs to fewer features only; 8: 'kn2row' tap-major; 9: 'winograd'; 10:
# Winograd's kernel transform as one matmul; 11: no im2col where Winograd applies; 12: the
# 'matmul' input gradient's col2im by stride phases; 13: Winograd's batch in chunks; 14: 'gather'
# and 'gather_t' im2col tap-major; 15: no 'gather' on wide inputs where XLA's convs run on
# Eigen; 16: Winograd's chunks padded one by one; 17: 'xla_dot' kernel gradients; 18: 'onednn';
# 19: 'direct').
CANDIDATES_REVISION = 19
# Candidates whose im2col buffer would exceed this many bytes are not tried, nor those whose
# buffer is over MAX_WORKSPACE_RATIO times another candidate's of the same phase (im2col on
# the wide side of a conv, e.g. of a 9x9 conv's 64 input features when it has 1 output).
MAX_WORKSPACE_BYTES = 1 << 28
MAX_WORKSPACE_RATIO = 2
# 'winograd' is tried for 3x3 stride-1 convs with at least this many input and output
# features: with fewer, the transforms' memory passes cost more than the multiplies they save
# (the first convs of the networks, on 1 or 3 channels, are a few percent of a step anyway).
WINOGRAD_MIN_FEATURES = 16
# Nor on maps smaller than this: their 4x4 tiles pad 7x7 to 8x8 (and 4x4 maps are one tile),
# and each candidate costs ~0.4 s of tuning (its compile). With every size tried, the main
# job's SRGAN networks took 15.6 s to tune (5.9 before), and Winograd won 2 of the 18 phases of
# maps under 14x14 (AVX2 AMD EPYC, 2026-12-03).
WINOGRAD_MIN_SIZE = 14
# With winograd_native's transforms, from 4x4 maps up: they cost little to compile, and on a
# 2-core Intel Xeon (2026-12-04, steps tuned each way, in turns) Winograd then won most phases
# of the 7x7 maps: the SRResNet pretrain step 1.16x, the seed GAN iteration 1.09x.
WINOGRAD_MIN_SIZE_NATIVE = 4
# The im2col candidates, not tried where Winograd is: in the 213 phases of 3x3 stride-1 convs
# that both were timed on (AVX2 AMD EPYC, 2026-12-03, 13 signatures), the faster of them was a
# median 2.4x slower than XLA's or Winograd's, and never faster by more than 1%; each costs
# about 0.15 s of tuning.
IM2COL = ('gather', 'matmul')
# The most input features whose im2col is built tap-major (see _im2col_product).
TAP_MAJOR_MAX_FEATURES = 4
# 'xla_dot' is tried for kernel gradients whose input has more features than
# TAP_MAJOR_MAX_FEATURES and at least this many bytes: below that XLA's transpose costs little
# (and each candidate about 0.1 s of tuning).
DOT_TRANSPOSE_MIN_BYTES = 4 << 20


class ConvSignature(NamedTuple):
  """What the speed of a conv depends on: its per-device input, kernel, stride and dtype."""
  batch: int
  height: int
  width: int
  in_features: int
  features: int
  kernel_size: int
  strides: int
  dtype: str

  def __str__(self):
    k, stride = self.kernel_size, f'/{self.strides}' if self.strides > 1 else ''
    return (f'{k}x{k}x{self.in_features}->{self.features}{stride} @{self.height}x{self.width} '
            f'b{self.batch} {self.dtype}')

  @property
  def output_size(self):
    return -(-self.height // self.strides), -(-self.width // self.strides)

  def padding(self):
    """SAME padding ((top, bottom), (left, right)), as nn.Conv and PyTorch's 'same' pad."""
    k, s = self.kernel_size, self.strides
    oh, ow = self.output_size
    ph, pw = max((oh - 1) * s + k - self.height, 0), max((ow - 1) * s + k - self.width, 0)
    return (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)


class ConvChoice(NamedTuple):
  """The implementation of each phase of one conv (names of PHASE_CANDIDATES)."""
  forward: str = 'xla'
  input_grad: str = 'xla'
  kernel_grad: str = 'xla'


# A plan: ((signature, choice), ...), sorted; a tuple so that modules holding it stay hashable.
ConvPlan = Tuple[Tuple[ConvSignature, ConvChoice], ...]


def conv_signature(x_shape, dtype, kernel_size: int, features: int, strides: int):
  n, h, w, c = x_shape
  return ConvSignature(n, h, w, c, features, kernel_size, strides, jnp.dtype(dtype).name)


def auto_implementation(sig: ConvSignature) -> str:
  """The 'auto' rule: im2col + matmul on CPU for strided convs whose patch has at most
  MAX_MATMUL_PATCH values (XLA:CPU's slowest case), XLA's convolution otherwise."""
  patch = sig.kernel_size * sig.kernel_size * sig.in_features
  use_matmul = sig.strides > 1 and patch <= MAX_MATMUL_PATCH and jax.default_backend() == 'cpu'
  return 'matmul' if use_matmul else 'xla'


def workspace_bytes(sig: ConvSignature, phase: str, implementation: str) -> int:
  """The size of the im2col buffer of a phase's implementation (0: none)."""
  k2 = sig.kernel_size * sig.kernel_size
  oh, ow = sig.output_size
  item = jnp.dtype(sig.dtype).itemsize
  if implementation in ('matmul', 'gather'):
    return sig.batch * oh * ow * k2 * sig.in_features * item
  if implementation == 'kn2row':
    (t, b), (l, r) = sig.padding()
    return sig.batch * (sig.height + t + b) * (sig.width + l + r) * k2 * sig.features * item
  if implementation == 'gather_t':  # im2col of dy at x's pixels, k*k*out features each.
    return sig.batch * sig.height * sig.width * k2 * sig.features * item
  if implementation in ('winograd', 'winograd_t'):
    return winograd.workspace_bytes(sig.batch, sig.height, sig.width, sig.in_features,
                                    sig.features, item)
  return 0


def computes(implementation: str, sig: ConvSignature) -> bool:
  """Whether a phase implementation can compute `sig`: all can, but Winograd's F(4x4, 3x3)
  only 3x3 stride-1 convs, oneDNN's only f32 convs where its module is ready, and the direct
  convs only thin (direct_conv.thin) stride-1 f32 convs where their module is ready."""
  if implementation == 'onednn':
    return sig.dtype == 'float32' and onednn.available()
  if implementation == 'direct':
    return (sig.strides == 1 and sig.dtype == 'float32' and
            sig.kernel_size <= direct_conv.MAX_KERNEL_SIZE and
            direct_conv.thin(sig.in_features, sig.features) and direct_conv.available())
  return not implementation.startswith('winograd') or (
      (sig.kernel_size, sig.strides) == (winograd.KERNEL_SIZE, 1))


def winograd_applies(sig: ConvSignature) -> bool:
  """Whether 'winograd' is a candidate for `sig` (see WINOGRAD_MIN_FEATURES, _SIZE and
  _SIZE_NATIVE)."""
  native = winograd.use_native(sig.dtype)
  return (computes('winograd', sig)
          and min(sig.in_features, sig.features) >= WINOGRAD_MIN_FEATURES
          and min(sig.height, sig.width) >= (WINOGRAD_MIN_SIZE_NATIVE if native
                                             else WINOGRAD_MIN_SIZE))


def phase_candidates(sig: ConvSignature, phase: str,
                     conv_library: str = 'eigen') -> Tuple[str, ...]:
  """The implementations worth trying for a phase of `sig`, the phase's reference first (XLA's
  own, or what stands in for it; conv_tuning times it first and keeps it where tuning would
  not pay): im2col buffers within bounds, no 'xla_t' for strided convs (XLA folds its dilation
  back into its own backprop conv: the same program as 'xla', measured 1.9 vs 2.1 s for a
  stride-2 3x3x512->512 conv on 4x4 maps), and 'kn2row' and 'gather_t' only for convs with
  fewer output than input features: their buffers hold k*k copies of the output side
  (otherwise im2col does the same matmul with a buffer no larger; 3x3x64->64 forward: 31 vs
  5.7 ms for XLA's on an AMD EPYC, kernel gradient 5.9 vs 1.8 ms on an AVX2 one, where the
  generator's last conv, 9x9x64->1 at 28x28, b32, took 7.9-8.7 ms for its 'gather_t' input
  gradient and 11.3 for 'xla_t').

  Nor im2col (IM2COL) where Winograd applies (winograd_applies).

  Nor XLA's input gradient of a stride-1 conv: 'xla_t' is the same conv (of the output
  gradient with the flipped kernel) with the kernel's flip and transpose spelled out, and XLA's
  lost to it in each of the 25 phases timed on an AVX-512 and an AVX2 AMD EPYC (1.04-8x
  slower: 9x9x64->1 @28x28, 12.1 vs 1.5 ms), so it only cost tuning time; 'xla_t' is the
  reference.
  Nor XLA's input gradient of a strided conv whose patch has MAX_MATMUL_PATCH values or more,
  while another candidate is left: XLA:CPU's slowest case, which only costs tuning time. The
  discriminator's stride-2 3x3x512->512 conv on 4x4 maps, b32: 0.66 s a call on an Intel Xeon,
  0.87 s on an AVX-512 AMD EPYC, 1.01 s on an AVX2 one, against 3.9-8.4 ms for 'matmul'.

  Nor 'xla_dot' on inputs of TAP_MAJOR_MAX_FEATURES features or fewer, or of fewer than
  DOT_TRANSPOSE_MIN_BYTES bytes.

  Nor 'onednn' unless its FFI module is ready in this process (onednn.available()) and the conv
  is f32; nor 'direct' unless it computes the conv (computes).

  Nor, where XLA:CPU runs its convs on Eigen (`conv_library`, platform.cpu_conv_library()),
  'gather' on inputs of more than TAP_MAJOR_MAX_FEATURES features: it is the product that
  Eigen's convolution computes, with the patches written to memory first. In the tuning caches
  of the AVX2 AMD EPYC (2026-12-03 and 04: 1679 timings of 46 such phases of 26 signatures,
  forward and kernel gradient) it was a median 1.6x slower than the best of the others, each
  phase's median 1.09-8.6x, and it won 5 times, by at most 13%, on 4x4 maps where it lost by a
  median 9-19%; it cost ~0.07 s of compiling and two calls a phase. On YNNPACK, whose kernel
  gradients are slow, it won them (an AVX-512 AMD EPYC: the discriminator's 3x3x64->128 @14x14,
  30 vs 63 ms), so there it stays.
  """
  fast_3x3 = winograd_applies(sig)
  x_bytes = sig.batch * sig.height * sig.width * sig.in_features * jnp.dtype(sig.dtype).itemsize
  sizes = {c: workspace_bytes(sig, phase, c) for c in PHASE_CANDIDATES[phase]
           if not (c == 'xla_t' and sig.strides > 1)
           and not (c == 'xla_dot' and (sig.in_features <= TAP_MAJOR_MAX_FEATURES
                                        or x_bytes < DOT_TRANSPOSE_MIN_BYTES))
           and not (c in ('kn2row', 'gather_t') and sig.features >= sig.in_features)
           and not (c.startswith('winograd') and not fast_3x3)
           and not (c in IM2COL and fast_3x3)
           and not (c == 'gather' and conv_library == 'eigen'
                    and sig.in_features > TAP_MAJOR_MAX_FEATURES)
           and not (c in ('onednn', 'direct') and not computes(c, sig))}
  # The ratio compares im2col-like buffers (k*k copies of one side) with one another; Winograd's
  # transformed tiles are not one of them, and would otherwise rule out im2col on both sides.
  smallest = min([b for c, b in sizes.items() if b and not c.startswith('winograd')] or [0])
  within = tuple(c for c, b in sizes.items() if b <= MAX_WORKSPACE_BYTES and (
      not b or c.startswith('winograd') or b <= MAX_WORKSPACE_RATIO * smallest))
  if phase != 'input_grad':
    return within
  if sig.strides == 1:
    return ('xla_t',) + tuple(c for c in within if c not in ('xla', 'xla_t'))
  patch = sig.kernel_size * sig.kernel_size * sig.in_features
  if patch >= MAX_MATMUL_PATCH and len(within) > 1:
    return tuple(c for c in within if c != 'xla')
  return within


def _taps(xp, k: int, s: int, oh: int, ow: int):
  return [xp[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]
          for i in range(k) for j in range(k)]


def _gather_patches(xp, k: int, s: int, oh: int, ow: int):
  """im2col of a padded NHWC input with one gather: (N, oh, ow, k*k*C), taps major.

  The same values as concatenating the k*k shifted slices, but XLA:CPU compiles a gather ~10x
  faster than a concatenation of k*k slices (0.07 vs 0.3-2 s), which is what tuning pays for.
  """
  n, hp, wp, c = xp.shape
  rows = np.arange(oh)[:, None, None, None] * s + np.arange(k)[None, None, :, None]
  cols = np.arange(ow)[None, :, None, None] * s + np.arange(k)[None, None, None, :]
  patches = jnp.take(xp.reshape(n, hp * wp, c), (rows * wp + cols).reshape(-1), axis=1)
  return patches.reshape(n, oh, ow, k * k * c)


def _tap_major_patches(xp, k: int, s: int, oh: int, ow: int):
  """im2col of a padded NHWC input, tap-major: (k*k*C, N*oh*ow), rows in the order of an HWIO
  kernel's (k, k, C), each row a contiguous plane: the input's feature planes shifted by each
  tap's row (one copy), then by its column (k*k planes)."""
  n, _, _, c = xp.shape
  planes = xp.transpose(3, 0, 1, 2)  # (C, N, H, W)
  rows = jnp.stack([planes[:, :, i:i + (oh - 1) * s + 1:s] for i in range(k)])
  rows = jax.lax.optimization_barrier(rows)  # (k, C, N, oh, W)
  taps = jnp.stack([rows[..., j:j + (ow - 1) * s + 1:s] for j in range(k)], 1)
  return taps.reshape(k * k * c, n * oh * ow)


def _im2col_product(xp, k: int, s: int, oh: int, ow: int, other, transposed: bool = False):
  """im2col(xp) (N*oh*ow, k*k*C) @ other (k*k*C, F), or with `transposed` its transpose
  (k*k*C, N*oh*ow) @ other (N*oh*ow, F).

  With at most TAP_MAJOR_MAX_FEATURES features the patches are built tap-major
  (_tap_major_patches), otherwise by one gather. A gather of so few floats at a time was most
  of the generator's last conv's gradients: on an AVX2 AMD EPYC, the kernel gradient of
  9x9x64->3 at 28x28, b64, 79-82 vs 39 ms tap-major, of 9x9x64->1 at b32 13-16 vs 6-7 (and the
  seed CNN's 3x3x1->32 forward 2.8-3.3 vs 1.8-2.2). With wide inputs the gather was faster
  (3x3x64->64/2 forward 20 vs 29 ms) and compiles faster (0.06 vs 0.1-0.3 s, which tuning
  pays), so it stays there (benchmarks/README.md, 2026-12-04).
  """
  c = xp.shape[-1]
  if c <= TAP_MAJOR_MAX_FEATURES:
    patches = _tap_major_patches(xp, k, s, oh, ow)
    return patches @ other if transposed else jax.lax.dot_general(
        patches, other, (((0,), (0,)), ((), ())))
  patches = _gather_patches(xp, k, s, oh, ow).reshape(-1, k * k * c)
  return patches.T @ other if transposed else patches @ other


def _valid_conv(implementation: str, xp, kernel, s: int):
  """A VALID conv of an already padded NHWC input with an HWIO kernel."""
  k, _, c, f = kernel.shape
  if implementation == 'xla':
    return jax.lax.conv_general_dilated(xp, kernel, (s, s), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  n, hp, wp, _ = xp.shape
  oh, ow = (hp - k) // s + 1, (wp - k) // s + 1
  if implementation == 'matmul':
    patches = jnp.concatenate(_taps(xp, k, s, oh, ow), axis=-1)
  elif implementation == 'gather':
    return _im2col_product(xp, k, s, oh, ow, kernel.reshape(k * k * c, f)).reshape(n, oh, ow, f)
  elif implementation == 'kn2row':
    return _kn2row(xp, kernel, s, ((0, 0), (0, 0)))
  elif implementation == 'winograd':  # Its 3x3 stride-1 convs pad their own chunks (conv_forward).
    raise ValueError(f"The conv implementation 'winograd' computes 3x3 stride-1 convs only, "
                     f'not {k}x{k} at stride {s}.')
  else:
    raise ValueError(f'Unknown conv implementation {implementation!r}.')
  y = patches.reshape(-1, k * k * c) @ kernel.reshape(k * k * c, f)
  return y.reshape(n, oh, ow, f)


def conv_forward(implementation: str, x, kernel, s: int, bias=None):
  """The SAME conv of x (NHWC) with an HWIO kernel at stride s, plus `bias` (f) if given
  (Winograd's native output transform adds it as it writes the output: no pass of its own)."""
  sig = conv_signature(x.shape, x.dtype, kernel.shape[0], kernel.shape[-1], s)
  if implementation == 'winograd' and computes(implementation, sig):
    return winograd.conv(x, kernel, sig.padding(), bias=bias)
  if implementation == 'onednn':
    y = onednn.conv_forward(x, kernel, s, sig.padding(), sig.output_size)
  elif implementation == 'direct' and computes(implementation, sig):
    y = direct_conv.conv(x, kernel, sig.padding())
  elif implementation == 'kn2row':
    y = _kn2row(x, kernel, s, sig.padding())
  else:
    y = _valid_conv(implementation, jnp.pad(x, ((0, 0),) + sig.padding() + ((0, 0),)),
                    kernel, s)
  return y if bias is None else y + bias


def _kn2row(x, kernel, s: int, padding):
  """kn2row (Vasudevan et al. 2017): z[tap, pixel] = kernel[tap] @ x[pixel] for every input
  pixel, then y[p] = sum over taps t of z[t, p + t], which XLA fuses into one pass over z.

  z is tap-major, one plane per tap and output feature, so that each tap's term is a shifted
  copy of a contiguous plane, padded by lax.pad (the zeros that padded pixels would give) in
  the same fused pass. Pixel-major, the sum read each tap 81 floats apart and the padded z
  was written out first: on an AVX2 AMD EPYC, 9x9x64->3 at 28x28, b64, 108-118 vs 42-44 ms
  (XLA's: 101), 9x9x64->1 b32 7.4-8.2 vs 6.3-6.7 (benchmarks/README.md, 2026-12-03). Padding
  x instead, XLA:CPU fused the pad into the loop that recomputes x when x is a fused layout
  change (the pixel shuffle before the generator's last conv), and the matmul ran over the
  padded pixels too.
  """
  k, _, c, f = kernel.shape
  n, h, w, _ = x.shape
  taps_by_in = kernel.reshape(k * k, c, f).transpose(1, 0, 2).reshape(c, k * k * f)
  z = jax.lax.dot_general(taps_by_in, x.reshape(-1, c), (((0,), (1,)), ((), ())))
  z = z.reshape(k, k, f, n, h, w)
  (lo_h, hi_h), (lo_w, hi_w) = padding
  oh, ow = (h + lo_h + hi_h - k) // s + 1, (w + lo_w + hi_w - k) // s + 1
  lh, lw = (oh - 1) * s + 1, (ow - 1) * s + 1  # The rows and columns a tap's term spans.
  zero = jnp.zeros((), x.dtype)
  terms = (jax.lax.pad(z[i, j], zero, ((0, 0, 0), (0, 0, 0), (lo_h - i, lh - h - lo_h + i, 0),
                                       (lo_w - j, lw - w - lo_w + j, 0)))[:, :, ::s, ::s]
           for i in range(k) for j in range(k))
  return functools.reduce(jnp.add, terms).transpose(1, 2, 3, 0)  # (F, n, oh, ow) -> NHWC


def _dilated(dy, pads):
  """dy with s-1 zeros between its pixels and the given (low, high) pads (negative: crop)."""
  return jax.lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0),) + tuple(pads) + ((0, 0, 0),))


def _col2im(taps, s: int, hp: int, wp: int):
  """The transpose of im2col at stride s: (N, oh, ow, k, k, C) tap gradients summed at the
  pixels of a padded (N, hp, wp, C) input they read.

  By stride phases: the pixels at row r = s*m + p get the taps i = p (mod s), each shifted by
  i // s, so each phase is a sum of plain shifted slices; the phases are interleaved by one
  reshape. Autodiff's col2im pads each tap with interior padding (the stride) instead, and
  XLA:CPU evaluated all k*k pads for every pixel: 16 ms a device for the discriminator's
  3x3x64->64/2 at 28x28, b32 (AVX2 AMD EPYC, 2026-12-04).
  """
  n, oh, ow, k, _, c = taps.shape
  mh, mw = -(-hp // s), -(-wp // s)
  phases = []
  for p in range(s):
    row = []
    for q in range(s):
      total = jnp.zeros((n, mh, mw, c), taps.dtype)
      for i in range(p, k, s):
        for j in range(q, k, s):
          total += jnp.pad(taps[:, :, :, i, j], ((0, 0), (i // s, mh - oh - i // s),
                                                 (j // s, mw - ow - j // s), (0, 0)))
      row.append(total)
    phases.append(jnp.stack(row, axis=3))  # (n, mh, mw, s, c)
  return jnp.stack(phases, axis=2).reshape(n, mh * s, mw * s, c)[:, :hp, :wp]


def conv_input_grad(implementation: str, x_shape, kernel, s: int, dy):
  """d(sum(dy * conv_forward(x, kernel))) / dx: the gradient w.r.t. the conv's input.

  'xla' | 'matmul': the transpose of that forward implementation (XLA's backprop conv; col2im
  of dy @ kernel^T). '<impl>_t': the forward implementation <impl> on dy dilated by the stride
  and padded, with the kernel flipped and its in/out features swapped (a stride-1 conv).
  'onednn': oneDNN's backward-data convolution. 'direct': direct_conv.input_grad (stride 1).
  """
  sig = conv_signature(x_shape, dy.dtype, kernel.shape[0], kernel.shape[-1], s)
  if implementation == 'onednn':
    return onednn.conv_input_grad(x_shape, kernel, s, sig.padding(), dy)
  if implementation == 'direct' and computes(implementation, sig):
    return direct_conv.input_grad(x_shape, kernel, dy, sig.padding())
  if implementation == 'matmul':
    k, c, f = sig.kernel_size, sig.in_features, sig.features
    taps = (dy.reshape(-1, f) @ kernel.reshape(k * k * c, f).T).reshape(dy.shape[:3] + (k, k, c))
    (top, bottom), (left, right) = sig.padding()
    dxp = _col2im(taps, s, top + x_shape[1] + bottom, left + x_shape[2] + right)
    return dxp[:, top:top + x_shape[1], left:left + x_shape[2]]
  if implementation == 'xla':
    fn = lambda x: conv_forward(implementation, x, kernel, s)
    return jax.linear_transpose(fn, jax.ShapeDtypeStruct(x_shape, dy.dtype))(dy)[0]
  k, (oh, ow) = sig.kernel_size, sig.output_size
  pads = [(k - 1 - lo, size + lo - ((out - 1) * s + 1), s - 1)
          for (lo, _), size, out in zip(sig.padding(), x_shape[1:3], (oh, ow))]
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  if implementation == 'winograd_t' and computes(implementation, sig):
    return winograd.conv(dy, flipped, [(lo, hi) for lo, hi, _ in pads])
  return _valid_conv(implementation[:-len('_t')], _dilated(dy, pads), flipped, 1)


def conv_kernel_grad(implementation: str, x, kernel_shape, s: int, dy):
  """d(sum(dy * conv_forward(x, kernel))) / dkernel: the gradient w.r.t. the HWIO kernel.

  'xla' | 'matmul' | 'gather': the transpose of that forward implementation (XLA's backprop
  filter conv, see _xla_kernel_grad; patches^T @ dy). 'xla_dot': XLA's with x turned
  feature-major by _features_first. 'gather_t': x^T @ im2col of dy dilated
  by the stride and padded, at x's own pixels (a buffer of k*k*out features instead of k*k*in:
  the cheap side when out is small; the padding's pixels, zeros, would add nothing).
  'onednn': oneDNN's backward-weights convolution. 'direct': direct_conv's (stride 1).
  """
  if implementation in ('xla', 'xla_dot'):
    return _xla_kernel_grad(x, kernel_shape, s, dy, by_dot=implementation == 'xla_dot')
  sig = conv_signature(x.shape, x.dtype, kernel_shape[0], kernel_shape[-1], s)
  if implementation == 'onednn':
    return onednn.conv_kernel_grad(x, kernel_shape, s, sig.padding(), dy)
  if implementation == 'winograd' and computes(implementation, sig):
    return winograd.kernel_grad(x, dy, sig.padding())
  if implementation == 'direct' and computes(implementation, sig):
    return direct_conv.kernel_grad(x, dy, kernel_shape[0], sig.padding())
  if implementation != 'gather_t':
    fn = lambda kernel: conv_forward(implementation, x, kernel, s)
    return jax.linear_transpose(fn, jax.ShapeDtypeStruct(kernel_shape, dy.dtype))(dy)[0]
  k, _, c, f = kernel_shape
  # Tap (i, j) at padded pixel p reads dy at p - (i, j) (dilated); x's pixels are p - lo.
  pads = [(k - 1 - lo, k - 1 - hi, s - 1) for lo, hi in sig.padding()]
  grad = _im2col_product(_dilated(dy, pads), k, 1, sig.height, sig.width, x.reshape(-1, c),
                         transposed=True)  # (k*k taps, F, C), taps flipped.
  return jnp.flip(grad.reshape(k, k, f, c).transpose(0, 1, 3, 2), (0, 1))


def _features_first(x):
  """x (N, H, W, C) as (C, H, W, N), the features to the front by a product with the identity
  (then N to the back, a cheap transpose of each pixel's N x C block).

  Why: XLA:CPU's own transpose to C, H, W, N writes its output in order and reads x a feature
  at a time, 2.7x slower (2-core Intel Xeon, AVX-512, pmapped, (64, 28, 28, 64): 26.0 vs 9.7
  ms; 4.7 ms for an elementwise pass over the same array). The values are x's exactly; an inf
  or NaN in x spreads to every feature of its pixel (0 * inf), where a kernel gradient is not
  finite anyway.
  """
  n, h, w, c = x.shape
  xt = jax.lax.dot_general(jnp.eye(c, dtype=x.dtype), x.reshape(-1, c), (((1,), (1,)), ((), ())))
  return xt.reshape(c, n, h, w).transpose(0, 2, 3, 1)


def _xla_kernel_grad(x, kernel_shape, s: int, dy, by_dot: bool = False):
  """XLA's backprop-filter conv with its layouts spelled out: x as C,H,W,N (the batch of this
  conv is the input feature, its contraction the image batch; by _features_first when
  `by_dot`), dy as H,W,N,F (the kernel, dilated by the stride), the SAME padding inside the
  conv.

  The same program as the transpose of conv_forward('xla'), except that XLA:CPU would pad x in
  the loop that transposes it, and that loop ran 5x slower than the pure transpose here (the
  seed CNN's conv3 in its train step, 2-core Intel Xeon: 5.0 vs 1.1 ms a device).
  """
  k, _, c, f = kernel_shape
  sig = conv_signature(x.shape, x.dtype, k, f, s)
  xt = _features_first(x) if by_dot else jnp.transpose(x, (3, 1, 2, 0))
  grad = jax.lax.conv_general_dilated(
      xt, jnp.transpose(dy, (1, 2, 0, 3)), (1, 1), sig.padding(),
      rhs_dilation=(s, s), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # C, k', k', F
  return jnp.transpose(grad[:, :k, :k, :], (1, 2, 0, 3))


def conv_phase(phase: str, implementation: str, sig: ConvSignature):
  """(fn, argument shapes) of one phase of `sig` by one implementation: fn(x, kernel, dy)."""
  s, k = sig.strides, sig.kernel_size
  x_shape = (sig.batch, sig.height, sig.width, sig.in_features)
  kernel_shape = (k, k, sig.in_features, sig.features)
  fns = {
      'forward': lambda x, kernel, dy: conv_forward(implementation, x, kernel, s),
      'input_grad': lambda x, kernel, dy: conv_input_grad(implementation, x_shape, kernel, s,
                                                          dy),
      'kernel_grad': lambda x, kernel, dy: conv_kernel_grad(implementation, x, kernel_shape, s,
                                                            dy),
  }
  return fns[phase], (x_shape, kernel_shape, (sig.batch,) + sig.output_size + (sig.features,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def tuned_conv(x, kernel, bias, s: int, choice: ConvChoice):
  """conv_forward(x, kernel) + bias with each phase by the implementation `choice` names
  for it."""
  return conv_forward(choice.forward, x, kernel, s, bias)


def _tuned_conv_fwd(x, kernel, bias, s, choice):
  return tuned_conv(x, kernel, bias, s, choice), (x, kernel)


def _tuned_conv_bwd(s, choice, residuals, dy):
  x, kernel = residuals
  return (conv_input_grad(choice.input_grad, x.shape, kernel, s, dy),
          conv_kernel_grad(choice.kernel_grad, x, kernel.shape, s, dy),
          jnp.sum(dy, (0, 1, 2)))


tuned_conv.defvjp(_tuned_conv_fwd, _tuned_conv_bwd)


class Conv(nn.Module):
  """A square conv with SAME padding. Parameters are those of `nn.Conv` ('kernel' HWIO and
  'bias'), whatever the implementation, so checkpoints do not depend on it.

  Why several implementations: XLA:CPU computes some convolutions and most of their gradients
  on slow paths (measured on 2 cores: the paper discriminator's fwd+bwd at batch 64 took 2.1 s
  with XLA convs, 0.8 s as matmuls; the input gradient of a stride-2 conv on 4x4 maps alone
  1.5 s), while im2col + matmul loses on 9x9 kernels over 64 features (its patches are 81x the
  input). Which wins depends on the layer and the machine, so:
  - 'xla': XLA's convolution; 'matmul': im2col + one matmul (both passes plain GEMMs);
  - 'auto': auto_implementation's rule (matmul for strided convs on CPU, else XLA);
  - 'tuned': for each phase (forward, input and kernel gradients) the implementation that
    `plan` names for this conv's signature, as measured by conv_tuning on this machine; a
    signature missing from the plan falls back to 'auto' with a warning (no plan: 'auto').
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  implementation: str = 'auto'
  plan: Optional[ConvPlan] = None

  def _choice(self, sig: ConvSignature) -> ConvChoice:
    if self.implementation not in CONV_IMPLEMENTATIONS:
      raise ValueError(f'Unknown conv implementation {self.implementation!r}: use one of '
                       f'{CONV_IMPLEMENTATIONS}.')
    if self.implementation == 'tuned' and self.plan is not None:
      choice = dict(self.plan).get(sig)
      if choice is not None:
        return choice
      # Python shows a warning once per message: once per missing signature.
      warnings.warn(f'No tuned implementation for the conv {sig}: using '
                    f'{auto_implementation(sig)!r} (conv_tuning was not given the network at '
                    f'this input shape).')
    impl = auto_implementation(sig) if self.implementation in ('auto', 'tuned') else (
        self.implementation)
    return ConvChoice(impl, impl, impl)

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel_size, self.strides
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    choice = self._choice(conv_signature(x.shape, x.dtype, k, self.features, s))
    if choice.forward == choice.input_grad == choice.kernel_grad:
      return conv_forward(choice.forward, x, kernel, s, bias)
    return tuned_conv(x, kernel, bias, s, choice)
