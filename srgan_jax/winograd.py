"""Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016): a 3x3 stride-1 conv and its kernel gradient with 4x fewer multiplies
than the direct conv (36 per 4x4 output tile and feature pair, against 144), at the price of
transforms that are memory passes.

Why: on a CPU whose direct convs already run near its matmul peak (an AVX2 AMD EPYC: the seed
CNN's 3x3 convs at 83 GFLOP/s a core, OpenBLAS's single-core peak 96), fewer multiplies are the
only way left to a faster conv; conv_tuning times it against XLA's and keeps it where it wins.

Each t x t input tile (t = 6) at stride 4 goes through B^T d B, the kernel through G g G^T, and
their products, summed over input features in one batched matmul per tile position, through
A^T m A back to a 4x4 output tile. The transforms are written out as sums of shifted slices
(their matrices are small and constant), each in two separable passes, rows then columns, with
an optimization barrier between them: fused into one loop, XLA recomputed the row pass for
every column (the seed CNN's 3x3x32->64 at 28x28, b64: 25 vs 18.8 ms for XLA's conv's 23.6).
Values match the direct conv to about 1e-5 of their largest magnitude in float32.

The transforms are memory passes, so the batch goes through them a chunk at a time
(batch_chunk): the tiles one pass writes are still in the cache when the next reads them. On an
AVX2 AMD EPYC (2 cores, 2026-12-04), pmapped, ms for the seed CNN's 3x3x32->64 at 28x28, b64,
whole batch vs chunks of CHUNK_BYTES: forward 29.3 vs 20.7, input gradient 30.6 vs 22.9, kernel
gradient 37.2 vs 23.4 (1, 2 and 8 MiB chunks: no better, and 1 MiB lost on wide kernel
gradients, whose (36, c, f) sum is added up once a chunk). Tuned with chunks, the seed CNN's
train step ran 1.38-1.40x as fast, the SRResNet step 1.06-1.07x, the seed's GAN iteration
1.13-1.15x (each against the step tuned without, both in one process, in turns).

Each chunk is padded (the conv's own padding and the tiles') as it is cut from the batch, in
the cache: padding the whole batch first was one more pass over memory. On a 2-core Intel Xeon
(AVX-512, 2026-12-04), fastest of 5 calls in two processes each, the 18 phases of six 3x3 convs
of the steps benchmarks.compare times ran a median 1.09x as fast (0.92-1.42x; 3x3x64->128 at
14x14, b64: forward 13.7 -> 13.0 ms, kernel gradient 15.3 -> 12.2).

Where a C++ compiler is at hand (Linux x86-64, float32), the transforms are winograd_native's
C++ passes instead: each chunk's tiles read from the batch where they lie, its outputs (plus
the conv's bias) written in place. On a 2-core Intel Xeon (AVX-512, 2026-12-04), steps tuned
each way, in turns: the seed CNN step 1.17-1.20x, and with Winograd tried from 4x4 maps up
(convolution.WINOGRAD_MIN_SIZE_NATIVE) the SRResNet step 1.16x and the GAN iteration 1.09x more.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from srgan_jax import winograd_native

# F(4x4, 3x3) for the interpolation points 0, +-1, +-2 and infinity (Lavin & Gray, eq. 15).
B_T = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float32)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float32)
OUT_TILE, IN_TILE = A_T.shape  # 4x4 outputs from each 6x6 input tile.
KERNEL_SIZE = 3
# G g G^T of a 3x3 kernel as one (36, 9) matrix on its flattened taps: one matmul over all
# feature pairs. As an einsum with G on either side it took 4.7 vs 0.55 ms for 3x3x64->256
# and 0.085 vs 0.02 s to compile (AVX2 AMD EPYC, 2026-12-03).
G_G = np.kron(G, G)
# The most bytes of transformed tiles a chunk of the batch makes (see batch_chunk).
CHUNK_BYTES = 4 << 20


def _sum(coefficients, terms):
  """sum(c * term) over the nonzero coefficients, without multiplying by +-1."""
  total = None
  for c, term in zip(coefficients, terms):
    if c == 0:
      continue
    term = term if c == 1 else -term if c == -1 else term * float(c)
    total = term if total is None else total + term
  return total


def _tiles(size: int) -> int:
  return -(-size // OUT_TILE)


def _input_tiles(xp, tiles_h: int, tiles_w: int):
  """B^T d B of every 6x6 tile of xp at stride 4: (36, n * tiles_h * tiles_w, c)."""
  m, t = OUT_TILE, IN_TILE
  rows = [xp[:, i:i + m * (tiles_h - 1) + 1:m] for i in range(t)]
  rows = jax.lax.optimization_barrier(jnp.stack([_sum(B_T[a], rows) for a in range(t)]))
  cols = [rows[:, :, :, j:j + m * (tiles_w - 1) + 1:m] for j in range(t)]
  tiles = jnp.stack([_sum(B_T[b], cols) for b in range(t)], 1)  # (t, t, n, th, tw, c)
  return tiles.reshape(t * t, -1, xp.shape[-1])


def _pad_to_tiles(x, padding, height: int, width: int):
  """x (NHWC) padded by `padding` ((top, bottom), (left, right); negative: cropped), then with
  zeros below and to the right up to height x width."""
  (top, _), (left, _) = padding
  zero = jnp.zeros((), x.dtype)
  return jax.lax.pad(x, zero, ((0, 0, 0), (top, height - x.shape[1] - top, 0),
                               (left, width - x.shape[2] - left, 0), (0, 0, 0)))


def _output_size(x_shape, padding):
  """The (height, width) of the VALID 3x3 conv of x padded by `padding`."""
  return tuple(size + lo + hi - KERNEL_SIZE + 1 for size, (lo, hi) in zip(x_shape[1:3], padding))


def _transformed_kernel(kernel):
  """G g G^T of an HWIO 3x3 kernel: (36, c, f)."""
  _, _, c, f = kernel.shape
  g = jnp.asarray(G_G, kernel.dtype) @ kernel.reshape(KERNEL_SIZE ** 2, c * f)
  return g.reshape(IN_TILE * IN_TILE, c, f)


def _products(tiles, g):
  """Each tile position's (P, c) tiles times its (c, f) kernel: (36, P, f)."""
  return jax.lax.dot_general(tiles, g, (((2,), (1,)), ((0,), (0,))))


