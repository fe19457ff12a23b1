// Per-Gaussian preprocessing for the cpu backend: SH colours along the view direction and the
// parameter activations (with Mip-Splatting's 3D filter folded in), forward and analytic backward.
//
// The references are utils/sh_utils.py (eval_sh: basis, constants and coefficient order),
// gaussian_renderer/__init__.py (gaussian_colors: +0.5, clamp at 0) and scene/gaussian_model.py
// (get_scaling_with_3D_filter, get_opacity_with_3D_filter, get_rotation). Every Gaussian is computed
// in double and rounded once to the tensors' dtype, so a float32 result is within an ulp of the
// PyTorch path (which rounds after every operation) and a float64 one is exact to rounding.
#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace tdsr {
namespace {

// utils/sh_utils.py
constexpr double SH_C0 = 0.28209479177387814;
constexpr double SH_C1 = 0.4886025119029199;
constexpr double SH_C2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                             0.5462742152960396};
constexpr double SH_C3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                             -0.4570457994644658, 1.445305721320277, -0.5900435899266435};
constexpr double NORM_EPS = 1e-12;  // gaussian_colors' clamp_min and F.normalize's eps

// The basis b[k] at the unit direction (x, y, z) and, when db is given, db[k][j] = d b[k] / d dir_j.
void sh_basis(int deg, double x, double y, double z, double* b, double (*db)[3]) {
  b[0] = SH_C0;
  if (db) db[0][0] = db[0][1] = db[0][2] = 0.0;
  if (deg < 1) return;
  b[1] = -SH_C1 * y;
  b[2] = SH_C1 * z;
  b[3] = -SH_C1 * x;
  if (db) {
    db[1][0] = 0.0, db[1][1] = -SH_C1, db[1][2] = 0.0;
    db[2][0] = 0.0, db[2][1] = 0.0, db[2][2] = SH_C1;
    db[3][0] = -SH_C1, db[3][1] = 0.0, db[3][2] = 0.0;
  }
  if (deg < 2) return;
  const double xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  b[4] = SH_C2[0] * xy;
  b[5] = SH_C2[1] * yz;
  b[6] = SH_C2[2] * (2.0 * zz - xx - yy);
  b[7] = SH_C2[3] * xz;
  b[8] = SH_C2[4] * (xx - yy);
  if (db) {
    db[4][0] = SH_C2[0] * y, db[4][1] = SH_C2[0] * x, db[4][2] = 0.0;
    db[5][0] = 0.0, db[5][1] = SH_C2[1] * z, db[5][2] = SH_C2[1] * y;
    db[6][0] = -2.0 * SH_C2[2] * x, db[6][1] = -2.0 * SH_C2[2] * y, db[6][2] = 4.0 * SH_C2[2] * z;
    db[7][0] = SH_C2[3] * z, db[7][1] = 0.0, db[7][2] = SH_C2[3] * x;
    db[8][0] = 2.0 * SH_C2[4] * x, db[8][1] = -2.0 * SH_C2[4] * y, db[8][2] = 0.0;
  }
  if (deg < 3) return;
  b[9] = SH_C3[0] * y * (3.0 * xx - yy);
  b[10] = SH_C3[1] * xy * z;
  b[11] = SH_C3[2] * y * (4.0 * zz - xx - yy);
  b[12] = SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy);
  b[13] = SH_C3[4] * x * (4.0 * zz - xx - yy);
  b[14] = SH_C3[5] * z * (xx - yy);
  b[15] = SH_C3[6] * x * (xx - 3.0 * yy);
  if (db) {
    db[9][0] = SH_C3[0] * 6.0 * xy, db[9][1] = SH_C3[0] * 3.0 * (xx - yy), db[9][2] = 0.0;
    db[10][0] = SH_C3[1] * yz, db[10][1] = SH_C3[1] * xz, db[10][2] = SH_C3[1] * xy;
    db[11][0] = -2.0 * SH_C3[2] * xy, db[11][1] = SH_C3[2] * (4.0 * zz - xx - 3.0 * yy),
    db[11][2] = 8.0 * SH_C3[2] * yz;
    db[12][0] = -6.0 * SH_C3[3] * xz, db[12][1] = -6.0 * SH_C3[3] * yz,
    db[12][2] = SH_C3[3] * (6.0 * zz - 3.0 * xx - 3.0 * yy);
    db[13][0] = SH_C3[4] * (4.0 * zz - 3.0 * xx - yy), db[13][1] = -2.0 * SH_C3[4] * xy,
    db[13][2] = 8.0 * SH_C3[4] * xz;
    db[14][0] = 2.0 * SH_C3[5] * xz, db[14][1] = -2.0 * SH_C3[5] * yz, db[14][2] = SH_C3[5] * (xx - yy);
    db[15][0] = 3.0 * SH_C3[6] * (xx - yy), db[15][1] = -6.0 * SH_C3[6] * xy, db[15][2] = 0.0;
  }
}

