// Fast CPU Gaussian rasterizer: EWA projection and tile compositing, forward and backward by hand.
// Same math as m3_ros/memory/_raster_torch.py (the oracle); float32; OpenMP over Gaussians / tiles.
// Gradients are accumulated per thread and reduced at the end (no atomics).
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <numeric>
#include <vector>

namespace {

constexpr float kAlphaMax = 0.99f;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kTMin = 1e-4f;
constexpr float kSigmaCutoff = 9.0f;  // Mahalanobis distance^2 of the 3-sigma ellipse
constexpr float kGuardBand = 0.3f;

void check_f32(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dtype() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
}

// Rotation matrix (row major) from a unit quaternion (w, x, y, z).
inline void quat_to_rot(float w, float x, float y, float z, float* R) {
  R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z); R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z); R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y); R[7] = 2 * (y * z + w * x); R[8] = 1 - 2 * (x * x + y * y);
}

// Everything the projection of one Gaussian into one camera computes, kept for the backward.
struct Proj {
  float p[3];         // view-space position
  float z_safe;
  bool in_depth;
  float tx, ty;       // guard-band clamped x, y
  bool clamp_x, clamp_y;
  float lim_x, lim_y; // the active clamp value (x/z) when clamped
  float J[6];         // 2x3 row major
  float Rq[9];        // rotation of the Gaussian
  float qn[4];        // normalised quaternion
  float qnorm;
  float V[9];         // view-space covariance
  float a, b, c;      // 2D covariance incl. eps2d
  float det;
  bool ok;
};

inline void project_one(const float* m, const float* q, const float* s, const float* vm, const float* K, int W, int H,
                        float near, float far, float eps2d, Proj& P) {
  const float* Rv = vm;  // rows 0..2, stride 4
  for (int i = 0; i < 3; ++i) P.p[i] = Rv[4 * i] * m[0] + Rv[4 * i + 1] * m[1] + Rv[4 * i + 2] * m[2] + Rv[4 * i + 3];
  const float fx = K[0], cx = K[2], fy = K[4], cy = K[5];
  const float z = P.p[2];
  P.in_depth = (z > near) && (z < far);
  P.z_safe = P.in_depth ? z : 1.0f;
  const float zs = P.z_safe;
  const float tan_x = 0.5f * W / fx, tan_y = 0.5f * H / fy;
  const float lxp = (W - cx) / fx + kGuardBand * tan_x, lxn = cx / fx + kGuardBand * tan_x;
  const float lyp = (H - cy) / fy + kGuardBand * tan_y, lyn = cy / fy + kGuardBand * tan_y;
  const float xz = P.p[0] / zs, yz = P.p[1] / zs;
  float cxz = std::min(std::max(xz, -lxn), lxp), cyz = std::min(std::max(yz, -lyn), lyp);
  P.clamp_x = (cxz != xz); P.clamp_y = (cyz != yz);
  P.lim_x = cxz; P.lim_y = cyz;
  P.tx = zs * cxz; P.ty = zs * cyz;
  P.J[0] = fx / zs; P.J[1] = 0; P.J[2] = -fx * P.tx / (zs * zs);
  P.J[3] = 0; P.J[4] = fy / zs; P.J[5] = -fy * P.ty / (zs * zs);

  float qq = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  P.qnorm = qq;
  for (int i = 0; i < 4; ++i) P.qn[i] = q[i] / qq;
  quat_to_rot(P.qn[0], P.qn[1], P.qn[2], P.qn[3], P.Rq);
  // M = Rq S; Sigma = M M^T; V = Rv Sigma Rv^T = (Rv M)(Rv M)^T
  float RM[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      RM[3 * i + j] = (Rv[4 * i] * P.Rq[j] + Rv[4 * i + 1] * P.Rq[3 + j] + Rv[4 * i + 2] * P.Rq[6 + j]) * s[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      P.V[3 * i + j] = RM[3 * i] * RM[3 * j] + RM[3 * i + 1] * RM[3 * j + 1] + RM[3 * i + 2] * RM[3 * j + 2];
  // cov2d = J V J^T, J rows: (J0, 0, J2), (0, J4, J5)
  float JV[6];
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j)
      JV[3 * r + j] = P.J[3 * r] * P.V[j] + P.J[3 * r + 1] * P.V[3 + j] + P.J[3 * r + 2] * P.V[6 + j];
  P.a = JV[0] * P.J[0] + JV[1] * P.J[1] + JV[2] * P.J[2] + eps2d;
  P.b = JV[0] * P.J[3] + JV[1] * P.J[4] + JV[2] * P.J[5];
  P.c = JV[3] * P.J[3] + JV[4] * P.J[4] + JV[5] * P.J[5] + eps2d;
  P.det = P.a * P.c - P.b * P.b;
  P.ok = P.in_depth && (P.det > 0);
}

}  // namespace

