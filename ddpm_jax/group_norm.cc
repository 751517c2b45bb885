// GroupNorm, then swish if asked, in float32 as an XLA FFI handler on the CPU (ddpm_jax/group_norm.py).
//
// x is (..., H, W, C): every leading index an image of H x W pixels, C its channels in `groups`
// equal groups; y is (..., H + 2 pad, W + 2 pad, C), zero on its border (a 3x3 convolution's
// input). Per image and group: mean and variance over its pixels and channels (the variance of
// the deviations, as Flax's use_fast_variance=False), y = (x - mean) / sqrt(var + eps) * scale +
// bias, then y * sigmoid(y) if swish. XLA runs the same as three passes (statistics twice, then the
// normalisation fused with what follows), each on one core at batch 1; here the statistics take
// one pass (sums of x - k and (x - k)^2, k each channel's first value, combined in double), and
// the parts of each pass are shared between the calling thread and one task on XLA's intra-op
// thread pool. Built by ddpm_jax/native.py with -march=native.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "ffi_call.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;
#elif defined(__AVX__)
constexpr int VW = 8;
#else
constexpr int VW = 4;
#endif
constexpr int64_t kPartElements = 16384;  // floats per part of a pass, at most kParts per image
constexpr int64_t kParts = 8;
constexpr int64_t kBlock = 64;  // pixels summed in float before the sums go to double

typedef float vec __attribute__((vector_size(VW * sizeof(float)), aligned(sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(VW * sizeof(int32_t)), aligned(sizeof(int32_t))));

inline vec splat(float v) { return vec{} + v; }
inline vec load(const float* p) { return *(const vec*)p; }

// exp(x), within 2 ulp for x in [-87.3, 88.7] (clamped there): x = n ln2 + r, |r| <= ln2 / 2, and
// Cephes' polynomial for exp(r).
inline vec exp_vec(vec x) {
  x = x < splat(-87.3f) ? splat(-87.3f) : x;
  x = x > splat(88.7f) ? splat(88.7f) : x;
  const vec round = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vec n = (x * splat(1.44269504088896341f) + round) - round;
  const vec r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vec p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.f);
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec two_n;
  __builtin_memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// y * sigmoid(y) = y / (1 + exp(-y)).
inline vec swish_vec(vec y) {
  const vec d = splat(1.f) + exp_vec(-y);
#if defined(__AVX512F__)
  vec r = (vec)_mm512_rcp14_ps((__m512)d);  // 14 bits, then one Newton step: about 1 ulp
  r = r * (splat(2.f) - d * r);
  return y * r;
#else
  return y / d;
#endif
}

inline float swish_one(float y) { return y / (1.f + std::exp(-y)); }

inline void pause() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// One call: its parts (image, pixel range) and the counters its threads share (kept alive by
// whichever thread ends last). Pass 0 sums each part, pass 1 normalises it.
struct Work {
  const float *x, *scale, *bias;
  float* y;
  int64_t images, height, width, pixels, c, groups, parts, pad;
  float eps;
  bool swish;
  std::vector<double> sum, squares;  // [image][part][channel]: of x - k and (x - k)^2
  std::atomic<int64_t> next[2] = {0, 0}, finished[2] = {0, 0};

  int64_t count() const { return images * parts; }
  // The pixels [lo, hi) of part `task` of its image.
  void bounds(int64_t task, int64_t* lo, int64_t* hi) const {
    *lo = pixels * (task % parts) / parts;
    *hi = pixels * (task % parts + 1) / parts;
  }
  const float* origin(int64_t image) const { return x + image * pixels * c; }

  // Pass 0 over one part: per channel, the sums of d = x - k and d^2, in float over kBlock pixels
  // at a time, then in double.
  void sums(int64_t task) {
    int64_t lo, end;
    bounds(task, &lo, &end);
    const float* k = origin(task / parts);
    double* s1 = sum.data() + task * c;
    double* s2 = squares.data() + task * c;
    std::fill(s1, s1 + c, 0.0);
    std::fill(s2, s2 + c, 0.0);
    for (int64_t p0 = lo; p0 < end; p0 += kBlock) {
      const int64_t p1 = std::min(end, p0 + kBlock);
      int64_t ci = 0;
      for (; ci + VW <= c; ci += VW) {
        vec a{}, q{};
        const vec kv = load(k + ci);
        for (int64_t p = p0; p < p1; ++p) {
          const vec d = load(k + p * c + ci) - kv;
          a += d;
          q += d * d;
        }
        for (int j = 0; j < VW; ++j) {
          s1[ci + j] += a[j];
          s2[ci + j] += q[j];
        }
      }
      for (; ci < c; ++ci) {
        float a = 0, q = 0;
        for (int64_t p = p0; p < p1; ++p) {
          const float d = k[p * c + ci] - k[ci];
          a += d;
          q += d * d;
        }
        s1[ci] += a;
        s2[ci] += q;
      }
    }
  }

  // Each channel's group mean and 1/sqrt(var + eps) * scale for `image`, from pass 0's sums:
  // sum over a group's channels of sum_p (x - m)^2 = S2 + 2 (k - m) S1 + P (k - m)^2.
  void coefficients(int64_t image, float* mean, float* mul) const {
    const int64_t cg = c / groups;
    const double n = double(pixels) * cg;
    const float* k = origin(image);
    std::vector<double> s1(c, 0.0), s2(c, 0.0);
    for (int64_t part = 0; part < parts; ++part)
      for (int64_t ci = 0; ci < c; ++ci) {
        s1[ci] += sum[(image * parts + part) * c + ci];
        s2[ci] += squares[(image * parts + part) * c + ci];
      }
    for (int64_t g = 0; g < groups; ++g) {
      double total = 0;
      for (int64_t ci = g * cg; ci < (g + 1) * cg; ++ci) total += s1[ci] + pixels * double(k[ci]);
      const double m = total / n;
      double deviations = 0;
      for (int64_t ci = g * cg; ci < (g + 1) * cg; ++ci) {
        const double d = k[ci] - m;
        deviations += s2[ci] + 2 * d * s1[ci] + pixels * d * d;
      }
      const float rstd = 1.f / std::sqrt(float(deviations / n) + eps);
      for (int64_t ci = g * cg; ci < (g + 1) * cg; ++ci) {
        mean[ci] = float(m);
        mul[ci] = rstd * scale[ci];
      }
    }
  }

  // Zeros on one image's border of `pad` pixels in y.
  void border(float* out) const {
    if (!pad) return;
    const int64_t row = (width + 2 * pad) * c;
    std::fill(out, out + pad * row, 0.f);
    std::fill(out + (height + pad) * row, out + (height + 2 * pad) * row, 0.f);
    for (int64_t r = pad; r < height + pad; ++r) {
      std::fill(out + r * row, out + r * row + pad * c, 0.f);
      std::fill(out + r * row + (width + pad) * c, out + (r + 1) * row, 0.f);
    }
  }

  // Pass 1 over one part: y = (x - mean) * mul + bias, swish if asked.
  void normalise(int64_t task) const {
    const int64_t image = task / parts;
    int64_t lo, end;
    bounds(task, &lo, &end);
    std::vector<float> mean(c), mul(c);
    coefficients(image, mean.data(), mul.data());
    const float* in = origin(image);
    const int64_t row = (width + 2 * pad) * c;  // of y
    float* out = y + image * (height + 2 * pad) * row;
    if (task % parts == 0) border(out);
    for (int64_t p = lo; p < end; ++p) {
      float* o = out + (p / width + pad) * row + (p % width + pad) * c;
      int64_t ci = 0;
      for (; ci + VW <= c; ci += VW) {
        vec v = (load(in + p * c + ci) - load(mean.data() + ci)) * load(mul.data() + ci) + load(bias + ci);
        *(vec*)(o + ci) = swish ? swish_vec(v) : v;
      }
      for (; ci < c; ++ci) {
        const float v = (in[p * c + ci] - mean[ci]) * mul[ci] + bias[ci];
        o[ci] = swish ? swish_one(v) : v;
      }
    }
  }

  void wait(int pass) const {
    while (finished[pass].load(std::memory_order_acquire) < count()) pause();
  }

  // Take parts of pass 0 until none is left, wait for the others' to end, then pass 1.
  void run() {
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t t; (t = next[pass].fetch_add(1, std::memory_order_relaxed)) < count();) {
        if (pass == 0)
          sums(t);
        else
          normalise(t);
        finished[pass].fetch_add(1, std::memory_order_release);
      }
      if (pass == 0) wait(0);
    }
  }
};