// Unit view direction of one Gaussian; returns the length the reference divides by (clamped).
inline double view_dir(const double* p, const double* c, double* d) {
  const double v0 = p[0] - c[0], v1 = p[1] - c[1], v2 = p[2] - c[2];
  const double n = std::max(std::sqrt(v0 * v0 + v1 * v1 + v2 * v2), NORM_EPS);
  d[0] = v0 / n, d[1] = v1 / n, d[2] = v2 / n;
  return n;
}

// Coefficient k of channel ch for Gaussian i: k = 0 in f_dc, k >= 1 in f_rest.
template <typename S>
inline const S* coef_row(const S* dc, const S* rest, int64_t i, int64_t k_rest, int k) {
  return k == 0 ? dc + i * 3 : rest + (i * k_rest + (k - 1)) * 3;
}

void check_cpu_contiguous(const torch::Tensor& t, const char* name, at::ScalarType st) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == st, name, " must have the dtype of the means");
}

template <typename S>
torch::Tensor sh_forward_impl(const torch::Tensor& xyz, const torch::Tensor& f_dc, const torch::Tensor& f_rest,
                              const torch::Tensor& campos, int deg, int nt) {
  const int64_t n = xyz.size(0), k_rest = f_rest.size(1);
  const int K = (deg + 1) * (deg + 1);
  auto colors = torch::empty({n, 3}, xyz.options());
  const S* P = xyz.data_ptr<S>();
  const S* DC = f_dc.data_ptr<S>();
  const S* R = f_rest.data_ptr<S>();
  const double c[3] = {double(campos.data_ptr<S>()[0]), double(campos.data_ptr<S>()[1]),
                       double(campos.data_ptr<S>()[2])};
  S* out = colors.data_ptr<S>();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 2048) if (n >= 8192)
  for (int64_t i = 0; i < n; ++i) {
    const double p[3] = {double(P[i * 3]), double(P[i * 3 + 1]), double(P[i * 3 + 2])};
    double d[3], b[16];
    view_dir(p, c, d);
    sh_basis(deg, d[0], d[1], d[2], b, nullptr);
    double acc[3] = {0.0, 0.0, 0.0};
    for (int k = 0; k < K; ++k) {
      const S* row = coef_row(DC, R, i, k_rest, k);
      acc[0] += b[k] * double(row[0]), acc[1] += b[k] * double(row[1]), acc[2] += b[k] * double(row[2]);
    }
    for (int ch = 0; ch < 3; ++ch) out[i * 3 + ch] = std::max(S(acc[ch] + 0.5), S(0));
  }
  return colors;
}