// means [N,3], quats [N,4], scales [N,3], viewmats [C,4,4], Ks [C,3,3]
// -> means2d [C,N,2], conics [C,N,3], depths [C,N], radii [C,N] int32
std::vector<torch::Tensor> project_fwd(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                       torch::Tensor viewmats, torch::Tensor Ks, int64_t W, int64_t H,
                                       double near, double far, double eps2d) {
  check_f32(means, "means"); check_f32(quats, "quats"); check_f32(scales, "scales");
  check_f32(viewmats, "viewmats"); check_f32(Ks, "Ks");
  const int64_t N = means.size(0), C = viewmats.size(0);
  auto f = torch::TensorOptions().dtype(torch::kFloat32);
  auto means2d = torch::empty({C, N, 2}, f);
  auto conics = torch::empty({C, N, 3}, f);
  auto depths = torch::empty({C, N}, f);
  auto radii = torch::empty({C, N}, f.dtype(torch::kInt32));
  const float *pm = means.data_ptr<float>(), *pq = quats.data_ptr<float>(), *ps = scales.data_ptr<float>();
  const float *pv = viewmats.data_ptr<float>(), *pk = Ks.data_ptr<float>();
  float *o2 = means2d.data_ptr<float>(), *oc = conics.data_ptr<float>(), *od = depths.data_ptr<float>();
  int32_t* orad = radii.data_ptr<int32_t>();
#pragma omp parallel for schedule(static)
  for (int64_t cn = 0; cn < C * N; ++cn) {
    const int64_t c = cn / N, n = cn % N;
    const float* K = pk + 9 * c;
    Proj P;
    project_one(pm + 3 * n, pq + 4 * n, ps + 3 * n, pv + 16 * c, K, (int)W, (int)H, (float)near, (float)far,
                (float)eps2d, P);
    const float u = K[0] * P.p[0] / P.z_safe + K[2], v = K[4] * P.p[1] / P.z_safe + K[5];
    o2[2 * cn] = u; o2[2 * cn + 1] = v;
    od[cn] = P.p[2];
    const float det = P.ok ? P.det : 1.0f;
    oc[3 * cn] = P.c / det; oc[3 * cn + 1] = -P.b / det; oc[3 * cn + 2] = P.a / det;
    int32_t rad = 0;
    if (P.ok) {
      const float mid = 0.5f * (P.a + P.c);
      const float lam = mid + std::sqrt(std::max(mid * mid - P.det, 0.1f));
      const float r = std::ceil(3.0f * std::sqrt(lam));
      if (u + r >= 0 && u - r <= W - 1 && v + r >= 0 && v - r <= H - 1) rad = (int32_t)r;
    }
    orad[cn] = rad;
  }
  return {means2d, conics, depths, radii};
}

