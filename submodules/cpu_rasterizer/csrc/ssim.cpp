// Fused SSIM for CPU training: the loss flavour of utils/loss_utils.py `ssim` (Gaussian window applied
// per channel as a depthwise correlation with zero padding; mean of the SSIM map over every image,
// channel and pixel), forward and analytic backward with respect to the first image.
//
// Per output pixel, with the five blurred moments mu_x, mu_y, e_xx, e_yy, e_xy (G * x, G * x^2, ...):
//   A1 = 2 mu_x mu_y + C1, A2 = 2 (e_xy - mu_x mu_y) + C2, B1 = mu_x^2 + mu_y^2 + C1,
//   B2 = (e_xx - mu_x^2) + (e_yy - mu_y^2) + C2, S = A1 A2 / (B1 B2)   (grouped as the reference does).
// dS/dmu_x = 2 [mu_y (A2 - A1) - mu_x S (B2 - B1)] / (B1 B2), dS/de_xx = -S / B2, dS/de_xy = 2 A1 / (B1 B2).
// The forward stores these three maps; the backward blurs them with the adjoint filter (the same symmetric
// kernel, padding K-1-pad) and combines dx = G'*dmu + 2 x G'*dexx + y G'*dexy. The mean |x - y| (the L1 term
// of photometric_loss) comes along, forward and backward, to save PyTorch four passes over the image.
//
// Both passes use one separable engine: each input row is filtered horizontally once into a ring of K rows,
// and each output row sums K ring rows. Work is split into (plane, row strip) tasks over OpenMP; partial
// sums are combined in task order, so results are deterministic for a given thread count.
#include <torch/extension.h>

#include <omp.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace tdsr_ssim {
namespace {

int threads(int64_t n) { return static_cast<int>(std::max<int64_t>(1, n)); }

// out[j] = sum_i w[i] * rows[i][j] for j < len. Accumulating in registers over the taps costs one load
// per multiply-add, against two loads and a store for a tap-by-tap pass over `out`.
template <typename T>
void weighted_sum(const T* const* rows, const T* w, int n, T* __restrict out, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = w[0] * rows[0][j];
  for (int i = 1; i < n; ++i) {
    const T wi = w[i];
    const T* __restrict r = rows[i];
    for (int64_t j = 0; j < len; ++j) out[j] += wi * r[j];
  }
}

#if defined(__AVX2__) && defined(__FMA__)
template <>
void weighted_sum<float>(const float* const* rows, const float* w, int n, float* __restrict out, int64_t len) {
  int64_t j = 0;
  for (; j + 32 <= len; j += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < n; ++i) {
      const __m256 wi = _mm256_set1_ps(w[i]);
      const float* r = rows[i] + j;
      a0 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r), a0);
      a1 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r + 8), a1);
      a2 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r + 16), a2);
      a3 = _mm256_fmadd_ps(wi, _mm256_loadu_ps(r + 24), a3);
    }
    _mm256_storeu_ps(out + j, a0);
    _mm256_storeu_ps(out + j + 8, a1);
    _mm256_storeu_ps(out + j + 16, a2);
    _mm256_storeu_ps(out + j + 24, a3);
  }
  for (; j + 8 <= len; j += 8) {
    __m256 a0 = _mm256_setzero_ps();
    for (int i = 0; i < n; ++i) a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[i]), _mm256_loadu_ps(rows[i] + j), a0);
    _mm256_storeu_ps(out + j, a0);
  }
  for (; j < len; ++j) {
    float acc = 0.f;
    for (int i = 0; i < n; ++i) acc += w[i] * rows[i][j];
    out[j] = acc;
  }
}
#endif