template <typename S>
std::vector<torch::Tensor> sh_backward_impl(const torch::Tensor& xyz, const torch::Tensor& f_dc,
                                            const torch::Tensor& f_rest, const torch::Tensor& campos, int deg,
                                            const torch::Tensor& g_colors, int nt) {
  const int64_t n = xyz.size(0), k_rest = f_rest.size(1);
  const int K = (deg + 1) * (deg + 1);
  auto g_xyz = torch::empty_like(xyz);  // every element is written below
  auto g_dc = torch::empty_like(f_dc);
  auto g_rest = torch::empty_like(f_rest);
  const S* P = xyz.data_ptr<S>();
  const S* DC = f_dc.data_ptr<S>();
  const S* R = f_rest.data_ptr<S>();
  const S* G = g_colors.data_ptr<S>();
  const double c[3] = {double(campos.data_ptr<S>()[0]), double(campos.data_ptr<S>()[1]),
                       double(campos.data_ptr<S>()[2])};
  S* GP = g_xyz.data_ptr<S>();
  S* GDC = g_dc.data_ptr<S>();
  S* GR = g_rest.data_ptr<S>();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 2048) if (n >= 8192)
  for (int64_t i = 0; i < n; ++i) {
    if (G[i * 3] == S(0) && G[i * 3 + 1] == S(0) && G[i * 3 + 2] == S(0)) {
      // no gradient reaches this colour (a Gaussian off screen): every product below is zero
      std::fill(GP + i * 3, GP + i * 3 + 3, S(0));
      std::fill(GDC + i * 3, GDC + i * 3 + 3, S(0));
      std::fill(GR + i * k_rest * 3, GR + (i + 1) * k_rest * 3, S(0));
      continue;
    }
    const double p[3] = {double(P[i * 3]), double(P[i * 3 + 1]), double(P[i * 3 + 2])};
    double d[3], b[16], db[16][3];
    const double len = view_dir(p, c, d);
    sh_basis(deg, d[0], d[1], d[2], b, db);
    double acc[3] = {0.0, 0.0, 0.0};
    for (int k = 0; k < K; ++k) {
      const S* row = coef_row(DC, R, i, k_rest, k);
      acc[0] += b[k] * double(row[0]), acc[1] += b[k] * double(row[1]), acc[2] += b[k] * double(row[2]);
    }
    double g[3];
    for (int ch = 0; ch < 3; ++ch)  // torch.clamp_min passes the gradient where input >= min
      g[ch] = S(acc[ch] + 0.5) >= S(0) ? double(G[i * 3 + ch]) : 0.0;
    double gd[3] = {0.0, 0.0, 0.0};
    for (int k = 0; k < K; ++k) {
      const S* row = coef_row(DC, R, i, k_rest, k);
      S* grow = k == 0 ? GDC + i * 3 : GR + (i * k_rest + (k - 1)) * 3;
      grow[0] = S(b[k] * g[0]), grow[1] = S(b[k] * g[1]), grow[2] = S(b[k] * g[2]);
      const double gb = g[0] * double(row[0]) + g[1] * double(row[1]) + g[2] * double(row[2]);
      gd[0] += gb * db[k][0], gd[1] += gb * db[k][1], gd[2] += gb * db[k][2];
    }
    // coefficients above the active degree get zeros, as the reference's slice gives them
    std::fill(GR + (i * k_rest + std::max(K - 1, 0)) * 3, GR + (i + 1) * k_rest * 3, S(0));
    // d = v / max(|v|, eps): the norm's gradient is zero where clamped
    const double dot = d[0] * gd[0] + d[1] * gd[1] + d[2] * gd[2];
    const bool clamped = !(len > NORM_EPS);
    for (int j = 0; j < 3; ++j) GP[i * 3 + j] = S((gd[j] - (clamped ? 0.0 : d[j] * dot)) / len);
  }
  return {g_xyz, g_dc, g_rest};
}

