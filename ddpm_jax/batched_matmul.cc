// C[b] = A[b] @ B[b] in float32 for every b of the leading dimensions: Winograd's (m+2)^2
// products of one 3x3 convolution (ddpm_jax/winograd.py), as an XLA FFI handler on the CPU.
//
// XLA's CPU runtime runs a batched dot as one matmul after another, and a product of a few
// rows (one image's tiles) on one core. Here the products are shared out between the calling
// thread and tasks on XLA's own intra-op thread pool, each taking the next product from a
// counter until none is left; each holds the product it takes next and prefetches its B while
// it computes one. Built by ddpm_jax/native.py with -march=native.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "ffi_call.h"

namespace {

// Register tile: MR rows of C by NV vectors of VW floats, chosen for the vector registers the
// compiler targets (32 zmm, 16 ymm, 16 xmm): MR * NV accumulators, NV rows of B and a broadcast.
// MB: rows of A per block, whose MB x KB floats stay in L2 while every panel of B passes over
// them (on AVX2 only, where L2 is smaller: 512 KB a core on a Zen 3 EPYC).
#if defined(__AVX512F__)
constexpr int VW = 16, MR = 4, NV = 4;
constexpr int64_t MB = INT64_MAX;
#elif defined(__AVX__)
constexpr int VW = 8, MR = 6, NV = 2;
constexpr int64_t MB = 20 * MR;
#else
constexpr int VW = 4, MR = 4, NV = 2;
constexpr int64_t MB = 20 * MR;
#endif
constexpr int NR = NV * VW;
constexpr int64_t KB = 128;  // rows of B per pass, so that a panel of B stays in L1/L2
constexpr int64_t kSmallCall = 1 << 20;  // multiply-adds

typedef float vec __attribute__((vector_size(VW * sizeof(float)), aligned(sizeof(float))));

// Lines of memory to bring into L2 a line at a time (the next product's B while one is computed:
// a product's first pass over B would otherwise wait on each line).
struct Prefetch {
  const char* next;
  const char* end;
  inline void step() {
    if (next < end) {
      __builtin_prefetch(next, 0, 2);
      next += 64;
    }
  }
};

// C[R x V*VW] = A[R x kc] B[kc x V*VW] (+ C if accumulate); row strides lda, ldb, ldc.
template <int R, int V>
inline void tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t kc,
                 bool accumulate, Prefetch& pf) {
  vec acc[R][V];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < V; ++j) acc[i][j] = accumulate ? *(const vec*)(c + i * ldc + j * VW) : vec{};
  for (int64_t k = 0; k < kc; ++k) {
    pf.step();
    vec row[V];
    for (int j = 0; j < V; ++j) row[j] = *(const vec*)(b + k * ldb + j * VW);
    for (int i = 0; i < R; ++i) {
      const float s = a[i * lda + k];
      for (int j = 0; j < V; ++j) acc[i][j] += s * row[j];
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < V; ++j) *(vec*)(c + i * ldc + j * VW) = acc[i][j];
}

// Columns j.. j+V*VW of C (m x n), rows i0.. i1, from rows k0.. k0+kc of B: MR rows at a time,
// then the rest in one narrower tile.
template <int V>
void columns(const float* a, const float* b, float* c, int64_t i0, int64_t i1, int64_t k, int64_t n, int64_t j,
             int64_t k0, int64_t kc, bool accumulate, Prefetch& pf) {
  int64_t i = i0;
  for (; i + MR <= i1; i += MR) tile<MR, V>(a + i * k + k0, k, b + k0 * n + j, n, c + i * n + j, n, kc, accumulate, pf);
  const float *ta = a + i * k + k0, *tb = b + k0 * n + j;
  float* tc = c + i * n + j;
  switch (i1 - i) {
    case 0: break;
    case 1: tile<1, V>(ta, k, tb, n, tc, n, kc, accumulate, pf); break;
    case 2: tile<2, V>(ta, k, tb, n, tc, n, kc, accumulate, pf); break;
    case 3: tile<3, V>(ta, k, tb, n, tc, n, kc, accumulate, pf); break;
    case 4: tile<4, V>(ta, k, tb, n, tc, n, kc, accumulate, pf); break;
    default: tile<5, V>(ta, k, tb, n, tc, n, kc, accumulate, pf); break;  // MR is at most 6
  }
}

