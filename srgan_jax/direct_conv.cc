// XLA FFI handlers for srgan_jax/direct_conv.py: stride-1 convolutions with few features on
// one side (a generator's first and last 9x9 convs, to and from 1 or 3 channels; the first 3x3
// conv of a discriminator or classifier), computed directly from NHWC buffers, and their
// kernel gradient. Each call runs on its caller's thread (an XLA device, one a core).
//
// Why: such a conv is a product with one thin side. As one matmul (im2col, kn2row) it moves
// k*k copies of the wide side through memory for few multiplies each; XLA's own convolution
// runs them at a fraction of its speed on wide convs. Here each output pixel's (or kernel
// tap's) sums stay in registers: the wide side's features innermost (8-float vectors), a few
// pixels at a time sharing each kernel load.
#include <algorithm>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kV = 16;              // The wide side's features: a multiple of this.
constexpr int64_t kMaxThin = 4;     // The most features on the thin side.
constexpr int64_t kMaxZeros = 4096;  // The widest pixel that reading outside x sees as zeros.
constexpr int kMaxKernel = 16;       // The largest kernel size.
const float kZeros[kMaxZeros] = {};

struct Geometry {
  int64_t n, h, w, c;      // x
  int64_t oh, ow, f;       // y
  int64_t k, top, left;    // kernel size, padding before the first row and column
};

// The pixels c0 - left .. c0 - left + count - 1 of row r + i - top of image b of x, zeros
// outside x: what a block of output pixels from c0 reads along row i of the kernel (tap j of
// pixel p is win[j + p]); false when that row is outside x.
inline bool RowWindow(const float* x, const Geometry& g, int64_t b, int64_t r, int64_t c0,
                      int64_t i, int count, const float** win) {
  const int64_t rr = r + i - g.top;
  if (rr < 0 || rr >= g.h) return false;
  const float* row = x + (b * g.h + rr) * g.w * g.c;
  for (int q = 0; q < count; ++q) {
    const int64_t cc = c0 + q - g.left;
    win[q] = (cc >= 0 && cc < g.w) ? row + cc * g.c : kZeros;
  }
  return true;
}

// 8 floats: an AVX2 register (GCC's vector extension; 2 of them to an SSE machine's).
typedef float V __attribute__((vector_size(32)));
constexpr int kL = 8;
// Vector registers: 32 with AVX-512 (GCC's -march=native uses its 256-bit forms), else 16.
#ifdef __AVX512F__
constexpr int kRegisters = 32;
#else
constexpr int kRegisters = 16;
#endif

inline V Load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

inline void Store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }

inline float Sum(V v) {
  float s = 0.f;
  for (int i = 0; i < kL; ++i) s += v[i];
  return s;
}

// y = conv(x, kernel) with the output features innermost: kernel (k, k, c, f), f a multiple
// of FB (thin input side: c <= kMaxThin); P pixels' FB sums in registers.
template <int FB, int P>
void ConvFeaturesInner(const float* x, const float* kernel, float* y, const Geometry& g) {
  constexpr int NV = FB / kL;
  for (int64_t b = 0; b < g.n; ++b)
    for (int64_t r = 0; r < g.oh; ++r)
      for (int64_t c0 = 0; c0 < g.ow; c0 += P)
        for (int64_t f0 = 0; f0 < g.f; f0 += FB) {
          V acc[P][NV] = {};
          for (int64_t i = 0; i < g.k; ++i) {
            const float* win[P + kMaxKernel - 1];
            if (!RowWindow(x, g, b, r, c0, i, P + g.k - 1, win)) continue;
            for (int64_t j = 0; j < g.k; ++j) {
              const float* const* px = win + j;
              const float* kv = kernel + (i * g.k + j) * g.c * g.f + f0;
              for (int64_t ch = 0; ch < g.c; ++ch) {
                V kc[NV];
                for (int v = 0; v < NV; ++v) kc[v] = Load(kv + ch * g.f + v * kL);
                for (int p = 0; p < P; ++p) {
                  const float xv = px[p][ch];
                  for (int v = 0; v < NV; ++v) acc[p][v] += xv * kc[v];
                }
              }
            }
          }
          for (int p = 0; p < P && c0 + p < g.ow; ++p)
            for (int v = 0; v < NV; ++v)
              Store(y + ((b * g.oh + r) * g.ow + c0 + p) * g.f + f0 + v * kL, acc[p][v]);
        }
}