// Blur M source maps of one plane for output rows [ro0, ro1):
//   out[m][ro][jo] = sum_{a,b} g[a] g[b] src[m][ro - pad + a][jo - pad + b], src zero outside Hin x Win.
// src(ri, rows) writes input row ri of map m to rows[m][0 .. Win); sink(ro, out) consumes output row ro.
template <typename T, int M, typename Src, typename Sink>
void blur_strip(const T* g, int K, int64_t Hin, int64_t Win, int pad, int64_t ro0, int64_t ro1, Src&& src,
                Sink&& sink) {
  const int64_t Wout = Win + 2 * pad - (K - 1);
  const int64_t Wp = Win + 2 * pad;
  std::vector<T> padded(static_cast<size_t>(M * Wp), T(0));  // zero borders stay zero
  std::vector<T> ring(static_cast<size_t>(K) * M * Wout);
  std::vector<T> out(static_cast<size_t>(M * Wout));
  std::vector<const T*> taps(static_cast<size_t>(K));
  T* in_rows[M];
  T* out_rows[M];
  for (int m = 0; m < M; ++m) in_rows[m] = padded.data() + m * Wp + pad, out_rows[m] = out.data() + m * Wout;
  int64_t next = std::max<int64_t>(0, ro0 - pad);  // first input row not yet in the ring
  for (int64_t ro = ro0; ro < ro1; ++ro) {
    const int64_t lo = ro - pad, hi = std::min<int64_t>(Hin - 1, ro - pad + K - 1);  // input rows of this output row
    for (; next <= hi; ++next) {
      src(next, in_rows);
      T* slot = ring.data() + (next % K) * M * Wout;
      for (int m = 0; m < M; ++m) {
        const T* p = padded.data() + m * Wp;
        for (int b = 0; b < K; ++b) taps[b] = p + b;
        weighted_sum(taps.data(), g, K, slot + m * Wout, Wout);
      }
    }
    const int a0 = static_cast<int>(std::max<int64_t>(0, -lo)), a1 = static_cast<int>(hi - lo);  // a in [a0, a1]
    for (int m = 0; m < M; ++m) {
      if (a1 < a0) {  // no input row reaches this output row (cannot happen for pad <= K-1; kept for safety)
        std::fill(out_rows[m], out_rows[m] + Wout, T(0));
        continue;
      }
      for (int a = a0; a <= a1; ++a) taps[a - a0] = ring.data() + ((lo + a) % K) * M * Wout + m * Wout;
      weighted_sum(taps.data(), g + a0, a1 - a0 + 1, out_rows[m], Wout);
    }
    sink(ro, static_cast<const T* const*>(out_rows));
  }
}

// Row strips per plane. Planes alone balance static scheduling when their count is a multiple of the
// thread count; otherwise each plane is split nt ways. Strips under ~16 rows would spend most of their
// time re-filtering the K-1 halo rows.
int64_t strips_for(int64_t rows, int64_t planes, int nt) {
  if (nt <= 1 || planes % nt == 0) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(nt, rows / 16));
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& kernel) {
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu() && kernel.device().is_cpu(), "SSIM: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && x.sizes() == y.sizes(), "SSIM: x and y must be [B, C, H, W] of the same shape");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && kernel.is_contiguous(), "SSIM: tensors must be contiguous");
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && x.scalar_type() == kernel.scalar_type(),
              "SSIM: x, y and the kernel must have one dtype");
  TORCH_CHECK(kernel.dim() == 1 && kernel.size(0) % 2 == 1, "SSIM: the kernel must be 1D with an odd length");
}

