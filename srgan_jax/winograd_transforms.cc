// XLA FFI handlers for srgan_jax/winograd_native.py: the transforms of Winograd's F(4x4, 3x3)
// (srgan_jax/winograd.py has the algorithm and its matrices) as single passes over NHWC
// buffers, each tile's 36 values kept in the cache between its row and column passes. The
// batched matmuls between the transforms stay XLA's. Each call runs on its caller's thread (an
// XLA device, one a core). The innermost loops run along the features, which NHWC keeps
// contiguous, so the compiler vectorises them.
#include <algorithm>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kM = 4, kT = 6;  // 4x4 output tiles from 6x6 input tiles.
constexpr int64_t kBlock = 64;  // Features a tile's buffer holds at a time.
// What reads outside the image see, and the bias of the first (column) pass: static, so that
// no call allocates: small blocks malloc'd in XLA's threads split the heap's free space (the
// main job's GAN phase, resumed from one checkpoint, peaked at 2.62 GB with them, 2.19 GB
// without; 1.87 GB with the XLA transforms).
const float kZeros[kBlock] = {};

// B^T d on the 6 values d[0..5] (each a pointer to `n` contiguous features), into t[0..5].
inline void InputRow(const float* const d[kT], float* const t[kT], int64_t n) {
#pragma GCC ivdep
  for (int64_t c = 0; c < n; ++c) {
    const float d0 = d[0][c], d1 = d[1][c], d2 = d[2][c], d3 = d[3][c], d4 = d[4][c],
                d5 = d[5][c];
    t[0][c] = 4.f * d0 - 5.f * d2 + d4;
    t[1][c] = -4.f * d1 - 4.f * d2 + d3 + d4;
    t[2][c] = 4.f * d1 - 4.f * d2 - d3 + d4;
    t[3][c] = -2.f * d1 - d2 + 2.f * d3 + d4;
    t[4][c] = 2.f * d1 - d2 - 2.f * d3 + d4;
    t[5][c] = 4.f * d1 - 5.f * d3 + d5;
  }
}

// A^T m on the 6 values m[0..5], plus `bias`, into o[0..3].
inline void OutputRow(const float* const m[kT], float* const o[kM], int64_t n,
                      const float* bias) {
#pragma GCC ivdep
  for (int64_t c = 0; c < n; ++c) {
    const float m0 = m[0][c], m1 = m[1][c], m2 = m[2][c], m3 = m[3][c], m4 = m[4][c],
                m5 = m[5][c], z = bias[c];
    const float a = m1 + m2, b = m1 - m2, p = m3 + m4, q = m3 - m4;
    o[0][c] = m0 + a + p + z;
    o[1][c] = b + 2.f * q + z;
    o[2][c] = a + 4.f * p + z;
    o[3][c] = b + 8.f * q + m5 + z;
  }
}

// A u on the 4 values u[0..3] (A = (A^T)^T, 6x4), into t[0..5]: dy's tiles in the kernel
// gradient.
inline void GradRow(const float* const u[kM], float* const t[kT], int64_t n) {
#pragma GCC ivdep
  for (int64_t c = 0; c < n; ++c) {
    const float u0 = u[0][c], u1 = u[1][c], u2 = u[2][c], u3 = u[3][c];
    const float e = u0 + u2, o = u1 + u3, e4 = u0 + 4.f * u2, o8 = 2.f * u1 + 8.f * u3;
    t[0][c] = u0;
    t[1][c] = e + o;
    t[2][c] = e - o;
    t[3][c] = e4 + o8;
    t[4][c] = e4 - o8;
    t[5][c] = u3;
  }
}

// The first image of chunk `index` (a scalar operand: a loop's counter) of `chunk` images, or
// an error if the chunk is not inside the batch of n.
bool ChunkStart(ffi::Buffer<ffi::S32> index, int64_t chunk, int64_t n, int64_t* start) {
  *start = static_cast<int64_t>(index.typed_data()[0]) * chunk;
  return *start >= 0 && *start + chunk <= n;
}

// The 36 transformed values of each kIn x kIn tile of a chunk's images (src: chunk images of
// h x w x c), tile (ti, tj) at (4 ti - top, 4 tj - left), zeros outside the images: `Row` (kIn
// values -> 6) along each row of the tile, then along each column of the result, into dst
// (36, chunk*th*tw, c).
template <int kIn, void (*Row)(const float* const[kIn], float* const[kT], int64_t)>
void ToTiles(const float* src, int64_t chunk, int64_t h, int64_t w, int64_t c, int64_t top,
             int64_t left, int64_t th, int64_t tw, float* dst) {
  const int64_t p_all = chunk * th * tw;
  float rows[kIn * kT * kBlock];  // Row applied along each row of the tile: [row i][k][c].
  int64_t p = 0;
  for (int64_t b = 0; b < chunk; ++b)
    for (int64_t ti = 0; ti < th; ++ti)
      for (int64_t tj = 0; tj < tw; ++tj, ++p)
        for (int64_t c0 = 0; c0 < c; c0 += kBlock) {
          const int64_t nc = std::min(kBlock, c - c0);
          for (int i = 0; i < kIn; ++i) {
            const int64_t r = kM * ti + i - top;
            const float* d[kIn];
            for (int j = 0; j < kIn; ++j) {
              const int64_t s = kM * tj + j - left;
              d[j] = (r >= 0 && r < h && s >= 0 && s < w)
                         ? src + ((b * h + r) * w + s) * c + c0 : kZeros;
            }
            float* t[kT];
            for (int k = 0; k < kT; ++k) t[k] = rows + (i * kT + k) * kBlock;
            Row(d, t, nc);
          }
          for (int k = 0; k < kT; ++k) {  // Column k of the row-transformed tile.
            const float* d[kIn];
            for (int i = 0; i < kIn; ++i) d[i] = rows + (i * kT + k) * kBlock;
            float* t[kT];
            for (int a = 0; a < kT; ++a) t[a] = dst + ((a * kT + k) * p_all + p) * c + c0;
            Row(d, t, nc);
          }
        }
}