// y = conv(x, kernel) with the input features innermost: kernel (k, k, F, c), c a multiple of
// kL, F <= kMaxThin output features; P pixels' F vectors of partial sums in registers,
// reduced at the end. J taps of a row at a time share their loads of x: pixel p at tap j + 1
// reads what pixel p + 1 reads at tap j (a tap past the kernel's edge has zero weights).
template <int F, int P, int J>
void ConvChannelsInner(const float* x, const float* kernel, float* y, const Geometry& g) {
  constexpr int W = P + J - 1;  // The pixels of x that J taps of P pixels read.
  for (int64_t b = 0; b < g.n; ++b)
    for (int64_t r = 0; r < g.oh; ++r)
      for (int64_t c0 = 0; c0 < g.ow; c0 += P) {
        V acc[P][F] = {};
        for (int64_t i = 0; i < g.k; ++i) {
          const float* win[P + kMaxKernel + J - 2];
          if (!RowWindow(x, g, b, r, c0, i, P + g.k + J - 2, win)) continue;
          for (int64_t j0 = 0; j0 < g.k; j0 += J) {
            const float* const* px = win + j0;
            const float* kv = kernel + (i * g.k + j0) * F * g.c;
            const int taps = static_cast<int>(std::min<int64_t>(J, g.k - j0));
            for (int64_t ch = 0; ch < g.c; ch += kL) {
              V kc[J][F];
              for (int j = 0; j < J; ++j)
                for (int f = 0; f < F; ++f)
                  kc[j][f] = j < taps ? Load(kv + (j * F + f) * g.c + ch) : V{};
              for (int q = 0; q < W; ++q) {
                const V xv = Load(px[q] + ch);
                for (int j = 0; j < J; ++j) {
                  const int p = q - j;
                  if (p < 0 || p >= P) continue;
                  for (int f = 0; f < F; ++f) acc[p][f] += xv * kc[j][f];
                }
              }
            }
          }
        }
        for (int p = 0; p < P && c0 + p < g.ow; ++p)
          for (int f = 0; f < F; ++f) y[((b * g.oh + r) * g.ow + c0 + p) * F + f] = Sum(acc[p][f]);
      }
}

// The output pixels (their columns) whose tap (i, j) reads inside x: [*lo, *hi).
inline void TapColumns(const Geometry& g, int64_t j, int64_t* lo, int64_t* hi) {
  *lo = std::max<int64_t>(0, g.left - j);
  *hi = std::min<int64_t>(g.ow, g.w + g.left - j);
}

// Calls tap(i, j, xrow, drow, lo, hi) for each row of dy (drow: its pixels' f features) and
// each tap (i, j) that reads inside x there: row by row of dy, so that the k rows of x a row
// reads stay in the cache across its k*k taps. Output pixel c of the row reads xrow + c * g.c
// at that tap, for c in [lo, hi).
template <class Tap>
void ForEachRowTap(const float* x, const float* dy, const Geometry& g, Tap tap) {
  for (int64_t b = 0; b < g.n; ++b)
    for (int64_t r = 0; r < g.oh; ++r) {
      const float* drow = dy + (b * g.oh + r) * g.ow * g.f;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t rr = r + i - g.top;
        if (rr < 0 || rr >= g.h) continue;
        for (int64_t j = 0; j < g.k; ++j) {
          int64_t lo, hi;
          TapColumns(g, j, &lo, &hi);
          tap(i, j, x + ((b * g.h + rr) * g.w + j - g.left) * g.c, drow, lo, hi);
        }
      }
    }
}