// scales' = sqrt(exp(2 s) + f^2) * modifier, opacity' = sigmoid(o) sqrt(prod exp(2 s) / prod(exp(2 s) + f^2)),
// quats' = q / max(|q|, eps).
template <typename S>
std::vector<torch::Tensor> act_forward_impl(const torch::Tensor& log_scales, const torch::Tensor& quats,
                                            const torch::Tensor& opacity_logits, const torch::Tensor& filter_3d,
                                            int nt) {
  const int64_t n = log_scales.size(0);
  auto scales = torch::empty({n, 3}, log_scales.options());
  auto opac = torch::empty({n}, log_scales.options());
  auto q_out = torch::empty({n, 4}, log_scales.options());
  const S* LS = log_scales.data_ptr<S>();
  const S* Q = quats.data_ptr<S>();
  const S* O = opacity_logits.data_ptr<S>();
  const S* F = filter_3d.data_ptr<S>();
  S* SO = scales.data_ptr<S>();
  S* OO = opac.data_ptr<S>();
  S* QO = q_out.data_ptr<S>();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 2048) if (n >= 8192)
  for (int64_t i = 0; i < n; ++i) {
    const double f2 = double(F[i]) * double(F[i]);
    double ratio = 1.0;
    for (int j = 0; j < 3; ++j) {
      const double s = std::exp(double(LS[i * 3 + j]));
      const double s2 = s * s, t = s2 + f2;
      SO[i * 3 + j] = S(std::sqrt(t));
      ratio *= s2 / t;
    }
    const double sig = 1.0 / (1.0 + std::exp(-double(O[i])));
    OO[i] = S(sig * std::sqrt(ratio));
    const double q[4] = {double(Q[i * 4]), double(Q[i * 4 + 1]), double(Q[i * 4 + 2]), double(Q[i * 4 + 3])};
    const double qn = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), NORM_EPS);
    for (int j = 0; j < 4; ++j) QO[i * 4 + j] = S(q[j] / qn);
  }
  return {scales, opac, q_out};
}

template <typename S>
std::vector<torch::Tensor> act_backward_impl(const torch::Tensor& log_scales, const torch::Tensor& quats,
                                             const torch::Tensor& opacity_logits, const torch::Tensor& filter_3d,
                                             const torch::Tensor& g_scales, const torch::Tensor& g_opac,
                                             const torch::Tensor& g_quats, int nt) {
  const int64_t n = log_scales.size(0);
  auto g_ls = torch::empty_like(log_scales);
  auto g_q = torch::empty_like(quats);
  auto g_o = torch::empty_like(opacity_logits);
  const S* LS = log_scales.data_ptr<S>();
  const S* Q = quats.data_ptr<S>();
  const S* O = opacity_logits.data_ptr<S>();
  const S* F = filter_3d.data_ptr<S>();
  const S* GS = g_scales.data_ptr<S>();
  const S* GO = g_opac.data_ptr<S>();
  const S* GQ = g_quats.data_ptr<S>();
  S* OLS = g_ls.data_ptr<S>();
  S* OQ = g_q.data_ptr<S>();
  S* OO = g_o.data_ptr<S>();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 2048) if (n >= 8192)
  for (int64_t i = 0; i < n; ++i) {
    if (GS[i * 3] == S(0) && GS[i * 3 + 1] == S(0) && GS[i * 3 + 2] == S(0) && GO[i] == S(0) &&
        GQ[i * 4] == S(0) && GQ[i * 4 + 1] == S(0) && GQ[i * 4 + 2] == S(0) && GQ[i * 4 + 3] == S(0)) {
      // no gradient reaches this Gaussian's activations (off screen): all products are zero
      std::fill(OLS + i * 3, OLS + i * 3 + 3, S(0));
      std::fill(OQ + i * 4, OQ + i * 4 + 4, S(0));
      OO[i] = S(0);
      continue;
    }
    const double f2 = double(F[i]) * double(F[i]);
    double s2[3], t[3], ratio = 1.0;
    for (int j = 0; j < 3; ++j) {
      const double s = std::exp(double(LS[i * 3 + j]));
      s2[j] = s * s, t[j] = s2[j] + f2;
      ratio *= s2[j] / t[j];
    }
    const double sig = 1.0 / (1.0 + std::exp(-double(O[i])));
    const double coef = std::sqrt(ratio);
    const double go = double(GO[i]);
    // d scale'_j / d s_j = s2_j / scale'_j; d log(coef) / d s_j = f^2 / t_j (coef = sqrt(prod s2 / prod t))
    for (int j = 0; j < 3; ++j)
      OLS[i * 3 + j] = S(double(GS[i * 3 + j]) * s2[j] / std::sqrt(t[j]) + go * sig * coef * f2 / t[j]);
    OO[i] = S(go * coef * sig * (1.0 - sig));
    const double q[4] = {double(Q[i * 4]), double(Q[i * 4 + 1]), double(Q[i * 4 + 2]), double(Q[i * 4 + 3])};
    const double len = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    const double gq[4] = {double(GQ[i * 4]), double(GQ[i * 4 + 1]), double(GQ[i * 4 + 2]), double(GQ[i * 4 + 3])};
    if (len > NORM_EPS) {
      double dot = 0.0;
      for (int j = 0; j < 4; ++j) dot += q[j] * gq[j];
      for (int j = 0; j < 4; ++j) OQ[i * 4 + j] = S((gq[j] - q[j] * dot / (len * len)) / len);
    } else {
      for (int j = 0; j < 4; ++j) OQ[i * 4 + j] = S(gq[j] / NORM_EPS);
    }
  }
  return {g_ls, g_q, g_o};
}