template <typename T>
std::vector<torch::Tensor> forward_impl(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& kernel,
                                        double c1, double c2, bool valid, int nt) {
  const int K = static_cast<int>(kernel.size(0));
  const int pad = valid ? 0 : K / 2;
  const int64_t P = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H + 2 * pad - (K - 1), Wo = W + 2 * pad - (K - 1);
  TORCH_CHECK(Ho > 0 && Wo > 0, "SSIM: the image is smaller than the window for a 'valid' map");
  auto coef = torch::empty({3, P, Ho, Wo}, x.options());
  const T* X = x.data_ptr<T>();
  const T* Y = y.data_ptr<T>();
  const T* G = kernel.data_ptr<T>();
  T* CF = coef.data_ptr<T>();
  const T C1 = static_cast<T>(c1), C2 = static_cast<T>(c2);
  const int64_t ns = strips_for(Ho, P, nt), tasks = P * ns;
  std::vector<double> partial(static_cast<size_t>(tasks), 0.0), partial_l1(static_cast<size_t>(tasks), 0.0);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t p = t / ns, s = t % ns;
    const int64_t r0 = Ho * s / ns, r1 = Ho * (s + 1) / ns;
    const T* xp = X + p * H * W;
    const T* yp = Y + p * H * W;
    {  // the L1 sum of this task's share of input rows (photometric_loss's other term, nearly free here)
      const T* __restrict xs = xp + (H * s / ns) * W;
      const T* __restrict ys = yp + (H * s / ns) * W;
      const int64_t n = (H * (s + 1) / ns - H * s / ns) * W;
      double l1 = 0.0;
      for (int64_t i0 = 0; i0 < n; i0 += W) {
        T rs = 0;
        const int64_t i1 = std::min(n, i0 + W);
#pragma omp simd reduction(+ : rs)
        for (int64_t i = i0; i < i1; ++i) rs += std::abs(xs[i] - ys[i]);
        l1 += static_cast<double>(rs);
      }
      partial_l1[t] = l1;
    }
    T* ca = CF + (0 * P + p) * Ho * Wo;
    T* cb = CF + (1 * P + p) * Ho * Wo;
    T* cc = CF + (2 * P + p) * Ho * Wo;
    double sum = 0.0;
    auto src = [&](int64_t ri, T* const* rows) {
      const T* __restrict xr = xp + ri * W;
      const T* __restrict yr = yp + ri * W;
      T* __restrict r0_ = rows[0];
      T* __restrict r1_ = rows[1];
      T* __restrict r2_ = rows[2];
      T* __restrict r3_ = rows[3];
      T* __restrict r4_ = rows[4];
      for (int64_t j = 0; j < W; ++j) {
        const T a = xr[j], b = yr[j];
        r0_[j] = a, r1_[j] = b, r2_[j] = a * a, r3_[j] = b * b, r4_[j] = a * b;
      }
    };
    auto sink = [&](int64_t ro, const T* const* m) {
      const T* __restrict mx_ = m[0];
      const T* __restrict my_ = m[1];
      const T* __restrict exx_ = m[2];
      const T* __restrict eyy_ = m[3];
      const T* __restrict exy_ = m[4];
      T* __restrict oa = ca + ro * Wo;
      T* __restrict ob = cb + ro * Wo;
      T* __restrict oc = cc + ro * Wo;
      T rs = 0;
#pragma omp simd reduction(+ : rs)
      for (int64_t j = 0; j < Wo; ++j) {
        const T mx = mx_[j], my = my_[j];
        const T mxx = mx * mx, myy = my * my, mxy = mx * my;
        const T A1 = T(2) * mxy + C1, A2 = T(2) * (exy_[j] - mxy) + C2;
        const T B1 = mxx + myy + C1, B2 = (exx_[j] - mxx) + (eyy_[j] - myy) + C2;
        const T inv = T(1) / (B1 * B2);
        const T S = A1 * A2 * inv;
        rs += S;
        oa[j] = T(2) * inv * (my * (A2 - A1) - mx * S * (B2 - B1));
        ob[j] = -S * B1 * inv;
        oc[j] = T(2) * A1 * inv;
      }
      sum += static_cast<double>(rs);
    };
    blur_strip<T, 5>(G, K, H, W, pad, r0, r1, src, sink);
    partial[t] = sum;
  }
  double total = 0.0, total_l1 = 0.0;
  for (int64_t t = 0; t < tasks; ++t) total += partial[t], total_l1 += partial_l1[t];
  auto mean = torch::full({}, total / static_cast<double>(P * Ho * Wo), x.options());
  auto l1 = torch::full({}, total_l1 / static_cast<double>(P * H * W), x.options());
  return {mean, coef, l1};
}

