// XLA FFI handlers for srgan_jax/adam.py: one parameter's Adam step (Kingma & Ba 2015, as
// optax.adam computes it) and, for an averaged state, the EMA of the new parameter, in one
// pass over its buffers on the caller's thread (an XLA device, one a core). XLA:CPU compiles
// the same maths into three or four passes and a copy of the second moment; the step is
// memory-bound, so one pass is what makes it cheaper.
//
// Each element goes through the operations of optax.adam and state.ema_update in float as
// XLA:CPU (jax 0.10) compiles one parameter's update alone, so that the results are the same
// to the bit there: a division by the bias corrections as a product with their inverse,
// a * b + c * d as fma(a, b, c * d), and no other contraction (adam.py builds this file with
// -ffp-contract=off). In a larger program XLA may fuse the maths otherwise (the second moment
// recomputed inside the parameter's pass) and round an element's last bit differently.
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The scalars of one step, as adam.py computes them (the same values optax uses).
enum Coefficient {
  kOneMinusB1,    // 1 - b1
  kB1,            // b1
  kOneMinusB2,    // 1 - b2
  kB2,            // b2
  kInverseCorrection1,  // 1 / (1 - b1 ** count) (count after this step)
  kInverseCorrection2,  // 1 / (1 - b2 ** count)
  kEpsRoot,       // optax's eps_root
  kEps,           // eps
  kStep,          // -learning rate
  kEmaDecay,      // the EMA's decay at this step (state.ema_update)
  kOneMinusDecay, // 1 - that decay
  kCoefficients,
};

bool SameSize(size_t n, std::initializer_list<size_t> others) {
  for (size_t m : others)
    if (m != n) return false;
  return true;
}

template <bool kEma>
void Update(int64_t n, const float* c, const float* p, const float* g, const float* m,
            const float* v, const float* e, float* p_out, float* m_out, float* v_out,
            float* e_out) {
  // In place (outputs aliasing inputs) is fine: element i reads only index i before writing it.
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = std::fma(c[kOneMinusB1], gi, c[kB1] * m[i]);
    const float vi = std::fma(c[kOneMinusB2], gi * gi, c[kB2] * v[i]);
    const float ratio = (mi * c[kInverseCorrection1]) /
                        (std::sqrt(vi * c[kInverseCorrection2] + c[kEpsRoot]) + c[kEps]);
    const float pi = std::fma(c[kStep], ratio, p[i]);
    m_out[i] = mi;
    v_out[i] = vi;
    p_out[i] = pi;
    if (kEma) e_out[i] = std::fma(c[kEmaDecay], e[i], c[kOneMinusDecay] * pi);
  }
}

ffi::Error CheckCoefficients(const ffi::Buffer<ffi::F32>& coefficients) {
  if (coefficients.element_count() != kCoefficients)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "Adam: bad coefficients");
  return ffi::Error::Success();
}

// p, g, m, v, coefficients -> p', m', v'.
ffi::Error Adam(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> m,
                ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> coefficients,
                ffi::ResultBuffer<ffi::F32> p_out, ffi::ResultBuffer<ffi::F32> m_out,
                ffi::ResultBuffer<ffi::F32> v_out) {
  const size_t n = p.element_count();
  if (!SameSize(n, {g.element_count(), m.element_count(), v.element_count(),
                    p_out->element_count(), m_out->element_count(), v_out->element_count()}))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "Adam: buffers of different sizes");
  if (auto error = CheckCoefficients(coefficients); error.failure()) return error;
  Update<false>(n, coefficients.typed_data(), p.typed_data(), g.typed_data(), m.typed_data(),
                v.typed_data(), nullptr, p_out->typed_data(), m_out->typed_data(),
                v_out->typed_data(), nullptr);
  return ffi::Error::Success();
}

// p, g, m, v, e, coefficients -> p', m', v', e'.
ffi::Error AdamEma(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> m,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> e,
                   ffi::Buffer<ffi::F32> coefficients, ffi::ResultBuffer<ffi::F32> p_out,
                   ffi::ResultBuffer<ffi::F32> m_out, ffi::ResultBuffer<ffi::F32> v_out,
                   ffi::ResultBuffer<ffi::F32> e_out) {
  const size_t n = p.element_count();
  if (!SameSize(n, {g.element_count(), m.element_count(), v.element_count(), e.element_count(),
                    p_out->element_count(), m_out->element_count(), v_out->element_count(),
                    e_out->element_count()}))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "Adam: buffers of different sizes");
  if (auto error = CheckCoefficients(coefficients); error.failure()) return error;
  Update<true>(n, coefficients.typed_data(), p.typed_data(), g.typed_data(), m.typed_data(),
               v.typed_data(), e.typed_data(), p_out->typed_data(), m_out->typed_data(),
               v_out->typed_data(), e_out->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganAdam, Adam,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganAdamEma, AdamEma,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
