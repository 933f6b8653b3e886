"""Winograd's transforms (srgan_jax/winograd.py) as C++ passes called through XLA's FFI
(winograd_transforms.cc), where a C++ compiler is at hand on a Linux x86-64 CPU; else
winograd.py keeps its transforms written in XLA.

Why: written as XLA fusions of shifted slices, the transforms of the seed CNN's Winograd
convs moved their tiles at 6-14 GB/s and cost more than the batched matmuls between them
(a `jax.profiler` trace of its train step on a 2-core Intel Xeon, 2026-12-04: 38 ms of
transforms and 30 ms of products a device and step). In C++ each tile's 36 values stay in the
cache between their row and column passes, and the conv's padding costs no pass at all.
SRGAN_JAX_NATIVE=0 keeps the XLA transforms.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from srgan_jax import native

SOURCE = 'winograd_transforms.cc'
NAME = 'winograd'  # Its build's name (native.build).
# -march=native: the transforms' loops vectorised for this CPU (the module is built on it).
FLAGS = ('-O3', '-march=native')
# winograd_transforms.cc's handlers, registered as _target(name).
SYMBOLS = {'input': 'SrganWinogradInputTiles', 'output': 'SrganWinogradOutputTiles',
           'output_into': 'SrganWinogradOutputTilesInto', 'grad': 'SrganWinogradGradTiles'}


def _target(name: str) -> str:
  return f'srgan_winograd_{name}_tiles'


@functools.lru_cache(maxsize=None)
def status() -> str:
  """'' when the native transforms are ready (built, loaded, registered), else why not."""
  return native.status(SOURCE, NAME, {_target(n): s for n, s in SYMBOLS.items()}, FLAGS,
                       "Winograd's transforms", "its XLA transforms")


def available() -> bool:
  return not status()


def _tiles(size: int) -> int:
  return -(-size // 4)


def input_tiles(x, index, chunk: int, top: int, left: int, tiles_h: int, tiles_w: int):
  """B^T d B of the 6x6 tile at (4 i - top, 4 j - left), for i, j in range(tiles_h),
  range(tiles_w), of each image of chunk `index` (an int32 scalar, e.g. a loop's counter) of
  `chunk` images of NHWC x, zeros outside x: (36, chunk * tiles_h * tiles_w, c)."""
  shape = jax.ShapeDtypeStruct((36, chunk * tiles_h * tiles_w, x.shape[-1]), x.dtype)
  return jax.ffi.ffi_call(_target('input'), shape, vmap_method=native.VMAP_METHOD)(
      x, jnp.asarray(index, jnp.int32), pad_top=np.int64(top), pad_left=np.int64(left),
      tiles_h=np.int64(tiles_h), tiles_w=np.int64(tiles_w), chunk=np.int64(chunk))


def output_tiles(products, bias, index, chunk: int, y_shape, y=None):
  """A^T m A of each tile's (36, chunk * ceil(h/4) * ceil(w/4), f) products plus `bias` (f):
  the output images of chunk `index` (of `chunk` images) of an (n, h, w, f) output, written
  into y (the other chunks' results, updated in place) or, without y, into a new array whose
  other images are undefined until their chunks are written."""
  shape = jax.ShapeDtypeStruct(tuple(y_shape), products.dtype)
  index = jnp.asarray(index, jnp.int32)
  if y is None:
    return jax.ffi.ffi_call(_target('output'), shape, vmap_method=native.VMAP_METHOD)(
        products, bias, index, chunk=np.int64(chunk))
  return jax.ffi.ffi_call(_target('output_into'), shape, vmap_method=native.VMAP_METHOD,
                          input_output_aliases={2: 0})(
      products, bias, y, index, chunk=np.int64(chunk))


def grad_tiles(dy, index, chunk: int):
  """A u A^T of each 4x4 tile of the images of chunk `index` (of `chunk` images) of NHWC dy,
  zeros outside it: (36, chunk * ceil(h/4) * ceil(w/4), f)."""
  _, h, w, f = dy.shape
  shape = jax.ShapeDtypeStruct((36, chunk * _tiles(h) * _tiles(w), f), dy.dtype)
  return jax.ffi.ffi_call(_target('grad'), shape, vmap_method=native.VMAP_METHOD)(
      dy, jnp.asarray(index, jnp.int32), chunk=np.int64(chunk))