def _conv_tiles(x, g, padding):
  """conv of one chunk of the batch, the kernel already transformed (g: 36, c, f)."""
  m, t = OUT_TILE, IN_TILE
  n = x.shape[0]
  f = g.shape[-1]
  h, w = _output_size(x.shape, padding)
  th, tw = _tiles(h), _tiles(w)
  xp = jax.lax.optimization_barrier(_pad_to_tiles(x, padding, th * m + 2, tw * m + 2))
  products = _products(_input_tiles(xp, th, tw), g)
  products = products.reshape(t, t, n, th, tw, f)
  rows = jnp.stack([_sum(A_T[u], list(products)) for u in range(m)])  # (4, 6, n, th, tw, f)
  rows = jax.lax.optimization_barrier(rows)
  out = jnp.stack([_sum(A_T[v], [rows[:, b] for b in range(t)]) for v in range(m)], 1)
  out = out.transpose(2, 3, 0, 4, 1, 5).reshape(n, th * m, tw * m, f)
  return jax.lax.optimization_barrier(out[:, :h, :w])


def use_native(dtype, native: Optional[bool] = None) -> bool:
  """Whether the transforms run as winograd_native's C++ passes: `native` if given (True
  where they are unavailable or the dtype is not float32 is an error), else wherever they
  are available, for float32."""
  if native is None:
    return jnp.dtype(dtype) == jnp.float32 and winograd_native.available()
  if native and not (jnp.dtype(dtype) == jnp.float32 and winograd_native.available()):
    raise ValueError('Winograd\'s native transforms need float32 and their built module: '
                     f'dtype {jnp.dtype(dtype).name}, module '
                     f'{winograd_native.status() or "ready"}')
  return native