// Gradients of the projection: -> g_means [N,3], g_quats [N,4], g_scales [N,3].
std::vector<torch::Tensor> project_bwd(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                       torch::Tensor viewmats, torch::Tensor Ks, int64_t W, int64_t H,
                                       double near, double far, double eps2d, torch::Tensor radii,
                                       torch::Tensor conics, torch::Tensor g_means2d, torch::Tensor g_conics,
                                       torch::Tensor g_depths) {
  check_f32(g_means2d, "g_means2d"); check_f32(g_conics, "g_conics"); check_f32(g_depths, "g_depths");
  const int64_t N = means.size(0), C = viewmats.size(0);
  // Every entry is written below; no zero fill (a parallel fill is a sync point under load).
  auto g_means = torch::empty({N, 3}, means.options());
  auto g_quats = torch::empty({N, 4}, means.options());
  auto g_scales = torch::empty({N, 3}, means.options());
  const float *pm = means.data_ptr<float>(), *pq = quats.data_ptr<float>(), *ps = scales.data_ptr<float>();
  const float *pv = viewmats.data_ptr<float>(), *pk = Ks.data_ptr<float>();
  const float *gm2 = g_means2d.data_ptr<float>(), *gco = g_conics.data_ptr<float>(), *gd = g_depths.data_ptr<float>();
  const float* pco = conics.data_ptr<float>();
  const int32_t* prad = radii.data_ptr<int32_t>();
  float *ogm = g_means.data_ptr<float>(), *ogq = g_quats.data_ptr<float>(), *ogs = g_scales.data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float gmean[3] = {0, 0, 0}, gq[4] = {0, 0, 0, 0}, gs[3] = {0, 0, 0};
    for (int64_t c = 0; c < C; ++c) {
      const int64_t cn = c * N + n;
      const float* vm = pv + 16 * c;
      float gp[3] = {0, 0, gd[cn]};  // view-space position gradient; depth = p_z
      if (prad[cn] > 0) {
        const float* K = pk + 9 * c;
        const float fx = K[0], fy = K[4];
        Proj P;
        project_one(pm + 3 * n, pq + 4 * n, ps + 3 * n, vm, K, (int)W, (int)H, (float)near, (float)far,
                    (float)eps2d, P);
        const float z = P.z_safe, x = P.p[0], y = P.p[1];
        // means2d
        const float gu = gm2[2 * cn], gv = gm2[2 * cn + 1];
        gp[0] += gu * fx / z; gp[1] += gv * fy / z; gp[2] += -gu * fx * x / (z * z) - gv * fy * y / (z * z);
        // conic = inverse of [[a,b],[b,c]]: dL/dSigma2 = -X G X with G the symmetric split of (gA, gB, gC)
        const float A = pco[3 * cn], B = pco[3 * cn + 1], Cc = pco[3 * cn + 2];
        const float gA = gco[3 * cn], gB = 0.5f * gco[3 * cn + 1], gC = gco[3 * cn + 2];
        // X G
        const float XG00 = A * gA + B * gB, XG01 = A * gB + B * gC, XG10 = B * gA + Cc * gB, XG11 = B * gB + Cc * gC;
        const float ga = -(XG00 * A + XG01 * B), gb2 = -(XG00 * B + XG01 * Cc), gc = -(XG10 * B + XG11 * Cc);
        // G2 = [[ga, gb2], [gb2, gc]]: gb2 is already half the gradient of the single b entry.
        const float G2[4] = {ga, gb2, gb2, gc};
        // dL/dV = J^T G2 J ; dL/dJ = 2 G2 J V
        const float* J = P.J;
        float G2J[6];
        for (int r = 0; r < 2; ++r)
          for (int j = 0; j < 3; ++j) G2J[3 * r + j] = G2[2 * r] * J[j] + G2[2 * r + 1] * J[3 + j];
        float GV[9];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) GV[3 * i + j] = J[i] * G2J[j] + J[3 + i] * G2J[3 + j];
        float gJ[6];
        for (int r = 0; r < 2; ++r)
          for (int j = 0; j < 3; ++j)
            gJ[3 * r + j] = 2.f * (G2J[3 * r] * P.V[j] + G2J[3 * r + 1] * P.V[3 + j] + G2J[3 * r + 2] * P.V[6 + j]);
        // J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]
        const float z2 = z * z, z3 = z2 * z;
        float gz = gJ[0] * (-fx / z2) + gJ[2] * (2.f * fx * P.tx / z3) + gJ[4] * (-fy / z2) + gJ[5] * (2.f * fy * P.ty / z3);
        const float gtx = gJ[2] * (-fx / z2), gty = gJ[5] * (-fy / z2);
        if (P.clamp_x) gz += gtx * P.lim_x; else gp[0] += gtx;
        if (P.clamp_y) gz += gty * P.lim_y; else gp[1] += gty;
        gp[2] += gz;
        // V = Rv Sigma Rv^T -> G_Sigma = Rv^T GV Rv ; Sigma = M M^T -> G_M = 2 G_Sigma M ; M = Rq S
        float Rv[9];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) Rv[3 * i + j] = vm[4 * i + j];
        float T1[9], GS[9];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) T1[3 * i + j] = GV[3 * i] * Rv[j] + GV[3 * i + 1] * Rv[3 + j] + GV[3 * i + 2] * Rv[6 + j];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) GS[3 * i + j] = Rv[i] * T1[j] + Rv[3 + i] * T1[3 + j] + Rv[6 + i] * T1[6 + j];
        const float* s = ps + 3 * n;
        float GR[9];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) {
            // M[k][j] = Rq[k][j] s[j]
            float gm = 0;
            for (int k = 0; k < 3; ++k) gm += 2.f * GS[3 * i + k] * P.Rq[3 * k + j] * s[j];
            GR[3 * i + j] = gm * s[j];
            gs[j] += gm * P.Rq[3 * i + j];
          }
        const float w = P.qn[0], qx = P.qn[1], qy = P.qn[2], qz = P.qn[3];
        float gqn[4];
        gqn[0] = 2.f * (-qz * GR[1] + qy * GR[2] + qz * GR[3] - qx * GR[5] - qy * GR[6] + qx * GR[7]);
        gqn[1] = 2.f * (qy * GR[1] + qz * GR[2] + qy * GR[3] - 2.f * qx * GR[4] - w * GR[5] + qz * GR[6] + w * GR[7] - 2.f * qx * GR[8]);
        gqn[2] = 2.f * (-2.f * qy * GR[0] + qx * GR[1] + w * GR[2] + qx * GR[3] + qz * GR[5] - w * GR[6] + qz * GR[7] - 2.f * qy * GR[8]);
        gqn[3] = 2.f * (-2.f * qz * GR[0] - w * GR[1] + qx * GR[2] + w * GR[3] - 2.f * qz * GR[4] + qy * GR[5] + qx * GR[6] + qy * GR[7]);
        const float dot = gqn[0] * P.qn[0] + gqn[1] * P.qn[1] + gqn[2] * P.qn[2] + gqn[3] * P.qn[3];
        for (int i = 0; i < 4; ++i) gq[i] += (gqn[i] - P.qn[i] * dot) / P.qnorm;
      }
      for (int j = 0; j < 3; ++j) gmean[j] += vm[j] * gp[0] + vm[4 + j] * gp[1] + vm[8 + j] * gp[2];
    }
    for (int j = 0; j < 3; ++j) { ogm[3 * n + j] = gmean[j]; ogs[3 * n + j] = gs[j]; }
    for (int j = 0; j < 4; ++j) ogq[4 * n + j] = gq[j];
  }
  return {g_means, g_quats, g_scales};
}

