// XLA FFI handlers for srgan_jax/onednn.py: oneDNN's convolution (forward, backward data,
// backward weights) of NHWC inputs with HWIO kernels, f32, on oneDNN's CPU engine (its OpenMP
// build). Primitives are built once per shape and cached; each calling thread (an XLA device,
// one a core) has its own stream and scratch buffers and runs its calls itself, on one thread. The forward pass takes the HWIO kernel as it is (oneDNN's brgemm
// forward reads plain weights); the gradients reorder it to and from the layout oneDNN picks
// (with plain weights they fall back to its slower gemm-based kernels).
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Conv {
  dnnl::memory::desc src, wei_user, dst;
  dnnl::primitive prim;
  dnnl::memory::desc wei;  // The primitive's weights (or diff weights) layout.
  bool reorder = false;
  dnnl::reorder to_prim, from_prim;  // Reorders HWIO -> primitive layout, and back.
  size_t scratch = 0;
};

std::mutex mu;
std::map<Key, std::shared_ptr<Conv>> cache;

std::shared_ptr<Conv> Get(int phase, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f,
                          int64_t k, int64_t s, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                          int64_t oh, int64_t ow) {
  Key key{phase, n, h, w, c, f, k, s, pt, pb, pl, pr, oh, ow};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto conv = std::make_shared<Conv>();
  auto& eng = Engine();
  conv->src = dnnl::memory::desc({n, c, h, w}, dt::f32, tag::nhwc);
  conv->dst = dnnl::memory::desc({n, f, oh, ow}, dt::f32, tag::nhwc);
  conv->wei_user = dnnl::memory::desc({f, c, k, k}, dt::f32, tag::hwio);
  dnnl::memory::desc any({f, c, k, k}, dt::f32, tag::any);
  dnnl::memory::dims strides{s, s}, pad_l{pt, pl}, pad_r{pb, pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // Forward with the user's HWIO kernel: oneDNN's brgemm forward takes plain weights.
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, conv->src,
      phase == 0 ? conv->wei_user : any, conv->dst, strides, pad_l, pad_r, attr);
  if (phase == 0) {
    conv->prim = dnnl::convolution_forward(fwd_pd);
    conv->wei = fwd_pd.weights_desc();
    conv->scratch = fwd_pd.scratchpad_desc().get_size();
  } else if (phase == 1) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, conv->src, any, conv->dst, strides, pad_l,
        pad_r, fwd_pd, attr);
    conv->prim = dnnl::convolution_backward_data(pd);
    conv->wei = pd.weights_desc();
    conv->scratch = pd.scratchpad_desc().get_size();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, conv->src, any, conv->dst, strides, pad_l,
        pad_r, fwd_pd, attr);
    conv->prim = dnnl::convolution_backward_weights(pd);
    conv->wei = pd.diff_weights_desc();
    conv->scratch = pd.scratchpad_desc().get_size();
  }
  conv->reorder = conv->wei != conv->wei_user;
  if (conv->reorder) {
    conv->to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, conv->wei_user, eng, conv->wei));
    conv->from_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, conv->wei, eng, conv->wei_user));
  }
  cache[key] = conv;
  return conv;
}

// One call: phase 0 forward (a = x, b = kernel, out = y), 1 backward data (a = dy, b = kernel,
// out = dx), 2 backward weights (a = x, b = dy, out = kernel gradient).
ffi::Error Run(int phase, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::ResultBuffer<ffi::F32> out, int64_t k, int64_t s, int64_t pt, int64_t pb,
               int64_t pl, int64_t pr) {
  // x's dims (N, H, W, C) and y's (N, OH, OW, F) from the operands.
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  int64_t n = ad[0], h, w, c, f, oh, ow;
  if (phase == 0) { h = ad[1]; w = ad[2]; c = ad[3]; f = od[3]; oh = od[1]; ow = od[2]; }
  else if (phase == 1) { oh = ad[1]; ow = ad[2]; f = ad[3]; h = od[1]; w = od[2]; c = od[3]; }
  else { h = ad[1]; w = ad[2]; c = ad[3]; oh = bd[1]; ow = bd[2]; f = bd[3]; }
  omp_set_num_threads(1);  // This thread's OpenMP teams: the other cores run other devices.
  std::shared_ptr<Conv> conv;
  try {
    conv = Get(phase, n, h, w, c, f, k, s, pt, pb, pl, pr, oh, ow);
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  auto& eng = Engine();
  auto& strm = Stream();
  thread_local std::vector<char> scratch, weights;
  if (scratch.size() < conv->scratch) scratch.resize(conv->scratch);
  if (conv->reorder && weights.size() < conv->wei.get_size()) weights.resize(conv->wei.get_size());
  dnnl::memory scratch_mem(dnnl::memory::desc({(int64_t)conv->scratch}, dt::u8, tag::x), eng,
                           scratch.data());
  try {
    if (phase == 0) {
      dnnl::memory x(conv->src, eng, a.typed_data()), kw(conv->wei_user, eng, b.typed_data()),
          y(conv->dst, eng, out->typed_data());
      conv->prim.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, kw}, {DNNL_ARG_DST, y},
                                {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else if (phase == 1) {
      dnnl::memory dy(conv->dst, eng, a.typed_data()), ku(conv->wei_user, eng, b.typed_data()),
          dx(conv->src, eng, out->typed_data());
      dnnl::memory kw = ku;
      if (conv->reorder) {
        kw = dnnl::memory(conv->wei, eng, weights.data());
        conv->to_prim.execute(strm, ku, kw);
      }
      conv->prim.execute(strm, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, kw},
                                {DNNL_ARG_DIFF_SRC, dx}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else {
      dnnl::memory x(conv->src, eng, a.typed_data()), dy(conv->dst, eng, b.typed_data()),
          du(conv->wei_user, eng, out->typed_data());
      dnnl::memory dw = conv->reorder ? dnnl::memory(conv->wei, eng, weights.data()) : du;
      conv->prim.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy},
                                {DNNL_ARG_DIFF_WEIGHTS, dw}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      if (conv->reorder) conv->from_prim.execute(strm, dw, du);
    }
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

#define SRGAN_BIND                                                                          \
  ffi::Ffi::Bind()                                                                          \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Ret<ffi::Buffer<ffi::F32>>()                                                         \
      .Attr<int64_t>("kernel_size")                                                         \
      .Attr<int64_t>("stride")                                                              \
      .Attr<int64_t>("pad_top")                                                             \
      .Attr<int64_t>("pad_bottom")                                                          \
      .Attr<int64_t>("pad_left")                                                            \
      .Attr<int64_t>("pad_right")

// One handler per phase: 0 forward, 1 backward data, 2 backward weights (see Run).
template <int kPhase>
ffi::Error Phase(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> o,
                 int64_t k, int64_t s, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(kPhase, a, b, o, k, s, pt, pb, pl, pr);
}

}  // namespace

// 0 when oneDNN's CPU engine starts (srgan_jax/onednn.py asks before it registers the handlers).
extern "C" int SrganOnednnProbe() {
  try {
    Engine();
    return 0;
  } catch (...) {
    return 1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganOnednnConvForward, Phase<0>, SRGAN_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganOnednnConvInputGrad, Phase<1>, SRGAN_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SrganOnednnConvKernelGrad, Phase<2>, SRGAN_BIND);