void check_sh(const torch::Tensor& xyz, const torch::Tensor& f_dc, const torch::Tensor& f_rest,
              const torch::Tensor& campos, int64_t deg) {
  const auto st = xyz.scalar_type();
  check_cpu_contiguous(xyz, "xyz", st);
  check_cpu_contiguous(f_dc, "f_dc", st);
  check_cpu_contiguous(f_rest, "f_rest", st);
  check_cpu_contiguous(campos, "campos", st);
  TORCH_CHECK(deg >= 0 && deg <= 3, "SH degree must be in 0..3");
  const int64_t n = xyz.size(0);
  TORCH_CHECK(xyz.dim() == 2 && xyz.size(1) == 3, "xyz must be [N, 3]");
  TORCH_CHECK(f_dc.dim() == 3 && f_dc.size(0) == n && f_dc.size(1) == 1 && f_dc.size(2) == 3, "f_dc must be [N, 1, 3]");
  TORCH_CHECK(f_rest.dim() == 3 && f_rest.size(0) == n && f_rest.size(2) == 3, "f_rest must be [N, K-1, 3]");
  TORCH_CHECK(f_rest.size(1) + 1 >= (deg + 1) * (deg + 1), "degree ", deg, " needs ", (deg + 1) * (deg + 1),
              " SH coefficients, got ", f_rest.size(1) + 1);
  TORCH_CHECK(campos.numel() == 3, "campos must have 3 elements");
}

void check_act(const torch::Tensor& log_scales, const torch::Tensor& quats, const torch::Tensor& opacity_logits,
               const torch::Tensor& filter_3d) {
  const auto st = log_scales.scalar_type();
  check_cpu_contiguous(log_scales, "scaling", st);
  check_cpu_contiguous(quats, "rotation", st);
  check_cpu_contiguous(opacity_logits, "opacity", st);
  check_cpu_contiguous(filter_3d, "filter_3D", st);
  const int64_t n = log_scales.size(0);
  TORCH_CHECK(log_scales.dim() == 2 && log_scales.size(1) == 3, "scaling must be [N, 3]");
  TORCH_CHECK(quats.dim() == 2 && quats.size(0) == n && quats.size(1) == 4, "rotation must be [N, 4]");
  TORCH_CHECK(opacity_logits.numel() == n, "opacity must have N elements");
  TORCH_CHECK(filter_3d.numel() == n, "filter_3D must have N elements");
}

int threads(int64_t nthreads) { return static_cast<int>(std::max<int64_t>(1, nthreads)); }

}  // namespace

torch::Tensor sh_colors_forward(const torch::Tensor& xyz, const torch::Tensor& f_dc, const torch::Tensor& f_rest,
                                const torch::Tensor& campos, int64_t deg, int64_t nthreads) {
  check_sh(xyz, f_dc, f_rest, campos, deg);
  torch::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "threedsr_cpu_rasterizer.sh_colors_forward", [&] {
    out = sh_forward_impl<scalar_t>(xyz, f_dc, f_rest, campos, static_cast<int>(deg), threads(nthreads));
  });
  return out;
}

