// XLA FFI handlers for srgan_jax/batch_norm.py: the per-feature sums that BatchNorm's
// statistics and their gradient need, and the input gradient, each one pass over (..., c)
// buffers on the caller's thread (an XLA device, one a core), the features innermost so the
// compiler vectorises them. The sums accumulate in double.
#include <algorithm>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 512;  // Features summed at a time (their accumulators on the stack).

int64_t Rows(const ffi::Buffer<ffi::F32>& x, int64_t c) {
  return c == 0 ? 0 : static_cast<int64_t>(x.element_count()) / c;
}

int64_t Features(const ffi::Buffer<ffi::F32>& x) {
  auto d = x.dimensions();
  return d.size() == 0 ? 1 : d[d.size() - 1];
}

// x (..., c) -> sums (2, c): [sum of x, sum of x * x] over all but the last axis.
ffi::Error Moments(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> sums) {
  const int64_t c = Features(x), rows = Rows(x, c);
  if (sums->element_count() != static_cast<size_t>(2 * c))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "BatchNorm sums: bad shape");
  const float* src = x.typed_data();
  float* out = sums->typed_data();
  for (int64_t c0 = 0; c0 < c; c0 += kBlock) {
    const int64_t nc = std::min(kBlock, c - c0);
    double s[kBlock] = {}, q[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = src + r * c + c0;
#pragma GCC ivdep
      for (int64_t k = 0; k < nc; ++k) {
        const double v = row[k];
        s[k] += v;
        q[k] += v * v;
      }
    }
    for (int64_t k = 0; k < nc; ++k) {
      out[c0 + k] = static_cast<float>(s[k]);
      out[c + c0 + k] = static_cast<float>(q[k]);
    }
  }
  return ffi::Error::Success();
}

// g, x (..., c), mean (c) -> sums (2, c): [sum of g, sum of g * (x - mean)] over all but the
// last axis.
ffi::Error GradMoments(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sums) {
  const int64_t c = Features(x), rows = Rows(x, c);
  if (g.element_count() != x.element_count() || mean.element_count() != static_cast<size_t>(c) ||
      sums->element_count() != static_cast<size_t>(2 * c))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "BatchNorm gradient sums: bad shape");
  const float* gs = g.typed_data();
  const float* xs = x.typed_data();
  const float* mu = mean.typed_data();
  float* out = sums->typed_data();
  for (int64_t c0 = 0; c0 < c; c0 += kBlock) {
    const int64_t nc = std::min(kBlock, c - c0);
    double s[kBlock] = {}, q[kBlock] = {};
    const float* m = mu + c0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* gr = gs + r * c + c0;
      const float* xr = xs + r * c + c0;
#pragma GCC ivdep
      for (int64_t k = 0; k < nc; ++k) {
        const double v = gr[k];
        s[k] += v;
        q[k] += v * (xr[k] - m[k]);
      }
    }
    for (int64_t k = 0; k < nc; ++k) {
      out[c0 + k] = static_cast<float>(s[k]);
      out[c + c0 + k] = static_cast<float>(q[k]);
    }
  }
  return ffi::Error::Success();
}

// g, x (..., c), coefficients (4, c) = [a, mean, d_var, d_mean] -> dx (..., c):
// g * a + d_mean + (x - mean) * d_var, BatchNorm's input gradient once its sums are known.
ffi::Error GradInput(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                     ffi::Buffer<ffi::F32> coefficients, ffi::ResultBuffer<ffi::F32> dx) {
  const int64_t c = Features(x), rows = Rows(x, c);
  if (g.element_count() != x.element_count() || dx->element_count() != x.element_count() ||
      coefficients.element_count() != static_cast<size_t>(4 * c))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "BatchNorm input gradient: bad shape");
  const float* gs = g.typed_data();
  const float* xs = x.typed_data();
  const float* a = coefficients.typed_data();
  const float* mean = a + c;
  const float* d_var = a + 2 * c;
  const float* d_mean = a + 3 * c;
  float* out = dx->typed_data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* gr = gs + r * c;
    const float* xr = xs + r * c;
    float* o = out + r * c;
#pragma GCC ivdep
    for (int64_t k = 0; k < c; ++k)
      o[k] = gr[k] * a[k] + d_mean[k] + (xr[k] - mean[k]) * d_var[k];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganBatchNormMoments, Moments,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganBatchNormGradMoments, GradMoments,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganBatchNormGradInput, GradInput,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