// x (n, h, w, c), its conv padding's top and left (negative: cropped); tiles (36,
// chunk*th*tw, c): B^T d B of the 6x6 tile at (4 ti - top, 4 tj - left) of each image of the
// chunk, zeros outside x.
ffi::Error InputTiles(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> index,
                      ffi::ResultBuffer<ffi::F32> tiles, int64_t top, int64_t left, int64_t th,
                      int64_t tw, int64_t chunk) {
  auto xd = x.dimensions();
  const int64_t h = xd[1], w = xd[2], c = xd[3];
  int64_t first;
  if (!ChunkStart(index, chunk, xd[0], &first) || tiles->dimensions()[1] != chunk * th * tw ||
      tiles->dimensions()[2] != c)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "Winograd input tiles: bad shape");
  ToTiles<kT, InputRow>(x.typed_data() + first * h * w * c, chunk, h, w, c, top, left, th, tw,
                        tiles->typed_data());
  return ffi::Error::Success();
}

// products (36, chunk*th*tw, f) -> the chunk's images of y (n, h, w, f): A^T m A of each tile
// plus the conv's bias (f), the 4x4 outputs inside y. y's other images are left as they are.
ffi::Error OutputTiles(ffi::Buffer<ffi::F32> products, ffi::Buffer<ffi::F32> bias,
                       ffi::Buffer<ffi::S32> index, ffi::ResultBuffer<ffi::F32> y,
                       int64_t chunk) {
  auto yd = y->dimensions();
  const int64_t n = chunk, h = yd[1], w = yd[2], f = yd[3];
  const int64_t th = (h + kM - 1) / kM, tw = (w + kM - 1) / kM, p_all = n * th * tw;
  int64_t first;
  if (!ChunkStart(index, chunk, yd[0], &first) || products.dimensions()[1] != p_all ||
      products.dimensions()[2] != f || bias.dimensions()[0] != f)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "Winograd output tiles: bad shape");
  const float* src = products.typed_data();
  float* dst = y->typed_data() + first * h * w * f;
  float rows[kM * kT * kBlock];  // A^T applied down each column: [u][column b][c].
  float out[kM * kM * kBlock];
  int64_t p = 0;
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ti = 0; ti < th; ++ti)
      for (int64_t tj = 0; tj < tw; ++tj, ++p)
        for (int64_t c0 = 0; c0 < f; c0 += kBlock) {
          const int64_t nc = std::min(kBlock, f - c0);
          for (int col = 0; col < kT; ++col) {
            const float* m[kT];
            for (int a = 0; a < kT; ++a) m[a] = src + ((a * kT + col) * p_all + p) * f + c0;
            float* o[kM];
            for (int u = 0; u < kM; ++u) o[u] = rows + (u * kT + col) * kBlock;
            OutputRow(m, o, nc, kZeros);
          }
          for (int u = 0; u < kM; ++u) {
            const float* m[kT];
            for (int col = 0; col < kT; ++col) m[col] = rows + (u * kT + col) * kBlock;
            const int64_t r = kM * ti + u;
            float* o[kM];
            for (int v = 0; v < kM; ++v) {
              const int64_t s = kM * tj + v;
              o[v] = (r < h && s < w) ? dst + ((b * h + r) * w + s) * f + c0
                                      : out + (u * kM + v) * kBlock;  // Outside y: discarded.
            }
            OutputRow(m, o, nc, bias.typed_data() + c0);
          }
        }
  return ffi::Error::Success();
}

// dy (n, h, w, f) -> (36, chunk*th*tw, f): A u A^T of each 4x4 tile of the chunk's images of
// dy, zeros outside dy.
ffi::Error GradTiles(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S32> index,
                     ffi::ResultBuffer<ffi::F32> tiles, int64_t chunk) {
  auto dd = dy.dimensions();
  const int64_t h = dd[1], w = dd[2], f = dd[3];
  const int64_t th = (h + kM - 1) / kM, tw = (w + kM - 1) / kM;
  int64_t first;
  if (!ChunkStart(index, chunk, dd[0], &first) || tiles->dimensions()[1] != chunk * th * tw ||
      tiles->dimensions()[2] != f)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "Winograd gradient tiles: bad shape");
  ToTiles<kM, GradRow>(dy.typed_data() + first * h * w * f, chunk, h, w, f, 0, 0, th, tw,
                       tiles->typed_data());
  return ffi::Error::Success();
}

// Into y, the results of the earlier chunks' calls: y is also an operand, aliased to the
// result by the caller (jax.ffi.ffi_call's input_output_aliases).
ffi::Error OutputTilesInto(ffi::Buffer<ffi::F32> products, ffi::Buffer<ffi::F32> bias,
                           ffi::Buffer<ffi::F32> y_in, ffi::Buffer<ffi::S32> index,
                           ffi::ResultBuffer<ffi::F32> y, int64_t chunk) {
  if (y_in.typed_data() != y->typed_data())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "Winograd output tiles: not aliased");
  return OutputTiles(products, bias, index, y, chunk);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganWinogradInputTiles, InputTiles,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("tiles_h")
                                  .Attr<int64_t>("tiles_w")
                                  .Attr<int64_t>("chunk"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganWinogradOutputTiles, OutputTiles,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("chunk"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganWinogradOutputTilesInto, OutputTilesInto,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("chunk"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganWinogradGradTiles, GradTiles,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("chunk"));
