// Eq. 1 of seed 004_ in one pass: for every temporary kernel w (a row of x), the scores
// s_j = ||p_j||^2 - 2 w.p_j against every pool kernel p_j, reduced on the fly to the best score, its index and the
// second-best score. No (rows x pool) score matrix is written: each row's scores live in registers only.
//
// Layout (prepared by nws/search_native.py): the pool enters as pt = -2 p, transposed to (d, npad) with npad a
// multiple of the lane count, and pn = ||p||^2 (npad, padded with +inf), so a score is pn_j + sum_k w_k pt_kj: a
// chain of d fused multiply-adds whose rounding error nws.search._Bounds bounds (gamma_{d+3}), whatever the order.
// The caller certifies each row from (best, second) and recomputes the uncertain ones with the reference.
//
// One source, built several times by nws.search_native.build: NWS_LANES floats per vector (GCC vector
// extensions, so one loop serves AVX-512, AVX2 and plain SSE/NEON), NWS_ROWS rows per pass (each pool vector loaded
// once serves that many rows), NWS_SUFFIX names the variant's entry point.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#ifndef NWS_LANES
#define NWS_LANES 4
#endif
#ifndef NWS_ROWS
#define NWS_ROWS 2
#endif
#ifndef NWS_SUFFIX
#define NWS_SUFFIX generic
#endif
#ifndef NWS_SOURCE_HASH
#define NWS_SOURCE_HASH "unknown"
#endif
#define NWS_CAT2(a, b) a##b
#define NWS_CAT(a, b) NWS_CAT2(a, b)
#define NWS_ENTRY NWS_CAT(nws_top2_, NWS_SUFFIX)

namespace {

constexpr int L = NWS_LANES;
constexpr int R = NWS_ROWS;
typedef float vf __attribute__((vector_size(4 * L)));
typedef int32_t vi __attribute__((vector_size(4 * L)));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Rows [begin, end) of x. D > 0: the kernel size known at compile time (the loop over it unrolls); D = 0: d.
template <int D>
void rows(const float* x, int64_t begin, int64_t end, int64_t d_rt, const float* pt, const float* pn, int64_t npad,
          float* v1, int64_t* idx, float* v2) {
  const int64_t d = D > 0 ? D : d_rt;
  const float inf = std::numeric_limits<float>::infinity();
  vi lane;
  for (int l = 0; l < L; ++l) lane[l] = l;
  for (int64_t r0 = begin; r0 < end; r0 += R) {
    const float* w[R];
    for (int r = 0; r < R; ++r) w[r] = x + std::min<int64_t>(r0 + r, end - 1) * d;  // a short tail repeats a row
    vf b1[R], b2[R];
    vi bi[R];
    for (int r = 0; r < R; ++r) {
      b1[r] = vf{} + inf;
      b2[r] = vf{} + inf;
      bi[r] = vi{};
    }
    for (int64_t j = 0; j < npad; j += L) {
      const vf base = load(pn + j);
      vf acc[R];
      for (int r = 0; r < R; ++r) acc[r] = base;
      for (int64_t k = 0; k < d; ++k) {
        const vf pk = load(pt + k * npad + j);
        for (int r = 0; r < R; ++r) acc[r] += w[r][k] * pk;
      }
      const vi at = lane + static_cast<int32_t>(j);
      for (int r = 0; r < R; ++r) {
        // top-2 update: second = min(second, max(best, s)), best = min(best, s); the first index wins a tie (a
        // tie leaves best == second, which the caller never certifies)
        const vi lt = acc[r] < b1[r];
        const vf hi = b1[r] < acc[r] ? acc[r] : b1[r];
        b2[r] = hi < b2[r] ? hi : b2[r];
        bi[r] = lt ? at : bi[r];
        b1[r] = lt ? acc[r] : b1[r];
      }
    }
    for (int r = 0; r < R && r0 + r < end; ++r) {
      int best = 0;
      for (int l = 1; l < L; ++l)
        if (b1[r][l] < b1[r][best]) best = l;
      float second = b2[r][best];
      for (int l = 0; l < L; ++l)
        if (l != best && b1[r][l] < second) second = b1[r][l];
      v1[r0 + r] = b1[r][best];
      v2[r0 + r] = second;
      idx[r0 + r] = bi[r][best];
    }
  }
}

template <int D>
void run(const float* x, int64_t num, int64_t d, const float* pt, const float* pn, int64_t npad, float* v1,
         int64_t* idx, float* v2, int64_t threads) {
  // contiguous shares of rows, whole passes of R rows each, on OpenMP threads: built with -fopenmp and loaded after
  // torch, this library shares torch's OpenMP runtime (the same libgomp.so.1) and so its thread pool; threads of
  // our own would compete for the cores with torch's workers, which spin a while after each parallel operator
  // (measured: the kernel at 2 threads took 133 ms after a torch reduction instead of 47 ms)
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, (num + 255) / 256));
  const int64_t share = ((num + parts - 1) / parts + R - 1) / R * R;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int64_t t = 0; t < parts; ++t) {
    const int64_t a = t * share, b = std::min(num, a + share);
    if (a < b) rows<D>(x, a, b, d, pt, pn, npad, v1, idx, v2);
  }
}

}  // namespace

extern "C" {

// x: num x d rows (fp32, row-major); pt: d x npad (-2 p, transposed, zero-padded); pn: npad (||p||^2, +inf
// padded); outputs per row: v1 (best score), idx (its pool index), v2 (second-best score). npad % NWS_LANES == 0.
void NWS_ENTRY(const float* x, int64_t num, int64_t d, const float* pt, const float* pn, int64_t npad, float* v1,
               int64_t* idx, float* v2, int64_t threads) {
  switch (d) {
    case 4: run<4>(x, num, d, pt, pn, npad, v1, idx, v2, threads); break;
    case 9: run<9>(x, num, d, pt, pn, npad, v1, idx, v2, threads); break;
    case 25: run<25>(x, num, d, pt, pn, npad, v1, idx, v2, threads); break;
    case 49: run<49>(x, num, d, pt, pn, npad, v1, idx, v2, threads); break;
    default: run<0>(x, num, d, pt, pn, npad, v1, idx, v2, threads);
  }
}

int64_t NWS_CAT(nws_top2_lanes_, NWS_SUFFIX)() { return NWS_LANES; }

// the hash of this file at build time: nws.search_native refuses a library built from another version of it
const char* NWS_CAT(nws_top2_source_, NWS_SUFFIX)() { return NWS_SOURCE_HASH; }

}  // extern "C"
