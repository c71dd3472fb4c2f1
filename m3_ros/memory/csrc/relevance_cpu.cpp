// Relevance moments on the CPU: for each pixel, e_j = 2^(y·b2_j - shift) over every bank row j, and
// (e @ cols, ‖e‖²) in one pass, without the [pixels, rows] weight matrix the PyTorch path
// (RelevanceIndex._moments, the oracle) forms. Plain C ABI, loaded with ctypes (no torch headers, so
// it builds in under a second); float32; OpenMP over groups of 16 pixels, which share every row's loads.
// Per pixel and row it costs ~(l + c + 10)/16 AVX-512 FMAs: FMA-bound (~1 ns per pixel and row for l = 16,
// c = 18 on a Zen 4 core; 0.49 ns for c = 19 on this project's AVX-512 Xeon, profiled 2026-12-05).
// Tried and not kept (2026-12-06): the same moments on AMX tiles (bf16 parts: y and b in three, e and
// cols in two, for float32-level logits and 2^-18 terms; exp2 on AVX-512), 16 pixels x 32 rows a step.
// On this Xeon, 1 thread, nothing else running, 7456 pixels x 5024 rows: 0.47-0.73 ns per pixel-row
// against this kernel's 0.52-0.78 for c = 16-32; the tile products' latency chains and the round trips
// of logits and weights through memory ate the products' speed.
// Also here: the shared level's leader picking (m3_relevance_leaders), a loop over small pixel blocks
// that cost ~3 ms a 160x120 map as PyTorch ops.
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

typedef float v16 __attribute__((vector_size(64)));  // 16 pixels; split to AVX2/SSE where there is no AVX-512
typedef uint32_t v16u __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kRows = 64;    // rows per block: their weights for 16 pixels (4 KB) stay in L1
constexpr int kAcc = 8;      // accumulators held in registers per pass over a block
constexpr int kMaxL = 128;   // query dims (the caller checks)
constexpr int kMaxC = 512;   // columns (the caller checks)

inline v16 splat(float x) { return v16{} + x; }