// The last columns, fewer than one vector, one float at a time.
void edge(const float* a, const float* b, float* c, int64_t i0, int64_t i1, int64_t k, int64_t n, int64_t j,
          int64_t k0, int64_t kc, bool accumulate) {
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t col = j; col < n; ++col) {
      float s = accumulate ? c[i * n + col] : 0.f;
      for (int64_t p = k0; p < k0 + kc; ++p) s += a[i * k + p] * b[p * n + col];
      c[i * n + col] = s;
    }
}

// C (m x n) = A (m x k) B (k x n), all row-major and contiguous, prefetching pf's lines meanwhile.
void matmul(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n, Prefetch& pf) {
  static_assert(MR <= 6, "columns() handles remainders of at most 5 rows");
  if (k == 0) std::fill(c, c + m * n, 0.f);
  for (int64_t k0 = 0; k0 < k; k0 += KB) {
    const int64_t kc = k - k0 < KB ? k - k0 : KB;
    const bool accumulate = k0 > 0;
    for (int64_t i0 = 0; i0 < m; i0 += MB) {
      const int64_t i1 = m - i0 < MB ? m : i0 + MB;
      int64_t j = 0;
      for (; j + NR <= n; j += NR) columns<NV>(a, b, c, i0, i1, k, n, j, k0, kc, accumulate, pf);
      for (; j + VW <= n; j += VW) columns<1>(a, b, c, i0, i1, k, n, j, k0, kc, accumulate, pf);
      if (j < n) edge(a, b, c, i0, i1, k, n, j, k0, kc, accumulate);
    }
  }
}

// One call's products and the counters its threads share (kept alive by whichever ends last).
struct Work {
  const float* a;
  const float* b;
  float* c;
  int64_t count, m, k, n;
  std::atomic<int64_t> next{0}, finished{0};

  // Each thread holds the product it will compute next while it computes one, and prefetches that
  // one's B meanwhile.
  void take() {
    int64_t p = next.fetch_add(1, std::memory_order_relaxed);
    while (p < count) {
      const int64_t after = next.fetch_add(1, std::memory_order_relaxed);
      const char* pb = after < count ? (const char*)(b + after * k * n) : nullptr;
      Prefetch pf{pb, pb ? pb + k * n * sizeof(float) : nullptr};
      matmul(a + p * m * k, b + p * k * n, c + p * m * n, m, k, n, pf);
      finished.fetch_add(1, std::memory_order_release);
      p = after;
    }
  }
};

XLA_FFI_Error* BatchedMatmul(const ddpm_ffi::Call& call) {
  const XLA_FFI_Buffer *a = call.arg(0), *b = call.arg(1), *c = call.ret(0);
  if (!a || !b || !c) return call.error("batched_matmul: takes two float32 arrays and returns one");
  const int64_t rank = a->rank;
  if (rank < 2 || b->rank != rank || c->rank != rank)
    return call.error("batched_matmul: operands of unequal rank");
  const int64_t *da = a->dims, *db = b->dims;
  int64_t count = 1;
  for (int64_t i = 0; i + 2 < rank; ++i) {
    if (da[i] != db[i]) return call.error("batched_matmul: unequal batch dimensions");
    count *= da[i];
  }
  if (da[rank - 1] != db[rank - 2]) return call.error("batched_matmul: inner dimensions differ");
  auto work = std::make_shared<Work>();
  work->a = (const float*)a->data;
  work->b = (const float*)b->data;
  work->c = (float*)c->data;
  work->count = count;
  work->m = da[rank - 2];
  work->k = da[rank - 1];
  work->n = db[rank - 1];
  // A call of little work (a tiny model's) runs on the calling thread: waking another costs more.
  const bool small = count * work->m * work->k * work->n < kSmallCall;
  const int64_t helpers = small ? 0 : std::min<int64_t>(call.threads(), count) - 1;
  for (int64_t h = 0; h < helpers; ++h) call.share(work, &Work::take);
  work->take();
  // Every product is taken; wait for those another thread is still computing.
  while (work->finished.load(std::memory_order_acquire) < count) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }
  return nullptr;
}

}  // namespace

extern "C" XLA_FFI_Error* ddpm_jax_batched_matmul(XLA_FFI_CallFrame* frame) {
  return ddpm_ffi::handle(frame, BatchedMatmul);
}