// dkernel (k, k, c, f) = sum over pixels of x at each tap times dy, for thin output sides
// (f <= kMaxThin, c a multiple of CB): each tap's F x CB sums over a row in registers, then
// added into dkernel (zeroed first).
template <int F, int CB>
void KernelGradChannelsInner(const float* x, const float* dy, float* dk, const Geometry& g) {
  constexpr int NV = CB / kL;
  std::fill(dk, dk + g.k * g.k * g.c * F, 0.f);
  ForEachRowTap(x, dy, g, [&](int64_t i, int64_t j, const float* xrow, const float* drow,
                              int64_t lo, int64_t hi) {
    float* dtap = dk + (i * g.k + j) * g.c * F;
    for (int64_t c0 = 0; c0 < g.c; c0 += CB) {
      V acc[F][NV] = {};
      for (int64_t c = lo; c < hi; ++c) {
        V xs[NV];
        for (int v = 0; v < NV; ++v) xs[v] = Load(xrow + c * g.c + c0 + v * kL);
        for (int f = 0; f < F; ++f) {
          const float d = drow[c * F + f];
          for (int v = 0; v < NV; ++v) acc[f][v] += xs[v] * d;
        }
      }
      float sums[F][CB];
      for (int f = 0; f < F; ++f)
        for (int v = 0; v < NV; ++v) Store(sums[f] + v * kL, acc[f][v]);
      for (int l = 0; l < CB; ++l)
        for (int f = 0; f < F; ++f) dtap[(c0 + l) * F + f] += sums[f][l];
    }
  });
}

// dkernel (k, k, C, f) for thin input sides (C <= kMaxThin, f a multiple of FB).
template <int C, int FB>
void KernelGradFeaturesInner(const float* x, const float* dy, float* dk, const Geometry& g) {
  constexpr int NV = FB / kL;
  std::fill(dk, dk + g.k * g.k * C * g.f, 0.f);
  ForEachRowTap(x, dy, g, [&](int64_t i, int64_t j, const float* xrow, const float* drow,
                              int64_t lo, int64_t hi) {
    for (int64_t f0 = 0; f0 < g.f; f0 += FB) {
      V acc[C][NV] = {};
      for (int64_t c = lo; c < hi; ++c) {
        V ds[NV];
        for (int v = 0; v < NV; ++v) ds[v] = Load(drow + c * g.f + f0 + v * kL);
        for (int ch = 0; ch < C; ++ch) {
          const float xv = xrow[c * C + ch];
          for (int v = 0; v < NV; ++v) acc[ch][v] += xv * ds[v];
        }
      }
      for (int ch = 0; ch < C; ++ch) {
        float* out = dk + ((i * g.k + j) * C + ch) * g.f + f0;
        for (int v = 0; v < NV; ++v) Store(out + v * kL, Load(out + v * kL) + acc[ch][v]);
      }
    }
  });
}

// The passes as types, so that Dispatch can pick their template arguments at run time.
template <int F, int P>
struct ChannelsConv {
  static void Run(const float* a, const float* b, float* out, const Geometry& g) {
    ConvChannelsInner<F, P, (F <= 2 ? 3 : 2)>(a, b, out, g);
  }
};
template <int F, int CB>
struct ChannelsKernelGrad {
  static void Run(const float* a, const float* b, float* out, const Geometry& g) {
    KernelGradChannelsInner<F, CB>(a, b, out, g);
  }
};
template <int C, int FB>
struct FeaturesKernelGrad {
  static void Run(const float* a, const float* b, float* out, const Geometry& g) {
    KernelGradFeaturesInner<C, FB>(a, b, out, g);
  }
};