XLA_FFI_Error* GroupNorm(const ddpm_ffi::Call& call) {
  const XLA_FFI_Buffer *x = call.arg(0), *scale = call.arg(1), *bias = call.arg(2), *y = call.ret(0);
  if (!x || !scale || !bias || !y) return call.error("group_norm: takes three float32 arrays and returns one");
  int64_t groups, pad;
  float eps;
  bool swish;
  if (!call.attr("groups", XLA_FFI_DataType_S64, &groups) || !call.attr("eps", XLA_FFI_DataType_F32, &eps) ||
      !call.attr("swish", XLA_FFI_DataType_PRED, &swish) || !call.attr("pad", XLA_FFI_DataType_S64, &pad))
    return call.error("group_norm: needs the attributes groups (int64), eps (float32), swish (bool) and pad (int64)");
  const int64_t rank = x->rank;
  if (rank < 3) return call.error("group_norm: x needs height, width and channel axes");
  const int64_t *d = x->dims, *dy = y->dims;
  auto w = std::make_shared<Work>();
  w->c = d[rank - 1];
  w->width = d[rank - 2];
  w->height = d[rank - 3];
  w->pixels = w->height * w->width;
  w->images = 1;
  for (int64_t i = 0; i + 3 < rank; ++i) w->images *= d[i];
  if (pad < 0 || y->rank != rank || dy[rank - 3] != w->height + 2 * pad || dy[rank - 2] != w->width + 2 * pad)
    return call.error("group_norm: y is not x padded by `pad`");
  if (groups <= 0 || w->c % groups) return call.error("group_norm: channels not in equal groups");
  if (ddpm_ffi::elements(scale) != w->c || ddpm_ffi::elements(bias) != w->c)
    return call.error("group_norm: scale and bias need one value per channel");
  float* out = (float*)y->data;
  if (w->images * w->pixels == 0) {
    std::fill(out, out + ddpm_ffi::elements(y), 0.f);
    return nullptr;
  }
  w->x = (const float*)x->data;
  w->scale = (const float*)scale->data;
  w->bias = (const float*)bias->data;
  w->y = out;
  w->groups = groups;
  w->eps = eps;
  w->swish = swish;
  w->pad = pad;
  w->parts = std::max<int64_t>(1, std::min({kParts, w->pixels, w->pixels * w->c / kPartElements}));
  w->sum.resize(w->count() * w->c);
  w->squares.resize(w->count() * w->c);
  // A call of one part (a small map) runs on the calling thread: waking another costs more.
  if (w->count() > 1 && call.threads() > 1) call.share(w, &Work::run);
  w->run();
  w->wait(1);
  return nullptr;
}

}  // namespace

extern "C" XLA_FFI_Error* ddpm_jax_group_norm(XLA_FFI_CallFrame* frame) {
  return ddpm_ffi::handle(frame, GroupNorm);
}