// 2^x for x in [-126, 126]: 2^n · 2^f with n = round(x), f in [-0.5, 0.5], and 2^f from a degree-5
// minimax polynomial (relative error 2.3e-7 evaluated in float32, float32 rounding's size). Adding
// 1.5·2^23 rounds x to an integer; with AVX-512, vscalefps applies 2^n in one instruction (9 vector
// ops in all), elsewhere n is shifted into the exponent field (mod 2^32) and multiplied in (11).
inline v16 exp2v(v16 x) {
  const v16 t = x + 12582912.0f;  // the rounded integer in the low mantissa bits
  const v16 n = t - 12582912.0f;
  const v16 f = x - n;
  v16 p = splat(1.327647129073739e-03f);
  p = p * f + 9.675541892647743e-03f;
  p = p * f + 5.550713092088699e-02f;
  p = p * f + 2.4022120237350464e-01f;
  p = p * f + 6.931469440460205e-01f;
  p = p * f + 1.0000001192092896f;
#ifdef __AVX512F__
  return reinterpret_cast<v16>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
#else
  v16u bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = (bits << 23) + (127u << 23);
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

// Shifted logits are at most 0 but may fall below exp2v's range (their weight is then 2^-126, not ~0);
// unshifted ones are within ±100 (the caller's condition).
template <bool Shift>
inline v16 in_range(v16 x) {
  return Shift ? (x < -126.0f ? splat(-126.0f) : x) : x;
}

// Logits y·b2_j of 16 pixels (Y: l vectors, one per query dim) for row j (b: its l coefficients).
template <int L>
inline v16 logit(const v16* Y, const float* b, int l) {
  const int n = L > 0 ? L : l;
  v16 acc{};
  for (int i = 0; i < n; ++i) acc += Y[i] * b[i];
  return acc;
}

// acc[0..N) += E[0..nr) @ cols[0..nr, 0..N): N accumulators stay in registers over the block.
template <int N>
inline void accumulate(v16* acc, const v16* E, int nr, const float* cr, int64_t c) {
  v16 a[N];
#pragma GCC unroll 16
  for (int k = 0; k < N; ++k) a[k] = acc[k];
  for (int r = 0; r < nr; ++r, cr += c) {
    const v16 e = E[r];
#pragma GCC unroll 16
    for (int k = 0; k < N; ++k) a[k] += e * cr[k];
  }
#pragma GCC unroll 16
  for (int k = 0; k < N; ++k) acc[k] = a[k];
}

template <int L, bool Shift>
void moments_group(const float* y, int64_t np, int l, const float* bt, int64_t t, const float* cols, int c,
                   float* out, float* w2) {
  alignas(64) v16 Y[kMaxL];
  alignas(64) v16 acc[kMaxC];
  alignas(64) v16 E[kRows];
  for (int i = 0; i < l; ++i) {
    for (int p = 0; p < kLanes; ++p) Y[i][p] = p < np ? y[p * l + i] : 0.0f;
  }
  v16 shift{};
  if (Shift) {  // only where the logits could overflow float32 unshifted (see RelevanceIndex._moments)
    shift = splat(-1e30f);
    for (int64_t j = 0; j < t; ++j) {
      v16 z = logit<L>(Y, bt + j * l, l);
      shift = z > shift ? z : shift;
    }
  }
  for (int k = 0; k < c; ++k) acc[k] = v16{};
  v16 sq{};
  for (int64_t j0 = 0; j0 < t; j0 += kRows) {
    const int nr = static_cast<int>(std::min<int64_t>(kRows, t - j0));
    int r = 0;
    for (; r + 4 <= nr; r += 4) {  // four rows at once: independent FMA chains, each Y[i] loaded once
      const float* b = bt + (j0 + r) * l;
      v16 z0{}, z1{}, z2{}, z3{};
      const int n = L > 0 ? L : l;
      for (int i = 0; i < n; ++i) {
        const v16 yi = Y[i];
        z0 += yi * b[i]; z1 += yi * b[n + i]; z2 += yi * b[2 * n + i]; z3 += yi * b[3 * n + i];
      }
      E[r] = exp2v(in_range<Shift>(z0 - shift));
      E[r + 1] = exp2v(in_range<Shift>(z1 - shift));
      E[r + 2] = exp2v(in_range<Shift>(z2 - shift));
      E[r + 3] = exp2v(in_range<Shift>(z3 - shift));
      sq += E[r] * E[r] + E[r + 1] * E[r + 1] + E[r + 2] * E[r + 2] + E[r + 3] * E[r + 3];
    }
    for (; r < nr; ++r) {
      v16 e = exp2v(in_range<Shift>(logit<L>(Y, bt + (j0 + r) * l, l) - shift));
      E[r] = e;
      sq += e * e;
    }
    int k0 = 0;
    for (; k0 + kAcc <= c; k0 += kAcc) accumulate<kAcc>(acc + k0, E, nr, cols + j0 * c + k0, c);
    const float* cr = cols + j0 * c + k0;
    switch (c - k0) {
      case 1: accumulate<1>(acc + k0, E, nr, cr, c); break;
      case 2: accumulate<2>(acc + k0, E, nr, cr, c); break;
      case 3: accumulate<3>(acc + k0, E, nr, cr, c); break;
      case 4: accumulate<4>(acc + k0, E, nr, cr, c); break;
      case 5: accumulate<5>(acc + k0, E, nr, cr, c); break;
      case 6: accumulate<6>(acc + k0, E, nr, cr, c); break;
      case 7: accumulate<7>(acc + k0, E, nr, cr, c); break;
      default: break;
    }
  }
  for (int64_t p = 0; p < np; ++p) {
    for (int k = 0; k < c; ++k) out[p * c + k] = acc[k][p];
    w2[p] = sq[p];
  }
}

}  // namespace