// Pass<thin, B>::Run, the thin side's size a template argument (so its loops unroll) and B
// the wide side's block: `wide_block` (a multiple of 32 features) or `narrow_block`.
template <template <int, int> class Pass, int (*Block)(int thin, bool wide)>
ffi::Error Dispatch(int64_t thin, bool wide, const float* a, const float* b, float* out,
                    const Geometry& g) {
  switch (thin) {
#define SRGAN_CASE(T)                                                  \
  case T:                                                              \
    if (wide) Pass<T, Block(T, true)>::Run(a, b, out, g);              \
    else Pass<T, Block(T, false)>::Run(a, b, out, g);                  \
    return ffi::Error::Success();
    SRGAN_CASE(1) SRGAN_CASE(2) SRGAN_CASE(3) SRGAN_CASE(4)
#undef SRGAN_CASE
  }
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "direct conv: more than 4 thin features");
}

// Pixels a ChannelsConv block holds: F vectors each, beside J x F of the kernel and one of x.
constexpr int ConvPixels(int thin, bool) {
  return thin == 1 ? 7 : (kRegisters - 1) / thin - (thin <= 2 ? 3 : 2);
}
// Wide-side features a kernel gradient's tap holds (thin x this in registers).
constexpr int GradBlock(int, bool wide) { return wide ? 32 : 16; }

Geometry Shape(const ffi::Buffer<ffi::F32>& x, int64_t k, int64_t f, int64_t oh, int64_t ow,
               int64_t top, int64_t left) {
  auto d = x.dimensions();
  return Geometry{d[0], d[1], d[2], d[3], oh, ow, f, k, top, left};
}

// x (n, h, w, c); kernel (k, k, c, f) when `features_inner` (c <= 4, f a multiple of 16), else
// (k, k, f, c) (f <= 4, c a multiple of 16); y (n, oh, ow, f).
ffi::Error Conv(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                ffi::ResultBuffer<ffi::F32> y, int64_t pad_top, int64_t pad_left,
                bool features_inner) {
  auto yd = y->dimensions();
  auto kd = kernel.dimensions();
  const Geometry g = Shape(x, kd[0], yd[3], yd[1], yd[2], pad_top, pad_left);
  if (yd[0] != g.n || kd[1] != g.k || g.c > kMaxZeros || g.k > kMaxKernel ||
      kd[2] * kd[3] != g.c * g.f || (features_inner ? kd[3] : kd[2]) != g.f)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "direct conv: bad shape");
  const float* xs = x.typed_data();
  const float* ks = kernel.typed_data();
  float* ys = y->typed_data();
  if (features_inner) {
    if (g.f % kV != 0 || g.c > kMaxThin)
      return ffi::Error(ffi::ErrorCode::kInvalidArgument, "direct conv: bad features");
    if (g.f % 32 == 0) ConvFeaturesInner<32, kRegisters / 5>(xs, ks, ys, g);
    else ConvFeaturesInner<16, kRegisters / 3>(xs, ks, ys, g);
    return ffi::Error::Success();
  }
  if (g.c % kV != 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "direct conv: bad input features");
  return Dispatch<ChannelsConv, ConvPixels>(g.f, false, xs, ks, ys, g);
}

// x (n, h, w, c), dy (n, oh, ow, f) -> dkernel (k, k, c, f).
ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t pad_top, int64_t pad_left) {
  auto dd = dy.dimensions();
  auto kd = dk->dimensions();
  const Geometry g = Shape(x, kd[0], dd[3], dd[1], dd[2], pad_top, pad_left);
  if (dd[0] != g.n || kd[1] != g.k || kd[2] != g.c || kd[3] != g.f)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "direct conv gradient: bad shape");
  if (g.f <= kMaxThin && g.c % kV == 0)
    return Dispatch<ChannelsKernelGrad, GradBlock>(g.f, g.c % 32 == 0, x.typed_data(),
                                                   dy.typed_data(), dk->typed_data(), g);
  if (g.c <= kMaxThin && g.f % kV == 0)
    return Dispatch<FeaturesKernelGrad, GradBlock>(g.c, g.f % 32 == 0, x.typed_data(),
                                                   dy.typed_data(), dk->typed_data(), g);
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "direct conv gradient: not a thin conv");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganDirectConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<bool>("features_inner"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganDirectKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