namespace {

// exp(x) for x <= 0 (Cephes-style: x = n ln2 + r, degree-6 polynomial in r, scaled by 2^n).
// Branch-free; within ~2 ulp of expf on [-4.5, 0], the only range the 3-sigma cutoff uses.
inline float fast_exp(float x) {
  x = std::max(x, -80.f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return y * scale;
}

constexpr float kSpanEps = 1e-3f;  // widen extents so rounding never drops a pixel the ellipse test keeps

inline int64_t round_up8(int64_t x) { return (x + 7) / 8 * 8; }

// One visible Gaussian of one camera, stored contiguously in depth order (cache-friendly tile walks).
struct Splat {
  float u, v, A, B, C, op, detc, hy;  // centre, conic, opacity, conic determinant, 3-sigma y half-extent
};

// Visible Gaussians of one camera in (depth, index) order, their data, and per-tile lists of ranks.
struct CameraBins {
  std::vector<int32_t> order;    // rank -> Gaussian index
  std::vector<Splat> splats;     // [M]
  std::vector<float> colors;     // [M, Dp] colours (+ view depth) padded with zeros
  std::vector<int64_t> offsets;  // [T + 1] into ranks
  std::vector<int32_t> ranks;    // tile lists, front to back
};

// Sort the visible Gaussians by (depth, index), gather their data, and bin them into tiles by the
// bounding box of their 3-sigma ellipse (tighter than the isotropic radius; the image is the same).
void bin_camera(const float* m2, const float* con, const float* dep, const int32_t* rad, const float* op,
                const float* col, int64_t N, int64_t D, int64_t Dp, bool with_depth, int tiles_x, int tiles_y, int ts,
                bool bin, const int32_t* given_order, CameraBins& out) {
  if (given_order != nullptr) {  // the backward reuses the forward's order: no second sort
    int64_t M = 0;
    while (M < N && given_order[M] >= 0) ++M;
    out.order.assign(given_order, given_order + M);
  } else {
    std::vector<std::pair<float, int32_t>> key;
    key.reserve(N);
    for (int64_t n = 0; n < N; ++n)
      if (rad[n] > 0) key.emplace_back(dep[n], (int32_t)n);
    std::sort(key.begin(), key.end());
    out.order.resize(key.size());
    for (size_t r = 0; r < key.size(); ++r) out.order[r] = key[r].second;
  }
  const int64_t M = (int64_t)out.order.size();
  out.splats.resize(M);
  out.colors.assign(M * Dp, 0.f);
  std::vector<int32_t> rect(4 * M);
  const int T = tiles_x * tiles_y;
  std::vector<int64_t> counts(T + 1, 0);
  for (int64_t r = 0; r < M; ++r) {
    const int32_t n = out.order[r];
    Splat& s = out.splats[r];
    s.u = m2[2 * n]; s.v = m2[2 * n + 1];
    s.A = con[3 * n]; s.B = con[3 * n + 1]; s.C = con[3 * n + 2];
    s.op = op[n];
    s.detc = s.A * s.C - s.B * s.B;
    const bool ok = s.detc > 0.f && s.A > 0.f && s.C > 0.f;
    s.hy = ok ? 3.f * std::sqrt(s.A / s.detc) + kSpanEps : -1.f;
    std::copy(col + n * D, col + (n + 1) * D, out.colors.data() + r * Dp);
    if (with_depth) out.colors[r * Dp + D] = dep[n];
    if (!bin) continue;
    int x0 = 1, x1 = 0, y0 = 1, y1 = 0;
    if (ok) {
      const float hx = 3.f * std::sqrt(s.C / s.detc) + kSpanEps;
      x0 = std::max((int)std::floor((s.u - hx) / ts), 0); x1 = std::min((int)std::floor((s.u + hx) / ts), tiles_x - 1);
      y0 = std::max((int)std::floor((s.v - s.hy) / ts), 0); y1 = std::min((int)std::floor((s.v + s.hy) / ts), tiles_y - 1);
    }
    rect[4 * r] = x0; rect[4 * r + 1] = x1; rect[4 * r + 2] = y0; rect[4 * r + 3] = y1;
    for (int ty = y0; ty <= y1; ++ty)
      for (int tx = x0; tx <= x1; ++tx) counts[ty * tiles_x + tx + 1]++;
  }
  if (!bin) return;
  out.offsets.assign(T + 1, 0);
  for (int t = 0; t < T; ++t) out.offsets[t + 1] = out.offsets[t] + counts[t + 1];
  out.ranks.resize(out.offsets[T]);
  std::vector<int64_t> fill(out.offsets.begin(), out.offsets.end() - 1);
  for (int64_t r = 0; r < M; ++r)
    for (int ty = rect[4 * r + 2]; ty <= rect[4 * r + 3]; ++ty)
      for (int tx = rect[4 * r]; tx <= rect[4 * r + 1]; ++tx) out.ranks[fill[ty * tiles_x + tx]++] = (int32_t)r;
}

// Columns [x0, x1] of the 3-sigma ellipse on the row at offset dy: A dx^2 + 2 B dx dy + C dy^2 <= 9.
inline bool ellipse_span(const Splat& s, float dy, int px0, int px1, int& x0, int& x1) {
  const float disc = 9.f * s.A - s.detc * dy * dy;
  if (disc < 0.f) return false;
  const float sq = std::sqrt(disc), inv_a = 1.f / s.A;
  x0 = std::max(px0, (int)std::ceil(s.u + (-s.B * dy - sq) * inv_a - kSpanEps));
  x1 = std::min(px1, (int)std::floor(s.u + (-s.B * dy + sq) * inv_a + kSpanEps));
  return x0 <= x1;
}

}  // namespace

// Forward compositing. means2d [C,N,2], conics [C,N,3], opacities [N], colors [N,D], depths [C,N], radii [C,N],
// backgrounds [C,D] or empty. Returns render [C,H,W,D(+1)], alphas [C,H,W,1], last [C,H,W] int32 (number of
// tile-list entries up to the last one composited), tile offsets [C, T+1] int64, tile lists [I] int32 (ranks
// in depth order, concatenated over cameras) and order [C, N] int32 (rank -> Gaussian, -1 padded).
std::vector<torch::Tensor> composite_fwd(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                         torch::Tensor colors, torch::Tensor depths, torch::Tensor radii,
                                         torch::Tensor backgrounds, int64_t W, int64_t H, int64_t ts, bool with_depth) {
  check_f32(means2d, "means2d"); check_f32(conics, "conics"); check_f32(opacities, "opacities");
  check_f32(colors, "colors"); check_f32(depths, "depths");
  const int64_t C = means2d.size(0), N = means2d.size(1), D = colors.size(1);
  const int64_t Dk = D + (with_depth ? 1 : 0), Dp = round_up8(Dk);
  const bool has_bg = backgrounds.numel() > 0;
  const int tiles_x = (int)((W + ts - 1) / ts), tiles_y = (int)((H + ts - 1) / ts), T = tiles_x * tiles_y;
  auto f = torch::TensorOptions().dtype(torch::kFloat32);
  auto render = torch::empty({C, H, W, Dk}, f);
  auto alphas = torch::empty({C, H, W, 1}, f);
  auto last = torch::empty({C, H, W}, f.dtype(torch::kInt32));
  auto offsets = torch::empty({C, T + 1}, f.dtype(torch::kInt64));
  std::vector<CameraBins> bins(C);
#pragma omp parallel for schedule(dynamic, 1) if (C > 1)
  for (int64_t c = 0; c < C; ++c)
    bin_camera(means2d.data_ptr<float>() + 2 * N * c, conics.data_ptr<float>() + 3 * N * c,
               depths.data_ptr<float>() + N * c, radii.data_ptr<int32_t>() + N * c, opacities.data_ptr<float>(),
               colors.data_ptr<float>(), N, D, Dp, with_depth, tiles_x, tiles_y, (int)ts, true, nullptr, bins[c]);
  auto order = torch::full({C, N}, -1, f.dtype(torch::kInt32));
  for (int64_t c = 0; c < C; ++c)
    std::copy(bins[c].order.begin(), bins[c].order.end(), order.data_ptr<int32_t>() + c * N);
  int64_t total = 0;
  for (int64_t c = 0; c < C; ++c) total += (int64_t)bins[c].ranks.size();
  auto lists = torch::empty({total}, f.dtype(torch::kInt32));
  {
    int64_t base = 0;
    for (int64_t c = 0; c < C; ++c) {
      int64_t* po = offsets.data_ptr<int64_t>() + c * (T + 1);
      for (int t = 0; t <= T; ++t) po[t] = base + bins[c].offsets[t];
      std::copy(bins[c].ranks.begin(), bins[c].ranks.end(), lists.data_ptr<int32_t>() + base);
      base += (int64_t)bins[c].ranks.size();
    }
  }
  const float* pbg = has_bg ? backgrounds.data_ptr<float>() : nullptr;
  const int32_t* plist = lists.data_ptr<int32_t>();
  const int64_t* poff = offsets.data_ptr<int64_t>();
  float *orend = render.data_ptr<float>(), *oal = alphas.data_ptr<float>();
  int32_t* olast = last.data_ptr<int32_t>();

#pragma omp parallel
  {
    const int P = (int)(ts * ts);
    std::vector<float> acc(P * Dp), Tr(P), al(ts + 1);
    std::vector<int32_t> lst(P), row_left(ts);
    std::vector<char> done(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t ct = 0; ct < C * T; ++ct) {
      const int64_t c = ct / T;
      const int t = (int)(ct % T);
      const Splat* splats = bins[c].splats.data();
      const float* pcol = bins[c].colors.data();
      const int px0 = (t % tiles_x) * (int)ts, py0 = (t / tiles_x) * (int)ts;
      const int px1 = std::min(px0 + (int)ts, (int)W) - 1, py1 = std::min(py0 + (int)ts, (int)H) - 1;
      const int tw = px1 - px0 + 1, th = py1 - py0 + 1, n_pix = tw * th;
      std::fill(acc.begin(), acc.begin() + n_pix * Dp, 0.f);
      std::fill(Tr.begin(), Tr.begin() + n_pix, 1.f);
      std::fill(lst.begin(), lst.begin() + n_pix, 0);
      std::fill(done.begin(), done.begin() + n_pix, 0);
      std::fill(row_left.begin(), row_left.begin() + th, tw);
      int n_done = 0;
      const int64_t base = poff[c * (T + 1)];
      const int64_t k0 = poff[c * (T + 1) + t], k1 = poff[c * (T + 1) + t + 1];
      for (int64_t k = k0; k < k1 && n_done < n_pix; ++k) {
        const int32_t r = plist[k];
        const Splat s = splats[r];
        const int y0 = std::max(py0, (int)std::ceil(s.v - s.hy)), y1 = std::min(py1, (int)std::floor(s.v + s.hy));
        const float* col = pcol + (int64_t)r * Dp;
        for (int py = y0; py <= y1; ++py) {
          // a row whose pixels are all saturated takes nothing more (the same image, less work:
          // on a walked table memory, pixels saturate after ~45 % of their tile's list)
          if (row_left[py - py0] == 0) continue;
          const float dy = (float)py - s.v;
          int x0, x1;
          if (!ellipse_span(s, dy, px0, px1, x0, x1)) continue;
          const int cnt = x1 - x0 + 1;
          // Pass 1: alpha of every pixel of the span, 0 where the ellipse test fails.
          for (int j = 0; j < cnt; ++j) {
            const float dx = (float)(x0 + j) - s.u;
            const float maha = s.A * dx * dx + 2.f * s.B * dx * dy + s.C * dy * dy;
            const float a = std::min(kAlphaMax, s.op * fast_exp(-0.5f * maha));
            al[j] = maha <= kSigmaCutoff ? a : 0.f;
          }
          // Pass 2: front-to-back compositing, channels vectorised.
          const int prow = (py - py0) * tw + (x0 - px0);
          for (int j = 0; j < cnt; ++j) {
            const float alpha = al[j];
            const int p = prow + j;
            if (alpha < kAlphaMin || done[p]) continue;
            const float Tn = Tr[p] * (1.f - alpha);
            if (Tn < kTMin) { done[p] = 1; ++n_done; --row_left[py - py0]; continue; }
            const float w = alpha * Tr[p];
            float* a = acc.data() + (int64_t)p * Dp;
#pragma omp simd
            for (int64_t d = 0; d < Dp; ++d) a[d] += w * col[d];
            Tr[p] = Tn;
            lst[p] = (int32_t)(k - base + 1);
          }
        }
      }
      for (int p = 0; p < n_pix; ++p) {
        const int px = px0 + p % tw, py = py0 + p / tw;
        const int64_t pix = (c * H + py) * W + px;
        float* o = orend + pix * Dk;
        const float* a = acc.data() + (int64_t)p * Dp;
        const float T_fin = Tr[p], alpha_pix = 1.f - T_fin;
        for (int64_t d = 0; d < D; ++d) o[d] = a[d] + (has_bg ? T_fin * pbg[c * D + d] : 0.f);
        if (with_depth) o[D] = a[D] / std::max(alpha_pix, 1e-10f);
        oal[pix] = alpha_pix;
        olast[pix] = lst[p];
      }
    }
  }
  return {render, alphas, last, offsets, lists, order};
}

// Backward compositing -> g_means2d [C,N,2], g_conics [C,N,3], g_opacities [N], g_colors [N,D], g_depths [C,N],
// g_backgrounds [C,D] (zeros when there is no background).
std::vector<torch::Tensor> composite_bwd(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                         torch::Tensor colors, torch::Tensor depths, torch::Tensor radii,
                                         torch::Tensor backgrounds, int64_t W, int64_t H, int64_t ts, bool with_depth,
                                         torch::Tensor render, torch::Tensor alphas, torch::Tensor last,
                                         torch::Tensor offsets, torch::Tensor lists, torch::Tensor order,
                                         torch::Tensor g_render,
                                         torch::Tensor g_alphas) {
  check_f32(g_render, "g_render"); check_f32(g_alphas, "g_alphas");
  const int64_t C = means2d.size(0), N = means2d.size(1), D = colors.size(1);
  const int64_t Dk = D + (with_depth ? 1 : 0), Dp = round_up8(Dk);
  const bool has_bg = backgrounds.numel() > 0;
  const int tiles_x = (int)((W + ts - 1) / ts), tiles_y = (int)((H + ts - 1) / ts), T = tiles_x * tiles_y;
  const int n_threads = omp_get_max_threads();
  // Per-thread accumulators indexed by depth rank: (u, v, A, B, C, opacity) and colours (+ depth) padded.
  const int64_t S = 6 + Dp;
  std::vector<std::vector<float>> buf(n_threads), bufbg(n_threads);
  const float* pbg = has_bg ? backgrounds.data_ptr<float>() : nullptr;
  const int32_t *plist = lists.data_ptr<int32_t>(), *plast = last.data_ptr<int32_t>();
  const int64_t* poff = offsets.data_ptr<int64_t>();
  const float *prend = render.data_ptr<float>(), *pal = alphas.data_ptr<float>();
  const float *pgr = g_render.data_ptr<float>(), *pga = g_alphas.data_ptr<float>();
  auto f = torch::TensorOptions().dtype(torch::kFloat32);
  auto g_means2d = torch::empty({C, N, 2}, f);
  auto g_conics = torch::empty({C, N, 3}, f);
  auto g_depths = torch::empty({C, N}, f);
  auto g_opac = torch::empty({N}, f);
  auto g_colors = torch::empty({N, D}, f);
  auto g_bg = torch::empty({C, D}, f);
  float *om2 = g_means2d.data_ptr<float>(), *oco = g_conics.data_ptr<float>(), *odp = g_depths.data_ptr<float>();
  float *oop = g_opac.data_ptr<float>(), *ocol = g_colors.data_ptr<float>(), *obg = g_bg.data_ptr<float>();
  // Serial zeroing: torch::zeros would open a parallel region per tensor.
  for (auto& t : {g_means2d, g_conics, g_depths, g_opac, g_colors, g_bg})
    std::fill(t.data_ptr<float>(), t.data_ptr<float>() + t.numel(), 0.f);
  for (int th = 0; th < n_threads; ++th) bufbg[th].assign(C * D, 0.f);

  for (int64_t c = 0; c < C; ++c) {
    CameraBins bins;
    bin_camera(means2d.data_ptr<float>() + 2 * N * c, conics.data_ptr<float>() + 3 * N * c,
               depths.data_ptr<float>() + N * c, radii.data_ptr<int32_t>() + N * c, opacities.data_ptr<float>(),
               colors.data_ptr<float>(), N, D, Dp, with_depth, tiles_x, tiles_y, (int)ts, false,
               order.data_ptr<int32_t>() + c * N, bins);
    const int64_t M = (int64_t)bins.order.size();
    const Splat* splats = bins.splats.data();
    const float* pcol = bins.colors.data();
    int team = 1;  // the runtime may grant fewer threads than asked (e.g. when nested): reduce over the real team
#pragma omp parallel num_threads(n_threads)
    {
      const int tid = omp_get_thread_num();
#pragma omp single
      team = omp_get_num_threads();
      buf[tid].assign(M * S, 0.f);
      float* bacc = buf[tid].data();
      float* bbg = bufbg[tid].data();
      const int P = (int)(ts * ts);
      std::vector<float> gpix(P * Dp, 0.f), Tr(P), kTT(P), GB(P), Gs(ts + 1), al(ts + 1);
      std::vector<int32_t> lst(P), row_last(ts);
      std::vector<float> gcol(Dp);
      // Static round-robin, not dynamic: which thread sums which tile must not depend on timing, or
      // the per-thread partial sums (and so every gradient's last bits) differ from run to run, and
      // training, chaotic over hundreds of steps, ends in a different memory each time.
#pragma omp for schedule(static, 1)
      for (int t = 0; t < T; ++t) {
        const int px0 = (t % tiles_x) * (int)ts, py0 = (t / tiles_x) * (int)ts;
        const int px1 = std::min(px0 + (int)ts, (int)W) - 1, py1 = std::min(py0 + (int)ts, (int)H) - 1;
        const int tw = px1 - px0 + 1, th = py1 - py0 + 1, n_pix = tw * th;
        const int64_t base = poff[c * (T + 1)];
        const int64_t k0 = poff[c * (T + 1) + t];
        int32_t max_last = 0;
        std::fill(row_last.begin(), row_last.begin() + th, 0);
        for (int p = 0; p < n_pix; ++p) {
          const int px = px0 + p % tw, py = py0 + p / tw;
          const int64_t pix = (c * H + py) * W + px;
          const float alpha_pix = pal[pix], T_fin = 1.f - alpha_pix;
          const float* g = pgr + pix * Dk;
          float* gp = gpix.data() + (int64_t)p * Dp;
          float galpha = pga[pix];
          for (int64_t d = 0; d < D; ++d) gp[d] = g[d];
          if (with_depth) {
            // ED = accD / max(alpha, 1e-10): gradient to the accumulated depth and to alpha.
            const float ac = std::max(alpha_pix, 1e-10f);
            gp[D] = g[D] / ac;
            if (alpha_pix > 1e-10f) galpha -= g[D] * prend[pix * Dk + D] / ac;
          }
          float k = galpha;
          if (has_bg)
            for (int64_t d = 0; d < D; ++d) {
              k -= pbg[c * D + d] * g[d];
              bbg[c * D + d] += T_fin * g[d];
            }
          kTT[p] = k * T_fin;
          Tr[p] = T_fin;
          GB[p] = 0.f;
          lst[p] = plast[pix];
          max_last = std::max(max_last, lst[p]);
          row_last[p / tw] = std::max(row_last[p / tw], lst[p]);
        }
        // Back to front over the Gaussians that any pixel of this tile composited.
        for (int64_t k = base + max_last - 1; k >= k0; --k) {
          const int32_t r = plist[k];
          const Splat s = splats[r];
          const int y0 = std::max(py0, (int)std::ceil(s.v - s.hy)), y1 = std::min(py1, (int)std::floor(s.v + s.hy));
          const float* col = pcol + (int64_t)r * Dp;
          const int32_t pos = (int32_t)(k - base);
          float gu = 0, gv = 0, gA = 0, gB = 0, gC = 0, gop = 0;
          bool touched = false;
          for (int py = y0; py <= y1; ++py) {
            if (pos >= row_last[py - py0]) continue;  // no pixel of the row composited this one
            const float dy = (float)py - s.v;
            int x0, x1;
            if (!ellipse_span(s, dy, px0, px1, x0, x1)) continue;
            const int cnt = x1 - x0 + 1;
            for (int j = 0; j < cnt; ++j) {
              const float dx = (float)(x0 + j) - s.u;
              const float maha = s.A * dx * dx + 2.f * s.B * dx * dy + s.C * dy * dy;
              const float G = fast_exp(-0.5f * maha);
              Gs[j] = G;
              al[j] = maha <= kSigmaCutoff ? std::min(kAlphaMax, s.op * G) : 0.f;
            }
            const int prow = (py - py0) * tw + (x0 - px0);
            for (int j = 0; j < cnt; ++j) {
              const int p = prow + j;
              const float alpha = al[j];
              if (alpha < kAlphaMin || pos >= lst[p]) continue;
              if (!touched) { touched = true; std::fill(gcol.begin(), gcol.end(), 0.f); }
              const float inv_one_m = 1.f / (1.f - alpha);
              const float Ti = Tr[p] * inv_one_m;
              Tr[p] = Ti;
              const float w = alpha * Ti;
              const float* gp = gpix.data() + (int64_t)p * Dp;
              float gc = 0.f;
#pragma omp simd reduction(+ : gc)
              for (int64_t d = 0; d < Dp; ++d) {
                gcol[d] += w * gp[d];
                gc += gp[d] * col[d];
              }
              const float dalpha = gc * Ti + (kTT[p] - GB[p]) * inv_one_m;
              GB[p] += gc * w;
              const float raw = s.op * Gs[j];
              if (raw >= kAlphaMax) continue;  // clamped: no gradient to opacity or shape
              gop += dalpha * Gs[j];
              const float gmaha = -0.5f * dalpha * raw;
              const float dx = (float)(x0 + j) - s.u;
              gA += gmaha * dx * dx;
              gB += gmaha * 2.f * dx * dy;
              gC += gmaha * dy * dy;
              // d maha / d u = -(2 A dx + 2 B dy), d maha / d v = -(2 B dx + 2 C dy)
              gu -= gmaha * (2.f * s.A * dx + 2.f * s.B * dy);
              gv -= gmaha * (2.f * s.B * dx + 2.f * s.C * dy);
            }
          }
          if (!touched) continue;
          float* o = bacc + (int64_t)r * S;
          o[0] += gu; o[1] += gv; o[2] += gA; o[3] += gB; o[4] += gC; o[5] += gop;
#pragma omp simd
          for (int64_t d = 0; d < Dp; ++d) o[6 + d] += gcol[d];
        }
      }
      // Reduce the per-thread buffers of this camera (ranks map to distinct Gaussians: no races).
#pragma omp for schedule(static)
      for (int64_t r = 0; r < M; ++r) {
        const int64_t g = bins.order[r], cg = c * N + g;
        float s[6] = {0, 0, 0, 0, 0, 0};
        for (int th = 0; th < team; ++th)
          for (int j = 0; j < 6; ++j) s[j] += buf[th][r * S + j];
        om2[2 * cg] = s[0]; om2[2 * cg + 1] = s[1];
        oco[3 * cg] = s[2]; oco[3 * cg + 1] = s[3]; oco[3 * cg + 2] = s[4];
        oop[g] += s[5];
        for (int64_t d = 0; d < D; ++d) {
          float sc = 0;
          for (int th = 0; th < team; ++th) sc += buf[th][r * S + 6 + d];
          ocol[g * D + d] += sc;
        }
        if (with_depth) {
          float sd = 0;
          for (int th = 0; th < team; ++th) sd += buf[th][r * S + 6 + D];
          odp[cg] = sd;
        }
      }
    }
  }
  for (int th = 0; th < n_threads; ++th)
    for (int64_t i = 0; i < C * D; ++i) obg[i] += bufbg[th][i];
  return {g_means2d, g_conics, g_opac, g_colors, g_depths, g_bg};
}

// The kernels touch no Python object: they release the GIL, so a query thread runs while a train
// step composites (held, a step's compositing stalled every other Python thread for up to ~60 ms).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using release = py::call_guard<py::gil_scoped_release>;
  m.def("project_fwd", &project_fwd, "EWA projection (forward)", release());
  m.def("project_bwd", &project_bwd, "EWA projection (backward)", release());
  m.def("composite_fwd", &composite_fwd, "tile compositing (forward)", release());
  m.def("composite_bwd", &composite_bwd, "tile compositing (backward)", release());
}