template <typename T>
torch::Tensor backward_impl(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& kernel,
                            const torch::Tensor& coef, bool valid, double scale, double l1_scale, int nt) {
  const int K = static_cast<int>(kernel.size(0));
  const int pad = valid ? 0 : K / 2;
  const int64_t P = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H + 2 * pad - (K - 1), Wo = W + 2 * pad - (K - 1);
  TORCH_CHECK(coef.dim() == 4 && coef.size(0) == 3 && coef.size(1) == P && coef.size(2) == Ho &&
                  coef.size(3) == Wo && coef.is_contiguous() && coef.scalar_type() == x.scalar_type(),
              "SSIM backward: coef must be the forward's [3, B*C, H', W'] map");
  auto dx = torch::empty_like(x);
  const T* X = x.data_ptr<T>();
  const T* Y = y.data_ptr<T>();
  const T* G = kernel.data_ptr<T>();
  const T* CF = coef.data_ptr<T>();
  T* DX = dx.data_ptr<T>();
  const T sc = static_cast<T>(scale), l1s = static_cast<T>(l1_scale);
  const int bpad = K - 1 - pad;  // the adjoint of a correlation with padding pad (symmetric kernel)
  const int64_t ns = strips_for(H, P, nt), tasks = P * ns;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t p = t / ns, s = t % ns;
    const int64_t r0 = H * s / ns, r1 = H * (s + 1) / ns;
    const T* ca = CF + (0 * P + p) * Ho * Wo;
    const T* cb = CF + (1 * P + p) * Ho * Wo;
    const T* cc = CF + (2 * P + p) * Ho * Wo;
    const T* xp = X + p * H * W;
    const T* yp = Y + p * H * W;
    T* dp = DX + p * H * W;
    auto src = [&](int64_t ri, T* const* rows) {
      std::copy(ca + ri * Wo, ca + (ri + 1) * Wo, rows[0]);
      std::copy(cb + ri * Wo, cb + (ri + 1) * Wo, rows[1]);
      std::copy(cc + ri * Wo, cc + (ri + 1) * Wo, rows[2]);
    };
    auto sink = [&](int64_t r, const T* const* m) {
      const T* __restrict ga = m[0];
      const T* __restrict gb = m[1];
      const T* __restrict gc = m[2];
      const T* __restrict xr = xp + r * W;
      const T* __restrict yr = yp + r * W;
      T* __restrict o = dp + r * W;
      if (l1s == T(0)) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) o[j] = sc * (ga[j] + T(2) * xr[j] * gb[j] + yr[j] * gc[j]);
      } else {  // + l1_scale * sign(x - y), sign(0) = 0 as torch's abs backward
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          const T d = xr[j] - yr[j];
          const T sg = static_cast<T>((d > T(0)) - (d < T(0)));
          o[j] = sc * (ga[j] + T(2) * xr[j] * gb[j] + yr[j] * gc[j]) + l1s * sg;
        }
      }
    };
    blur_strip<T, 3>(G, K, Ho, Wo, bpad, r0, r1, src, sink);
  }
  return dx;
}

}  // namespace

// Returns (mean SSIM, coef [3, B*C, H', W'] for the backward, mean |x - y|); the means are 0-dim tensors.
std::vector<torch::Tensor> ssim_forward(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& kernel,
                                        double c1, double c2, bool valid, int64_t nthreads) {
  check_inputs(x, y, kernel);
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "threedsr_cpu_rasterizer.ssim_forward", [&] {
    out = forward_impl<scalar_t>(x, y, kernel, c1, c2, valid, threads(nthreads));
  });
  return out;
}

// d(scale * sum of the SSIM map + l1_scale * sum |x - y|)/dx; for means pass the upstream gradients divided
// by the element counts.
torch::Tensor ssim_backward(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& kernel,
                            const torch::Tensor& coef, bool valid, double scale, double l1_scale, int64_t nthreads) {
  check_inputs(x, y, kernel);
  torch::Tensor dx;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "threedsr_cpu_rasterizer.ssim_backward", [&] {
    dx = backward_impl<scalar_t>(x, y, kernel, coef, valid, scale, l1_scale, threads(nthreads));
  });
  return dx;
}

}  // namespace tdsr_ssim

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "3dsr fused CPU SSIM (utils/loss_utils.py ssim), forward and backward";
  m.def("ssim_forward", &tdsr_ssim::ssim_forward,
        "Mean SSIM of x against y ([B, C, H, W]) with the 1D window `kernel` applied separably; zero padding to "
        "'same' size unless valid. Returns (mean SSIM, coef for ssim_backward, mean |x - y|).",
        py::arg("x"), py::arg("y"), py::arg("kernel"), py::arg("C1"), py::arg("C2"), py::arg("valid"),
        py::arg("nthreads"));
  m.def("ssim_backward", &tdsr_ssim::ssim_backward, "d(scale * sum of the SSIM map + l1_scale * sum |x - y|)/dx.",
        py::arg("x"), py::arg("y"), py::arg("kernel"), py::arg("coef"), py::arg("valid"), py::arg("scale"),
        py::arg("l1_scale"), py::arg("nthreads"));
  m.attr("SSIM_API_VERSION") = 1;
}