extern "C" {

// y [P, l], bt [t, l] (the logit matrix transposed, already divided by tau·ln 2), cols [t, c];
// out [P, c] = e @ cols and w2 [P] = ‖e‖², e_j = 2^(y·bt_j - shift), shift the pixel's largest logit if
// shift_max, else 0 (then every |y·bt_j| must be at most 100). All float32, contiguous. Returns 0, or -1
// for sizes it does not take.
int m3_relevance_moments(const float* y, int64_t P, int64_t l, const float* bt, int64_t t, const float* cols,
                         int64_t c, int shift_max, float* out, float* w2, int n_threads) {
  if (l < 1 || l > kMaxL || c < 1 || c > kMaxC || P < 0 || t < 0) return -1;
  const int64_t groups = (P + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::max(1, n_threads)) if (groups > 1 && n_threads > 1)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t p0 = g * kLanes, np = std::min<int64_t>(kLanes, P - p0);
    const float* yg = y + p0 * l;
    float *og = out + p0 * c, *wg = w2 + p0;
    const int ci = static_cast<int>(c), li = static_cast<int>(l);
    if (l == 16 && shift_max) moments_group<16, true>(yg, np, li, bt, t, cols, ci, og, wg);
    else if (l == 16) moments_group<16, false>(yg, np, li, bt, t, cols, ci, og, wg);
    else if (shift_max) moments_group<0, true>(yg, np, li, bt, t, cols, ci, og, wg);
    else moments_group<0, false>(yg, np, li, bt, t, cols, ci, og, wg);
  }
  return 0;
}

// Leaders of the shared level (RelevanceIndex._share_leaders, the PyTorch twin): in each tile x tile
// block, rounds times, the free pixel with the smallest step leads (the first in the block's raster
// order on ties) and every free pixel of the block within rho of it joins, the leader itself at 0.
// Distances as the twin: float32 differences, their squares summed in order, one square root.
int m3_relevance_leaders(const float* y, int64_t H, int64_t W, int64_t l, const uint8_t* free_in,
                         const float* step, int64_t tile, int64_t rounds, float rho, int64_t* lead, float* dist,
                         int n_threads) {
  if (l < 1 || H < 0 || W < 0 || tile < 1 || rounds < 0) return -1;
  for (int64_t p = 0; p < H * W; ++p) { lead[p] = -1; dist[p] = 0.0f; }
  const int64_t ty = (H + tile - 1) / tile, tx = (W + tile - 1) / tile;
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::max(1, n_threads)) if (ty * tx > 1 && n_threads > 1)
  for (int64_t b = 0; b < ty * tx; ++b) {
    const int64_t y0 = (b / tx) * tile, x0 = (b % tx) * tile;
    const int64_t y1 = std::min(H, y0 + tile), x1 = std::min(W, x0 + tile);
    for (int64_t r = 0; r < rounds; ++r) {
      int64_t best = -1;
      float best_step = 0.0f;
      for (int64_t v = y0; v < y1; ++v) {
        for (int64_t u = x0; u < x1; ++u) {
          const int64_t p = v * W + u;
          if (free_in[p] && lead[p] < 0 && (best < 0 || step[p] < best_step)) { best = p; best_step = step[p]; }
        }
      }
      if (best < 0) break;
      const float* yl = y + best * l;
      for (int64_t v = y0; v < y1; ++v) {
        for (int64_t u = x0; u < x1; ++u) {
          const int64_t p = v * W + u;
          if (!free_in[p] || lead[p] >= 0) continue;
          const float* yp = y + p * l;
          float acc = 0.0f;
          for (int64_t i = 0; i < l; ++i) { const float e = yp[i] - yl[i]; acc += e * e; }
          const float d = std::sqrt(acc);
          if (d <= rho) { lead[p] = best; dist[p] = d; }
        }
      }
    }
  }
  return 0;
}

}  // extern "C"