std::vector<torch::Tensor> sh_colors_backward(const torch::Tensor& xyz, const torch::Tensor& f_dc,
                                              const torch::Tensor& f_rest, const torch::Tensor& campos, int64_t deg,
                                              const torch::Tensor& g_colors, int64_t nthreads) {
  check_sh(xyz, f_dc, f_rest, campos, deg);
  check_cpu_contiguous(g_colors, "g_colors", xyz.scalar_type());
  TORCH_CHECK(g_colors.numel() == xyz.size(0) * 3, "g_colors must be [N, 3]");
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "threedsr_cpu_rasterizer.sh_colors_backward", [&] {
    out = sh_backward_impl<scalar_t>(xyz, f_dc, f_rest, campos, static_cast<int>(deg), g_colors, threads(nthreads));
  });
  return out;
}

std::vector<torch::Tensor> activations_forward(const torch::Tensor& log_scales, const torch::Tensor& quats,
                                               const torch::Tensor& opacity_logits, const torch::Tensor& filter_3d,
                                               int64_t nthreads) {
  check_act(log_scales, quats, opacity_logits, filter_3d);
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(log_scales.scalar_type(), "threedsr_cpu_rasterizer.activations_forward", [&] {
    out = act_forward_impl<scalar_t>(log_scales, quats, opacity_logits, filter_3d, threads(nthreads));
  });
  return out;
}

std::vector<torch::Tensor> activations_backward(const torch::Tensor& log_scales, const torch::Tensor& quats,
                                                const torch::Tensor& opacity_logits, const torch::Tensor& filter_3d,
                                                const torch::Tensor& g_scales, const torch::Tensor& g_opac,
                                                const torch::Tensor& g_quats, int64_t nthreads) {
  check_act(log_scales, quats, opacity_logits, filter_3d);
  const auto st = log_scales.scalar_type();
  check_cpu_contiguous(g_scales, "g_scales", st);
  check_cpu_contiguous(g_opac, "g_opacities", st);
  check_cpu_contiguous(g_quats, "g_quats", st);
  const int64_t n = log_scales.size(0);
  TORCH_CHECK(g_scales.numel() == n * 3 && g_opac.numel() == n && g_quats.numel() == n * 4,
              "gradients must match the outputs' shapes");
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(st, "threedsr_cpu_rasterizer.activations_backward", [&] {
    out = act_backward_impl<scalar_t>(log_scales, quats, opacity_logits, filter_3d, g_scales, g_opac, g_quats,
                                      threads(nthreads));
  });
  return out;
}

void register_preprocess(pybind11::module& m) {
  namespace py = pybind11;
  m.def("sh_colors_forward", &sh_colors_forward,
        "RGB = max(SH_deg(normalize(xyz - campos)) + 0.5, 0) per Gaussian; f_dc [N, 1, 3], f_rest [N, K-1, 3].",
        py::arg("xyz"), py::arg("f_dc"), py::arg("f_rest"), py::arg("campos"), py::arg("deg"), py::arg("nthreads"));
  m.def("sh_colors_backward", &sh_colors_backward, "Gradients for xyz, f_dc, f_rest.", py::arg("xyz"),
        py::arg("f_dc"), py::arg("f_rest"), py::arg("campos"), py::arg("deg"), py::arg("g_colors"),
        py::arg("nthreads"));
  m.def("activations_forward", &activations_forward,
        "scales [N, 3], opacities [N], quats [N, 4] with the 3D filter folded in, from the raw parameters.",
        py::arg("scaling"), py::arg("rotation"), py::arg("opacity"), py::arg("filter_3D"), py::arg("nthreads"));
  m.def("activations_backward", &activations_backward, "Gradients for scaling, rotation, opacity.",
        py::arg("scaling"), py::arg("rotation"), py::arg("opacity"), py::arg("filter_3D"), py::arg("g_scales"),
        py::arg("g_opacities"), py::arg("g_quats"), py::arg("nthreads"));
}

}  // namespace tdsr