def conv(x, kernel, padding, native: Optional[bool] = None, bias=None):
  """The 3x3 stride-1 conv of an NHWC input padded by `padding` ((top, bottom), (left,
  right); negative: cropped) with an HWIO kernel, a chunk of the batch at a time (see
  batch_chunk). Each chunk is padded as it is tiled, in the cache, rather than the whole
  batch in one more pass over memory first. The transforms are winograd_native's where it is
  available (`native`: see use_native). `bias` (f), if given, is added to the output, by the
  native output transform (no pass of its own over the output)."""
  native = use_native(x.dtype, native)
  n, _, _, c = x.shape
  f = kernel.shape[-1]
  g = _transformed_kernel(kernel)
  h, w = _output_size(x.shape, padding)
  chunk = batch_chunk(n, h, w, c, f, jnp.dtype(x.dtype).itemsize)
  if native:
    bias = jnp.broadcast_to(jnp.asarray(0 if bias is None else bias, x.dtype), (f,))
    return _native_conv(x, g, padding, chunk, bias)
  if chunk == n:
    out = _conv_tiles(x, g, padding)
  else:
    out = jax.lax.map(lambda xs: _conv_tiles(xs, g, padding),
                      x.reshape((n // chunk, chunk) + x.shape[1:]))
    out = out.reshape((n,) + out.shape[2:])
  return out if bias is None else out + bias


def _native_conv(x, g, padding, chunk: int, bias):
  """conv with winograd_native's transforms: each chunk's tiles read from x where it lies and
  its outputs written into the conv's output in place (no copies of the chunks)."""
  n = x.shape[0]
  h, w = _output_size(x.shape, padding)
  shape = (n, h, w, g.shape[-1])
  th, tw = _tiles(h), _tiles(w)

  def chunk_out(i, y=None):
    tiles = winograd_native.input_tiles(x, i, chunk, padding[0][0], padding[1][0], th, tw)
    return winograd_native.output_tiles(_products(tiles, g), bias, i, chunk, shape, y)
  return _over_chunks(n // chunk, chunk_out)


def _over_chunks(count: int, body):
  """body(i, carry) over the chunks i < count, the first with carry None (no loop for one)."""
  carry = body(0, None)
  return jax.lax.fori_loop(1, count, body, carry) if count > 1 else carry


def _kernel_grad_tiles(x, dy, padding):
  """The (36, c, f) products of kernel_grad for one chunk of the batch, before G^T . G."""
  m, t = OUT_TILE, IN_TILE
  n, h, w, f = dy.shape
  th, tw = _tiles(h), _tiles(w)
  xp, dy = jax.lax.optimization_barrier((_pad_to_tiles(x, padding, th * m + 2, tw * m + 2),
                                         _pad_to_tiles(dy, ((0, 0), (0, 0)), th * m, tw * m)))
  tiles = _input_tiles(xp, th, tw)
  dy = dy.reshape(n, th, m, tw, m, f)
  rows = jnp.stack([_sum(A_T[:, a], [dy[:, :, u] for u in range(m)]) for a in range(t)])
  rows = jax.lax.optimization_barrier(rows)  # (6, n, th, tw, 4, f)
  dy_tiles = jnp.stack([_sum(A_T[:, b], [rows[..., v, :] for v in range(m)]) for b in range(t)],
                       1).reshape(t * t, -1, f)
  return _tile_grad(tiles, dy_tiles)


def _tile_grad(tiles, dy_tiles):
  """(36, P, c) input tiles and (36, P, f) gradient tiles summed over P: (36, c, f)."""
  return jax.lax.dot_general(tiles, dy_tiles, (((1,), (1,)), ((0,), (0,))))


def _native_kernel_grad_tiles(x, dy, padding, chunk: int):
  """_kernel_grad_tiles' sum over the whole batch with winograd_native's transforms, each
  chunk's tiles read from x and dy where they lie."""
  _, h, w, f = dy.shape
  th, tw = _tiles(h), _tiles(w)

  def add_chunk(i, total):
    tiles = winograd_native.input_tiles(x, i, chunk, padding[0][0], padding[1][0], th, tw)
    grad = _tile_grad(tiles, winograd_native.grad_tiles(dy, i, chunk))
    return grad if total is None else total + grad
  return _over_chunks(dy.shape[0] // chunk, add_chunk)


def kernel_grad(x, dy, padding, native: Optional[bool] = None):
  """d(sum(dy * conv(x, kernel, padding))) / dkernel (3, 3, c, f), Winograd's way: the tiles
  of x as the forward pass pads and transforms them, dy's 4x4 tiles through A (A^T's
  transpose), their products summed over the batch's tiles in one batched matmul (a chunk of
  the batch at a time, see batch_chunk), then G^T . G back to 3x3. The transforms are
  winograd_native's where it is available (`native`: see use_native)."""
  native = use_native(x.dtype, native)
  n, h, w, f = dy.shape
  c = x.shape[-1]
  chunk = batch_chunk(n, h, w, c, f, jnp.dtype(x.dtype).itemsize)
  if native:
    grad = _native_kernel_grad_tiles(x, dy, padding, chunk)
  elif chunk == n:
    grad = _kernel_grad_tiles(x, dy, padding)
  else:
    split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])
    grad, _ = jax.lax.scan(lambda acc, xs: (acc + _kernel_grad_tiles(*xs, padding), None),
                           jnp.zeros((IN_TILE * IN_TILE, c, f), dy.dtype), (split(x), split(dy)))
  return (jnp.asarray(G_G.T, grad.dtype) @ grad.reshape(IN_TILE * IN_TILE, c * f)).reshape(
      KERNEL_SIZE, KERNEL_SIZE, c, f)


def _workspace(batch: int, height: int, width: int, in_features: int, features: int,
               itemsize: int) -> int:
  tiles = batch * _tiles(height) * _tiles(width) * IN_TILE * IN_TILE
  return tiles * max(in_features, features) * itemsize


def batch_chunk(batch: int, height: int, width: int, in_features: int, features: int,
                itemsize: int) -> int:
  """How many images of the batch each pass of the transforms and products takes: the most
  (a divisor of the batch) whose transformed tiles fit in CHUNK_BYTES, so that each pass reads
  what the one before wrote from the cache instead of memory."""
  fits = [d for d in range(1, batch + 1) if batch % d == 0
          and _workspace(d, height, width, in_features, features, itemsize) <= CHUNK_BYTES]
  return max(fits or [1])


def workspace_bytes(batch: int, height: int, width: int, in_features: int, features: int,
                    itemsize: int) -> int:
  """The largest buffer of valid_conv for a SAME conv of this size: the transformed input
  tiles or their products (36 values per 4x4 outputs each) of one chunk of the batch."""
  chunk = batch_chunk(batch, height, width, in_features, features, itemsize)
  return _workspace(chunk, height, width, in_features, features, itemsize)
