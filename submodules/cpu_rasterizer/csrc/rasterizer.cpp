// 3dsr CPU rasterizer: forward and backward of the tiled EWA Gaussian splatting renderer whose
// specification is gaussian_renderer/projection.py + gaussian_renderer/torch_backend.py.
//
// Pipeline (forward):
//   1. project every Gaussian (EWA, Zwicker et al. 2001; Jacobian clamp; 2D filter: a variance added
//      to the screen covariance, with Mip-Splatting's opacity compensation (eq. 11) when `compensate`,
//      without it for Inria 3DGS's dilation), radii and culling         -- parallel over Gaussians
//   2. bin (tile, Gaussian) pairs: depth order (stable: depth, then index) then a counting sort
//      into 8x8-pixel tiles, so every tile's list is depth sorted        -- parallel over chunks
//   3. composite each tile front to back over its 64 pixels (1/255 cut, 0.99 clamp, early stop when
//      transmittance would fall below 1e-4), keeping per pixel the final T and the number of
//      Gaussians walked up to the last one that contributed              -- parallel over tiles
// Backward walks every tile's list back to front recovering T by division (3DGS), writes the
// per-(tile, Gaussian) partial gradients into a pair buffer (no races, deterministic), reduces them
// per Gaussian and back-propagates through the projection analytically (in double precision: it is
// per Gaussian, so cheap, and float32 loses digits there for thin Gaussians).
//
// The inner loops run over the 64 pixels of a tile as branch-free SIMD code (GCC/Clang vector
// extensions, one 8-float vector per tile row); exp is a local polynomial so it vectorises too.
// Loops over Gaussians and tiles use dynamic scheduling: tiles differ widely in work, and on a
// shared machine a descheduled thread must not hold the others at a barrier.
#include <torch/extension.h>

#include <omp.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

namespace tdsr {

constexpr int TILE = 8;
constexpr int NPIX = TILE * TILE;
constexpr double NEAR_PLANE = 0.01;
constexpr double ALPHA_MIN = 1.0 / 255.0;
constexpr double ALPHA_MAX = 0.99;
constexpr double T_MIN = 1e-4;
constexpr int FEAT = 12;    // packed per-Gaussian record: mx my A B C o c0 c1 c2 z hx hy
constexpr int PAIR_G = 10;  // per-pair gradient record: mx my A B C o c0 c1 c2 z
// Per-Gaussian loops shorter than this run on one thread: starting a team costs more than it saves
// (and on a busy machine, waiting for a descheduled worker costs milliseconds).
constexpr int64_t PARALLEL_MIN = 8192;

// Stage timings on stderr when THREEDSR_CPU_TIMING is set (profiling only; read once).
struct StageClock {
  const bool on;
  const char* what;
  std::chrono::steady_clock::time_point t;
  explicit StageClock(const char* w)
      : on(std::getenv("THREEDSR_CPU_TIMING") != nullptr), what(w), t(std::chrono::steady_clock::now()) {}
  void lap(const char* stage) {
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    std::fprintf(stderr, "[%s] %-12s %8.3f ms\n", what, stage,
                 std::chrono::duration<double, std::milli>(now - t).count());
    t = now;
  }
};

// Scratch memory reused across calls (per calling thread): the per-call working arrays of binning
// and backward would otherwise be fresh allocations, page-faulted in on every iteration. Each slot
// is used by one array at a time; capacity only grows.
enum ScratchSlot { SCR_RECTS, SCR_VISIBLE, SCR_ORDER, SCR_ORDER_TMP, SCR_KEY, SCR_KEY_TMP, SCR_COUNTS, SCR_SORTED,
                   SCR_N };
template <typename T>
std::vector<T>& scratch(int slot, size_t n) {
  thread_local std::vector<T> bufs[SCR_N];
  std::vector<T>& b = bufs[slot];
  if (b.size() < n) b.resize(n);
  return b;
}
template <typename S>
std::vector<S>& pair_scratch(size_t n) {
  thread_local std::vector<S> buf;
  if (buf.size() < n) buf.resize(n);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// SIMD. The per-pixel loops are written with GCC/Clang vector extensions: 32-byte vectors (8 floats
// or 4 doubles; one tile row per float vector), lowered to AVX2 when built with -mavx2 and to pairs
// of SSE/NEON registers otherwise. Branch-free: comparisons give lane masks (-1 / 0).
// The build uses -ffp-contract=off so that each expression rounds the way the PyTorch reference
// does; fused multiply-adds appear only where written explicitly (exp, and the exponent where the
// reference's matrix product fuses them: see Quadratic).

template <typename S>
struct Vec;
template <>
struct Vec<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int W = 8;
};
template <>
struct Vec<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  static constexpr int W = 4;
};

template <typename V, typename S>
inline V splat(S s) {
  return V{} + s;
}

template <typename V, typename I>
inline V select(I mask, V a, V b) {
  return reinterpret_cast<V>((mask & reinterpret_cast<I>(a)) | (~mask & reinterpret_cast<I>(b)));
}

template <typename I>
inline bool any_lane(I m) {
  constexpr int n = sizeof(I) / sizeof(m[0]);
  auto r = m[0];
  for (int i = 1; i < n; ++i) r |= m[i];
  return r != 0;
}

template <typename V>
inline auto hsum(V v) -> typename std::remove_reference<decltype(v[0])>::type {
  constexpr int n = sizeof(V) / sizeof(v[0]);
  typename std::remove_reference<decltype(v[0])>::type s = 0;
  for (int i = 0; i < n; ++i) s += v[i];
  return s;
}

inline Vec<float>::V vfma(Vec<float>::V a, Vec<float>::V b, Vec<float>::V c) {
#if defined(__FMA__) && defined(__AVX__)
  return reinterpret_cast<Vec<float>::V>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                        reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}

inline Vec<double>::V vfma(Vec<double>::V a, Vec<double>::V b, Vec<double>::V c) {
#if defined(__FMA__) && defined(__AVX__)
  return reinterpret_cast<Vec<double>::V>(_mm256_fmadd_pd(reinterpret_cast<__m256d>(a), reinterpret_cast<__m256d>(b),
                                                         reinterpret_cast<__m256d>(c)));
#else
  return a * b + c;
#endif
}

// Whether torch's float GEMM (used by the reference's exponent product) rounds like an FMA here:
// on CPUs with FMA it does for float32; its float64 results match a multiply then an add.
template <typename S>
constexpr bool fused_path() {
#if defined(__FMA__)
  return std::is_same<S, float>::value;
#else
  return false;
#endif
}

// exp(x) for x <= 0 in single precision, within about 1 ulp on the range that matters here
// (alpha >= 1/255 needs x > -6 for opacities <= 1; below -87 it returns ~1e-38). Range reduction
// x = n ln2 + r with a two-part ln2, degree-7 Taylor polynomial of e^r on |r| <= ln2/2 (truncation
// error < 6e-9), 2^n assembled in the exponent bits.
inline Vec<float>::V vexp(Vec<float>::V x) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  x = select(x < splat<V>(-87.0f), splat<V>(-87.0f), x);
  x = select(x > splat<V>(0.0f), splat<V>(0.0f), x);
  const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (x * 1.44269504088896341f + magic) - magic;
  V r = vfma(n, splat<V>(-0.693145751953125f), x);  // ln2 high part has 15 bits: n * hi is exact
  r = vfma(n, splat<V>(-1.428606765330187045e-06f), r);
  V p = splat<V>(1.0f / 5040.0f);
  p = vfma(p, r, splat<V>(1.0f / 720.0f));
  p = vfma(p, r, splat<V>(1.0f / 120.0f));
  p = vfma(p, r, splat<V>(1.0f / 24.0f));
  p = vfma(p, r, splat<V>(1.0f / 6.0f));
  p = vfma(p, r, splat<V>(0.5f));
  p = vfma(p, r, splat<V>(1.0f));
  p = vfma(p, r, splat<V>(1.0f));
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  return p * reinterpret_cast<V>(bits);
}

// Double precision (tests, gradient checks): the library exp, lane by lane.
inline Vec<double>::V vexp(Vec<double>::V x) {
  Vec<double>::V r;
  for (int i = 0; i < Vec<double>::W; ++i) r[i] = std::exp(x[i]);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Camera

template <typename S>
struct Camera {
  S R[9], t[3];
  S fx, fy, cx, cy;
  S lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
  int width, height;
};

template <typename S>
Camera<S> make_camera(const torch::Tensor& viewmat, const torch::Tensor& K, int width, int height) {
  auto vm = viewmat.to(torch::kFloat64).contiguous();
  auto kk = K.to(torch::kFloat64).contiguous();
  const double* v = vm.data_ptr<double>();
  const double* k = kk.data_ptr<double>();
  Camera<S> c;
  for (int r = 0; r < 3; ++r) {
    for (int q = 0; q < 3; ++q) c.R[r * 3 + q] = static_cast<S>(v[r * 4 + q]);
    c.t[r] = static_cast<S>(v[r * 4 + 3]);
  }
  c.fx = static_cast<S>(k[0]);
  c.fy = static_cast<S>(k[4]);
  c.cx = static_cast<S>(k[2]);
  c.cy = static_cast<S>(k[5]);
  c.width = width;
  c.height = height;
  // Same expression order as projection.py, in the working precision.
  const S tan_x = static_cast<S>(0.5 * width) / c.fx;
  const S tan_y = static_cast<S>(0.5 * height) / c.fy;
  c.lim_x_pos = (static_cast<S>(width) - c.cx) / c.fx + static_cast<S>(0.3) * tan_x;
  c.lim_x_neg = c.cx / c.fx + static_cast<S>(0.3) * tan_x;
  c.lim_y_pos = (static_cast<S>(height) - c.cy) / c.fy + static_cast<S>(0.3) * tan_y;
  c.lim_y_neg = c.cy / c.fy + static_cast<S>(0.3) * tan_y;
  return c;
}

// Rotation matrix of a unit quaternion (w, x, y, z), row major.
template <typename S>
inline void quat_to_rot(S w, S x, S y, S z, S* R) {
  const S one = 1, two = 2;
  R[0] = one - two * (y * y + z * z);
  R[1] = two * (x * y - w * z);
  R[2] = two * (x * z + w * y);
  R[3] = two * (x * y + w * z);
  R[4] = one - two * (x * x + z * z);
  R[5] = two * (y * z - w * x);
  R[6] = two * (x * z - w * y);
  R[7] = two * (y * z + w * x);
  R[8] = one - two * (x * x + y * y);
}

// ---------------------------------------------------------------------------------------------
// Projection (forward), one Gaussian. Mirrors project_gaussians() operation by operation.

template <typename S>
struct Projected {
  S mx, my;        // pixel position (no offset)
  S A, B, C;       // conic
  S opacity;       // compensated opacity
  S depth;         // camera z
  int32_t radius;  // 0 = culled
};

template <typename S>
inline Projected<S> project_one(const Camera<S>& cam, const S* m, const S* q, const S* s, S opac,
                                S kernel_size, bool compensate) {
  Projected<S> out;
  const S* R = cam.R;
  const S x = m[0] * R[0] + m[1] * R[1] + m[2] * R[2] + cam.t[0];
  const S y = m[0] * R[3] + m[1] * R[4] + m[2] * R[5] + cam.t[1];
  const S z = m[0] * R[6] + m[1] * R[7] + m[2] * R[8] + cam.t[2];
  const bool in_front = z > static_cast<S>(NEAR_PLANE);
  const S zs = in_front ? z : S(1);
  const S ux = std::min(std::max(x / zs, -cam.lim_x_neg), cam.lim_x_pos);
  const S uy = std::min(std::max(y / zs, -cam.lim_y_neg), cam.lim_y_pos);
  const S tx = zs * ux, ty = zs * uy;
  const S zs2 = zs * zs;
  const S J00 = cam.fx / zs, J02 = -cam.fx * tx / zs2;
  const S J11 = cam.fy / zs, J12 = -cam.fy * ty / zs2;

  const S qn = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  S Rq[9];
  quat_to_rot(q[0] / qn, q[1] / qn, q[2] / qn, q[3] / qn, Rq);
  S M[9];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) M[r * 3 + c] = Rq[r * 3 + c] * s[c];
  S Sig[9];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      Sig[r * 3 + c] = M[r * 3 + 0] * M[c * 3 + 0] + M[r * 3 + 1] * M[c * 3 + 1] + M[r * 3 + 2] * M[c * 3 + 2];
  // JW = J @ R (2x3)
  S JW[6];
  for (int c = 0; c < 3; ++c) {
    JW[c] = J00 * R[c] + J02 * R[6 + c];
    JW[3 + c] = J11 * R[3 + c] + J12 * R[6 + c];
  }
  // T = JW @ Sig (2x3), cov2d = T @ JW^T
  S Tm[6];
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c)
      Tm[r * 3 + c] = JW[r * 3 + 0] * Sig[c] + JW[r * 3 + 1] * Sig[3 + c] + JW[r * 3 + 2] * Sig[6 + c];
  S a = Tm[0] * JW[0] + Tm[1] * JW[1] + Tm[2] * JW[2];
  const S b = Tm[0] * JW[3] + Tm[1] * JW[4] + Tm[2] * JW[5];
  S c = Tm[3] * JW[3] + Tm[4] * JW[4] + Tm[5] * JW[5];
  const S det_orig = a * c - b * b;
  a = a + kernel_size;
  c = c + kernel_size;
  const S det = a * c - b * b;
  const bool valid = in_front && det > S(0);
  const S det_safe = valid ? det : S(1);
  S comp = 1;
  if (compensate && kernel_size > S(0)) comp = std::sqrt(std::max(det_orig / det_safe, S(0)));
  out.A = c / det_safe;
  out.B = -b / det_safe;
  out.C = a / det_safe;
  const S mid = S(0.5) * (a + c);
  const S lam = mid + std::sqrt(std::max(mid * mid - det_safe, static_cast<S>(0.1)));
  const S rad = std::ceil(S(3) * std::sqrt(lam));
  out.mx = cam.fx * x / zs + cam.cx;
  out.my = cam.fy * y / zs + cam.cy;
  const bool on_screen = (out.mx + rad > S(0)) && (out.mx - rad < static_cast<S>(cam.width)) &&
                         (out.my + rad > S(0)) && (out.my - rad < static_cast<S>(cam.height));
  // (radii beyond 2^30 px only arise at the near plane; capped so the int conversion is defined)
  out.radius = (valid && on_screen && rad > S(0)) ? static_cast<int32_t>(std::min(rad, S(1 << 30))) : 0;
  out.opacity = opac * comp;
  out.depth = z;
  return out;
}

// Tile rectangle [x0, x1) x [y0, y1) of a Gaussian, as tile_ranges() computes it.
template <typename S>
inline void tile_rect(S mx, S my, int32_t radius, int tiles_x, int tiles_y, int32_t* rect) {
  if (radius <= 0) {
    rect[0] = rect[1] = rect[2] = rect[3] = 0;
    return;
  }
  const S r = static_cast<S>(radius);
  const S tile = static_cast<S>(TILE);
  auto clampi = [](S v, int hi) -> int32_t {
    v = std::min(std::max(v, S(0)), static_cast<S>(hi));
    return static_cast<int32_t>(v);
  };
  rect[0] = clampi(std::floor((mx - r - S(0.5)) / tile), tiles_x);
  rect[1] = clampi(std::floor((mx + r - S(0.5)) / tile) + S(1), tiles_x);
  rect[2] = clampi(std::floor((my - r - S(0.5)) / tile), tiles_y);
  rect[3] = clampi(std::floor((my + r - S(0.5)) / tile) + S(1), tiles_y);
  if (rect[1] < rect[0]) rect[1] = rect[0];
  if (rect[3] < rect[2]) rect[3] = rect[2];
}

// Indices of the Gaussians with at least one tile, ordered by (depth, index).
// `visible` (n indices, ascending) is reordered in place; returns where the sorted order lies
// (visible itself or a scratch array).
template <typename S>
const int32_t* depth_order(const S* depth, int32_t* visible, size_t n) {
  int32_t* order = visible;
  if constexpr (std::is_same<S, float>::value) {
    // LSD radix sort on the float bits (visible depths are > NEAR_PLANE > 0, so the bit patterns
    // order like the values); stable, and the input is in index order, so ties keep index order.
    // A pass whose digit is the same for every key is skipped (it would not move anything).
    int32_t* tmp = scratch<int32_t>(SCR_ORDER_TMP, n).data();
    uint32_t* key = scratch<uint32_t>(SCR_KEY, n).data();
    uint32_t* key_tmp = scratch<uint32_t>(SCR_KEY_TMP, n).data();
    uint32_t kand = ~0u, kor = 0u;
    for (size_t i = 0; i < n; ++i) {
      std::memcpy(&key[i], &depth[order[i]], sizeof(uint32_t));
      kand &= key[i];
      kor |= key[i];
    }
    const uint32_t varying = kand ^ kor;
    for (int shift = 0; shift < 32; shift += 11) {
      if (((varying >> shift) & 2047u) == 0) continue;
      size_t count[2049] = {0};
      for (size_t i = 0; i < n; ++i) ++count[((key[i] >> shift) & 2047u) + 1];
      for (int b = 0; b < 2048; ++b) count[b + 1] += count[b];
      for (size_t i = 0; i < n; ++i) {
        const size_t dst = count[(key[i] >> shift) & 2047u]++;
        tmp[dst] = order[i];
        key_tmp[dst] = key[i];
      }
      std::swap(order, tmp);
      std::swap(key, key_tmp);
    }
  } else {
    std::stable_sort(order, order + n, [depth](int32_t a, int32_t b) { return depth[a] < depth[b]; });
  }
  return order;
}

struct Binning {
  torch::Tensor gids;          // [P] int32: Gaussian of each pair, grouped by tile, depth sorted
  torch::Tensor tile_offsets;  // [n_tiles + 1] int32
  torch::Tensor gauss_offsets; // [N + 1] int32: Gaussian g owns rows off[g]:off[g+1] of the pair buffer
  torch::Tensor gauss_pairs;   // [P] int32: per pair (position in gids), its row in that Gaussian-major
                               // buffer, so backward writes each pair's gradient where the per-Gaussian
                               // reduction then reads it contiguously
};

template <typename S>
Binning bin_gaussians(const int32_t* rects, const S* depth, int64_t N, int tiles_x, int tiles_y,
                      int nthreads) {
  const int n_tiles = tiles_x * tiles_y;
  auto gauss_offsets = torch::empty({N + 1}, torch::kInt32);
  int32_t* goff = gauss_offsets.data_ptr<int32_t>();
  int64_t total = 0;
  int32_t* visible = scratch<int32_t>(SCR_VISIBLE, static_cast<size_t>(N) + 1).data();
  size_t n_visible = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t* r = &rects[static_cast<size_t>(i) * 4];
    const int64_t cnt = static_cast<int64_t>(r[1] - r[0]) * (r[3] - r[2]);
    goff[i] = static_cast<int32_t>(std::min<int64_t>(total, std::numeric_limits<int32_t>::max()));
    total += cnt;
    visible[n_visible] = static_cast<int32_t>(i);
    n_visible += cnt > 0 ? 1 : 0;
  }
  TORCH_CHECK(total < std::numeric_limits<int32_t>::max(),
              "threedsr_cpu_rasterizer: too many tile/Gaussian pairs (", total, ")");
  goff[N] = static_cast<int32_t>(total);
  const int32_t* order = depth_order<S>(depth, visible, n_visible);
  // The visible Gaussians' tile rectangles and first pair rows, gathered once into depth order: both
  // passes below then stream them instead of reading the Gaussian-major arrays at random twice.
  int32_t* sorted = scratch<int32_t>(SCR_SORTED, n_visible * 5 + 1).data();
  for (size_t k = 0; k < n_visible; ++k) {
    if (k + 16 < n_visible) {
      __builtin_prefetch(&rects[static_cast<size_t>(order[k + 16]) * 4]);
      __builtin_prefetch(&goff[order[k + 16]]);
    }
    const int32_t g = order[k];
    std::memcpy(&sorted[5 * k], &rects[static_cast<size_t>(g) * 4], 4 * sizeof(int32_t));
    sorted[5 * k + 4] = goff[g];
  }

  // Counting sort of the depth-ordered pairs into tiles; each thread owns a contiguous piece of
  // the depth order and its own slots inside every tile, so lists stay depth sorted.
  const int nt = n_visible >= static_cast<size_t>(8 * PARALLEL_MIN) ? std::max(1, nthreads) : 1;
  std::vector<int64_t>& counts = scratch<int64_t>(SCR_COUNTS, static_cast<size_t>(nt) * n_tiles);
  std::fill(counts.begin(), counts.begin() + static_cast<size_t>(nt) * n_tiles, 0);
  const int64_t nvis = static_cast<int64_t>(n_visible);
  auto piece = [&](int t, int64_t& b, int64_t& e) {
    b = nvis * t / nt;
    e = nvis * (t + 1) / nt;
  };
  // (pieces are dealt round-robin, so a team smaller than asked for still covers all of them)
#pragma omp parallel num_threads(nt) if (nt > 1)
  for (int t = omp_get_thread_num(); t < nt; t += omp_get_num_threads()) {
    int64_t b, e;
    piece(t, b, e);
    int64_t* cts = &counts[static_cast<size_t>(t) * n_tiles];
    for (int64_t k = b; k < e; ++k) {
      const int32_t* r = &sorted[5 * k];
      for (int ty = r[2]; ty < r[3]; ++ty)
        for (int tx = r[0]; tx < r[1]; ++tx) ++cts[ty * tiles_x + tx];
    }
  }
  auto tile_offsets = torch::empty({n_tiles + 1}, torch::kInt32);
  int32_t* toff = tile_offsets.data_ptr<int32_t>();
  int64_t run = 0;
  for (int tile = 0; tile < n_tiles; ++tile) {
    toff[tile] = static_cast<int32_t>(run);
    for (int t = 0; t < nt; ++t) {
      const int64_t c = counts[static_cast<size_t>(t) * n_tiles + tile];
      counts[static_cast<size_t>(t) * n_tiles + tile] = run;  // becomes this thread's cursor
      run += c;
    }
  }
  toff[n_tiles] = static_cast<int32_t>(run);
  auto gids = torch::empty({total}, torch::kInt32);
  auto gauss_pairs = torch::empty({total}, torch::kInt32);
  int32_t* gid = gids.data_ptr<int32_t>();
  int32_t* gp = gauss_pairs.data_ptr<int32_t>();
#pragma omp parallel num_threads(nt) if (nt > 1)
  for (int t = omp_get_thread_num(); t < nt; t += omp_get_num_threads()) {
    int64_t b, e;
    piece(t, b, e);
    int64_t* cur = &counts[static_cast<size_t>(t) * n_tiles];
    for (int64_t k = b; k < e; ++k) {
      const int32_t g = order[k];
      const int32_t* r = &sorted[5 * k];
      int32_t j = r[4];
      for (int ty = r[2]; ty < r[3]; ++ty)
        for (int tx = r[0]; tx < r[1]; ++tx) {
          const int64_t pos = cur[ty * tiles_x + tx]++;
          gid[pos] = g;
          gp[pos] = j++;
        }
    }
  }
  return {gids, tile_offsets, gauss_offsets, gauss_pairs};
}

// ---------------------------------------------------------------------------------------------
// Compositing
//
// Packed per-Gaussian record (FEAT values): mx my A B C o c0 c1 c2 z hx hy, where (hx, hy) bound
// the region where alpha can reach 1/255: |dx| > hx or |dy| > hy gives alpha < 1/255 at every pixel
// (max over dx of the power at fixed dy is -dy^2 / (2 cov_yy)), padded well beyond the rounding of
// the per-pixel arithmetic. Skipping such rows or tiles therefore changes no output bit; it only
// avoids work where the 3-sigma box is loose (low opacity, 8-pixel tile granularity).

template <typename S>
inline void pack_feature(int64_t i, const S* means2d, const S* conics, const S* opac_c, const S* colors,
                         const S* depths, const int32_t* radii, S* feat) {
  {
    S* f = feat + i * FEAT;
    f[0] = means2d[2 * i];
    f[1] = means2d[2 * i + 1];
    f[2] = conics[3 * i];
    f[3] = conics[3 * i + 1];
    f[4] = conics[3 * i + 2];
    f[5] = opac_c[i];
    f[6] = colors[3 * i];
    f[7] = colors[3 * i + 1];
    f[8] = colors[3 * i + 2];
    f[9] = depths[i];
    const double A = f[2], B = f[3], C = f[4], o = f[5];
    const double det = A * C - B * B;
    double hx = std::numeric_limits<double>::infinity(), hy = hx;
    if (radii[i] > 0 && det > 0.0 && A > 0.0 && C > 0.0 && o > 0.0 && std::isfinite(det)) {
      // alpha >= ALPHA_MIN needs power >= log(ALPHA_MIN / o) = thr. Slack delta covers the float
      // rounding of the power (terms up to (A + C) (r + 9)^2 in size, error a few ulp of that).
      const double thr = std::log(ALPHA_MIN / o);
      const double ext = static_cast<double>(radii[i]) + 2.0 * TILE;
      const double delta = 1e-3 + 1e-5 * (A + C) * 2.0 * ext * ext;
      const double budget = std::max(0.0, -thr) + delta;
      hx = std::sqrt(2.0 * budget * (C / det)) * (1.0 + 1e-6);
      hy = std::sqrt(2.0 * budget * (A / det)) * (1.0 + 1e-6);
      hx += 0.01 + 1e-6 * std::fabs(static_cast<double>(f[0]));
      hy += 0.01 + 1e-6 * std::fabs(static_cast<double>(f[1]));
    }
    f[10] = static_cast<S>(hx);
    f[11] = static_cast<S>(hy);
  }
}

template <typename S>
void pack_features(int64_t N, const S* means2d, const S* conics, const S* opac_c, const S* colors,
                   const S* depths, const int32_t* radii, S* feat, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1024) if (N >= PARALLEL_MIN)
  for (int64_t i = 0; i < N; ++i) pack_feature(i, means2d, conics, opac_c, colors, depths, radii, feat);
}

// Rows [r0, r1] of a tile (y_base = tile's first pixel row) a Gaussian can reach; r0 > r1 if none.
template <typename S>
inline bool reach(const S* f, int x_base, int y_base, int& r0, int& r1) {
  const double mx = f[0], my = f[1], hx = f[10], hy = f[11];
  if (!(mx + hx >= x_base + 0.5 && mx - hx <= x_base + TILE - 0.5)) return false;
  const double lo = std::ceil(my - hy - y_base - 0.5), hi = std::floor(my + hy - y_base - 0.5);
  if (!(lo <= TILE - 1 && hi >= 0)) return false;
  r0 = lo < 0 ? 0 : static_cast<int>(lo);
  r1 = hi > TILE - 1 ? TILE - 1 : static_cast<int>(hi);
  return true;
}

// The exponent at the pixels of one tile row, evaluated exactly as the reference does: a quadratic
// in the pixel offset q from the tile's first pixel centre, power = c . (1, qx, qy, qx^2, qy^2,
// qx qy), with the coefficients c from the mean taken relative to that centre. The reference runs
// this product through torch.bmm, which accumulates the six terms in order with fused multiply-adds
// (its GEMM path) or with a multiply then an add (its small-matrix loop); `fused` picks which, per
// tile (see reference_fused_tiles). Rounding alike keeps the 1/255 cut and the early stop taking
// the same decisions as the reference even for pairs within an ulp of a threshold.
template <typename S>
struct Quadratic {
  S c0, c1, c2, c3, c4, c5;
  Quadratic(const S* f, int x_base, int y_base) {
    const S A = f[2], B = f[3], C = f[4];
    const S mx = f[0] - (static_cast<S>(x_base) + S(0.5));
    const S my = f[1] - (static_cast<S>(y_base) + S(0.5));
    c0 = S(-0.5) * (A * mx * mx + C * my * my) - B * mx * my;
    c1 = A * mx + B * my;
    c2 = C * my + B * mx;
    c3 = S(-0.5) * A;
    c4 = S(-0.5) * C;
    c5 = -B;
  }
  template <typename V>
  inline V eval(bool fused, V qx, S qy, V qx2, S qy2, V qxy) const {
    V p = splat<V>(c0);
    if (fused) {
      p = vfma(splat<V>(c1), qx, p);
      p = vfma(splat<V>(c2), splat<V>(qy), p);
      p = vfma(splat<V>(c3), qx2, p);
      p = vfma(splat<V>(c4), splat<V>(qy2), p);
      p = vfma(splat<V>(c5), qxy, p);
    } else {
      p = p + c1 * qx;
      p = p + splat<V>(c2 * qy);
      p = p + c3 * qx2;
      p = p + splat<V>(c4 * qy2);
      p = p + c5 * qxy;
    }
    return p;
  }
};

// Per tile: does the reference evaluate this tile's exponents on torch's fused (GEMM) path? The
// reference composites tiles in chunks: tiles sorted by list length, longest first, each chunk
// padded to the length K of its first tile and holding chunk_elements / (64 K) tiles; torch.bmm takes
// the GEMM path when K >= 4 (and only on CPUs with FMA). Tiles of length >= 4 are always there;
// shorter ones follow the chunk they fall into (when a chunk boundary splits a run of equal lengths,
// which of those tiles land on which side depends on the sort's tie order: the majority is taken).
std::vector<uint8_t> reference_fused_tiles(const int32_t* toff, int n_tiles, int64_t chunk_elements, bool fma) {
  std::vector<uint8_t> fused(n_tiles, 0);
  if (!fma) return fused;
  std::vector<int32_t> counts;
  counts.reserve(n_tiles);
  for (int t = 0; t < n_tiles; ++t)
    if (toff[t + 1] > toff[t]) counts.push_back(toff[t + 1] - toff[t]);
  std::sort(counts.begin(), counts.end(), std::greater<int32_t>());
  int64_t votes[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};  // [length 1..3][bmm path fused?]
  const int64_t nz = static_cast<int64_t>(counts.size());
  for (int64_t i = 0; i < nz;) {
    const int64_t K = counts[i];
    const int64_t per = std::max<int64_t>(1, chunk_elements / (K * NPIX));
    for (int64_t j = i; j < std::min(nz, i + per); ++j)
      if (counts[j] < 4) ++votes[counts[j]][K >= 4 ? 1 : 0];
    i += per;
  }
  for (int t = 0; t < n_tiles; ++t) {
    const int32_t c = toff[t + 1] - toff[t];
    fused[t] = c >= 4 ? 1 : (c > 0 && votes[c][1] >= votes[c][0] ? 1 : 0);
  }
  return fused;
}

// A tile's list is in depth order, so its records are scattered over the Gaussian-major arrays (larger
// than L2 for ~30k Gaussians): fetch the record PREFETCH pairs ahead, both cache lines it may span.
constexpr int32_t PREFETCH = 6;
template <typename T>
inline void prefetch_record(const T* p, int n, bool write = false) {
  if (write) {
    __builtin_prefetch(p, 1);
    __builtin_prefetch(p + n - 1, 1);
  } else {
    __builtin_prefetch(p, 0);
    __builtin_prefetch(p + n - 1, 0);
  }
}

template <typename S>
void composite_tile_forward(int tile, int tiles_x, int width, int height, const S* feat,
                            const int32_t* gid, int32_t start, int32_t count, bool fused, const S* bg,
                            S* image, S* depth_img, S* alpha_img, S* final_T, int32_t* last_out) {
  typedef typename Vec<S>::V V;
  typedef typename Vec<S>::I I;
  typedef typename std::remove_reference<decltype(I{}[0])>::type IS;
  constexpr int W = Vec<S>::W;
  constexpr int NV = NPIX / W;    // vectors per tile
  constexpr int RV = TILE / W;    // vectors per row
  V qx[RV], qx2[RV], T[NV], C0[NV], C1[NV], C2[NV], D[NV];
  I last[NV], done[NV];
  const int x_base = (tile % tiles_x) * TILE, y_base = (tile / tiles_x) * TILE;
  for (int v = 0; v < RV; ++v)
    for (int l = 0; l < W; ++l) {
      qx[v][l] = static_cast<S>(v * W + l);
      qx2[v][l] = qx[v][l] * qx[v][l];
    }
  for (int v = 0; v < NV; ++v) {
    T[v] = splat<V>(S(1));
    C0[v] = C1[v] = C2[v] = D[v] = splat<V>(S(0));
    last[v] = I{};
    for (int l = 0; l < W; ++l) {
      const int p = v * W + l;
      // pixels past the image edge are finished from the start (they are cropped anyway)
      done[v][l] = (x_base + p % TILE < width && y_base + p / TILE < height) ? 0 : -1;
    }
  }
  const V amax = splat<V>(static_cast<S>(ALPHA_MAX)), amin = splat<V>(static_cast<S>(ALPHA_MIN));
  const V tmin = splat<V>(static_cast<S>(T_MIN)), zero = splat<V>(S(0)), one = splat<V>(S(1));
  for (int32_t k = 0; k < count; ++k) {
    if (k + PREFETCH < count) prefetch_record(feat + static_cast<int64_t>(gid[start + k + PREFETCH]) * FEAT, FEAT);
    const S* f = feat + static_cast<int64_t>(gid[start + k]) * FEAT;
    int r0, r1;
    if (!reach(f, x_base, y_base, r0, r1)) continue;
    const Quadratic<S> quad(f, x_base, y_base);
    const S o = f[5], c0 = f[6], c1 = f[7], c2 = f[8], z = f[9];
    const I kk = I{} + static_cast<IS>(k + 1);
    I any_term = I{};
    for (int r = r0; r <= r1; ++r) {
      const S qy = static_cast<S>(r), qy2 = qy * qy;
      for (int h = 0; h < RV; ++h) {
        const int v = r * RV + h;
        if (!any_lane(~done[v])) continue;  // every pixel of this row has stopped: nothing would change
        const V power = quad.eval(fused, qx[h], qy, qx2[h], qy2, qx[h] * qy);
        const V G = vexp(power);
        const V raw = o * G;
        const V alpha = select(raw > amax, amax, raw);
        const V Tp = T[v];
        const V test_T = Tp * (one - alpha);
        const I ok = (power <= zero) & (alpha >= amin) & ~done[v];
        const I term = ok & (test_T < tmin);
        const I use = ok & ~term;
        const V w = select(use, alpha * Tp, zero);
        C0[v] += w * c0;
        C1[v] += w * c1;
        C2[v] += w * c2;
        D[v] += w * z;
        T[v] = select(use, test_T, Tp);
        last[v] = (use & kk) | (~use & last[v]);
        done[v] |= term;
        any_term |= term;
      }
    }
    if (any_lane(any_term)) {
      I alive = I{};
      for (int v = 0; v < NV; ++v) alive |= ~done[v];
      if (!any_lane(alive)) break;
    }
  }
  const int64_t HW = static_cast<int64_t>(width) * height;
  for (int p = 0; p < NPIX; ++p) {
    const int u = x_base + p % TILE, vrow = y_base + p / TILE;
    if (u >= width || vrow >= height) continue;
    const int v = p / W, l = p % W;
    const int64_t o = static_cast<int64_t>(vrow) * width + u;
    const S Tp = T[v][l];
    image[o] = C0[v][l] + Tp * bg[0];
    image[HW + o] = C1[v][l] + Tp * bg[1];
    image[2 * HW + o] = C2[v][l] + Tp * bg[2];
    depth_img[o] = D[v][l];
    alpha_img[o] = S(1) - Tp;
    final_T[o] = Tp;
    last_out[o] = static_cast<int32_t>(last[v][l]);
  }
}

template <typename S>
void composite_tile_backward(int tile, int tiles_x, int width, int height, const S* feat,
                             const int32_t* gid, const int32_t* slot, int32_t start, int32_t count, bool fused,
                             const S* bg, const S* final_T, const int32_t* last_in, const S* g_image,
                             const S* g_depth, const S* g_alpha, S* pair_grad) {
  typedef typename Vec<S>::V V;
  typedef typename Vec<S>::I I;
  typedef typename std::remove_reference<decltype(I{}[0])>::type IS;
  constexpr int W = Vec<S>::W;
  constexpr int NV = NPIX / W;
  constexpr int RV = TILE / W;
  V px[RV], qx[RV], qx2[RV], T[NV], Wr[NV], dC0[NV], dC1[NV], dC2[NV], dD[NV];
  I last[NV];
  const int x_base = (tile % tiles_x) * TILE, y_base = (tile / tiles_x) * TILE;
  const int64_t HW = static_cast<int64_t>(width) * height;
  for (int v = 0; v < RV; ++v)
    for (int l = 0; l < W; ++l) {
      px[v][l] = static_cast<S>(x_base + v * W + l) + S(0.5);
      qx[v][l] = static_cast<S>(v * W + l);
      qx2[v][l] = qx[v][l] * qx[v][l];
    }
  int32_t kmax = 0;
  for (int p = 0; p < NPIX; ++p) {
    const int v = p / W, l = p % W;
    const int u = x_base + p % TILE, vrow = y_base + p / TILE;
    if (u < width && vrow < height) {
      const int64_t o = static_cast<int64_t>(vrow) * width + u;
      const S Tf = final_T[o];
      T[v][l] = Tf;
      last[v][l] = last_in[o];
      dC0[v][l] = g_image[o];
      dC1[v][l] = g_image[HW + o];
      dC2[v][l] = g_image[2 * HW + o];
      dD[v][l] = g_depth[o];
      // Wr = dL/dC . (sum_{j>i} c_j w_j + T_final bg) + dL/dD sum_{j>i} z_j w_j - dL/dA T_final:
      // what everything behind Gaussian i owes to its alpha, times (1 - alpha_i).
      Wr[v][l] = Tf * (g_image[o] * bg[0] + g_image[HW + o] * bg[1] + g_image[2 * HW + o] * bg[2] - g_alpha[o]);
      kmax = std::max(kmax, last_in[o]);
    } else {
      T[v][l] = 1;
      last[v][l] = 0;
      dC0[v][l] = dC1[v][l] = dC2[v][l] = dD[v][l] = Wr[v][l] = 0;
    }
  }
  // Pairs behind every pixel's last contributor get no gradient.
  for (int32_t k = kmax; k < count; ++k) {
    S* out = pair_grad + static_cast<int64_t>(slot[start + k]) * PAIR_G;
    std::fill(out, out + PAIR_G, S(0));
  }
  const V amax = splat<V>(static_cast<S>(ALPHA_MAX)), amin = splat<V>(static_cast<S>(ALPHA_MIN));
  const V zero = splat<V>(S(0)), one = splat<V>(S(1)), half = splat<V>(S(-0.5));
  for (int32_t k = kmax - 1; k >= 0; --k) {
    if (k >= PREFETCH) {
      prefetch_record(feat + static_cast<int64_t>(gid[start + k - PREFETCH]) * FEAT, FEAT);
      prefetch_record(pair_grad + static_cast<int64_t>(slot[start + k - PREFETCH]) * PAIR_G, PAIR_G, true);
    }
    const S* f = feat + static_cast<int64_t>(gid[start + k]) * FEAT;
    S* out = pair_grad + static_cast<int64_t>(slot[start + k]) * PAIR_G;
    int r0, r1;
    if (!reach(f, x_base, y_base, r0, r1)) {
      std::fill(out, out + PAIR_G, S(0));
      continue;
    }
    const Quadratic<S> quad(f, x_base, y_base);
    const S mx = f[0], A = f[2], B = f[3], Cc = f[4], o = f[5];
    const S c0 = f[6], c1 = f[7], c2 = f[8], z = f[9];
    const I kk = I{} + static_cast<IS>(k);
    V s_mx = zero, s_my = zero, s_A = zero, s_B = zero, s_C = zero, s_o = zero;
    V s_c0 = zero, s_c1 = zero, s_c2 = zero, s_z = zero;
    for (int r = r0; r <= r1; ++r) {
      const S qy = static_cast<S>(r), qy2 = qy * qy;
      const V dy = splat<V>(f[1] - (static_cast<S>(y_base + r) + S(0.5)));
      for (int h = 0; h < RV; ++h) {
        const int v = r * RV + h;
        const I behind = kk < last[v];
        if (!any_lane(behind)) continue;  // this pair is behind every pixel's last contributor in the row
        const V dx = mx - px[h];
        const V power = quad.eval(fused, qx[h], qy, qx2[h], qy2, qx[h] * qy);
        const V G = vexp(power);
        const V raw = o * G;
        const V alpha = select(raw > amax, amax, raw);
        const I valid = behind & (power <= zero) & (alpha >= amin);
        const V one_m = one - alpha;
        const V Tb = T[v] / one_m;  // transmittance in front of this Gaussian
        const V w = alpha * Tb;
        const V g = dC0[v] * c0 + dC1[v] * c1 + dC2[v] * c2 + dD[v] * z;
        const V dalpha = Tb * g - Wr[v] / one_m;
        Wr[v] = select(valid, Wr[v] + w * g, Wr[v]);
        T[v] = select(valid, Tb, T[v]);
        // the 0.99 clamp passes no gradient where it is active (as torch.clamp)
        const V dG = select(valid & (raw <= amax), dalpha, zero);
        const V dpow = dG * raw;
        const V wv = select(valid, w, zero);
        s_o += dG * G;
        s_mx += dpow * -(A * dx + B * dy);
        s_my += dpow * -(Cc * dy + B * dx);
        s_A += dpow * (half * dx * dx);
        s_B += dpow * -(dx * dy);
        s_C += dpow * (half * dy * dy);
        s_c0 += wv * dC0[v];
        s_c1 += wv * dC1[v];
        s_c2 += wv * dC2[v];
        s_z += wv * dD[v];
      }
    }
    out[0] = hsum(s_mx);
    out[1] = hsum(s_my);
    out[2] = hsum(s_A);
    out[3] = hsum(s_B);
    out[4] = hsum(s_C);
    out[5] = hsum(s_o);
    out[6] = hsum(s_c0);
    out[7] = hsum(s_c1);
    out[8] = hsum(s_c2);
    out[9] = hsum(s_z);
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points

void check_inputs(const torch::Tensor& means, const torch::Tensor& quats, const torch::Tensor& scales,
                  const torch::Tensor& opacities, const torch::Tensor& colors, const torch::Tensor& offset,
                  const torch::Tensor& background) {
  const int64_t N = means.size(0);
  TORCH_CHECK(means.device().is_cpu(), "threedsr_cpu_rasterizer runs on CPU tensors");
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be [N, 3]");
  TORCH_CHECK(quats.dim() == 2 && quats.size(0) == N && quats.size(1) == 4, "quats must be [N, 4]");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N && scales.size(1) == 3, "scales must be [N, 3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == N, "opacities must be [N]");
  TORCH_CHECK(colors.dim() == 2 && colors.size(0) == N && colors.size(1) == 3, "colors must be [N, 3]");
  TORCH_CHECK(offset.dim() == 2 && offset.size(0) == N && offset.size(1) == 2, "means2d_offset must be [N, 2]");
  TORCH_CHECK(background.numel() == 3, "background must have 3 values");
  for (const auto* t : {&quats, &scales, &opacities, &colors, &background})
    TORCH_CHECK(t->scalar_type() == means.scalar_type() && t->is_contiguous() && t->device().is_cpu(),
                "all inputs must be contiguous CPU tensors of one dtype");
  // means2d_offset may be a row-strided view (e.g. the first two columns of an [N, 3] tensor)
  TORCH_CHECK(offset.scalar_type() == means.scalar_type() && offset.device().is_cpu() &&
                  (N <= 1 || (offset.stride(1) == 1 && offset.stride(0) >= 2)),
              "means2d_offset must be a CPU tensor of the means' dtype with unit column stride");
  TORCH_CHECK(means.is_contiguous(), "means must be contiguous");
}

template <typename S>
std::vector<torch::Tensor> forward_impl(const torch::Tensor& means, const torch::Tensor& quats,
                                        const torch::Tensor& scales, const torch::Tensor& opacities,
                                        const torch::Tensor& colors, const torch::Tensor& viewmat,
                                        const torch::Tensor& K, int width, int height,
                                        const torch::Tensor& background, double kernel_size, bool compensate,
                                        const torch::Tensor& offset, int64_t ref_chunk_elements, int nthreads,
                                        bool return_feat) {
  StageClock clk("forward");
  const int64_t N = means.size(0);
  const Camera<S> cam = make_camera<S>(viewmat, K, width, height);
  const S ks = static_cast<S>(kernel_size);
  auto opts = means.options();
  auto means2d = torch::empty({N, 2}, opts);
  auto conics = torch::empty({N, 3}, opts);
  auto opac_c = torch::empty({N}, opts);
  auto depths = torch::empty({N}, opts);
  auto radii = torch::empty({N}, opts.dtype(torch::kInt32));
  auto feat = torch::empty({N, FEAT}, opts);
  const S* m = means.data_ptr<S>();
  const S* q = quats.data_ptr<S>();
  const S* s = scales.data_ptr<S>();
  const S* op = opacities.data_ptr<S>();
  const S* col = colors.data_ptr<S>();
  const S* off = offset.data_ptr<S>();
  const int64_t off_stride = N > 0 ? offset.stride(0) : 2;  // rows may be strided (a view of [N, 3])
  S* m2 = means2d.data_ptr<S>();
  S* con = conics.data_ptr<S>();
  S* oc = opac_c.data_ptr<S>();
  S* dep = depths.data_ptr<S>();
  int32_t* rad = radii.data_ptr<int32_t>();
  S* ft = feat.data_ptr<S>();
  const int tiles_x = (width + TILE - 1) / TILE, tiles_y = (height + TILE - 1) / TILE;
  const int n_tiles = tiles_x * tiles_y;
  int32_t* rects = scratch<int32_t>(SCR_RECTS, static_cast<size_t>(N) * 4).data();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 2048) if (N >= PARALLEL_MIN)
  for (int64_t i = 0; i < N; ++i) {
    const Projected<S> pr = project_one<S>(cam, m + 3 * i, q + 4 * i, s + 3 * i, op[i], ks, compensate);
    const S mx = pr.mx + off[off_stride * i], my = pr.my + off[off_stride * i + 1];
    m2[2 * i] = mx;
    m2[2 * i + 1] = my;
    con[3 * i] = pr.A;
    con[3 * i + 1] = pr.B;
    con[3 * i + 2] = pr.C;
    oc[i] = pr.opacity;
    dep[i] = pr.depth;
    rad[i] = pr.radius;
    int32_t* rect = &rects[static_cast<size_t>(i) * 4];
    tile_rect<S>(mx, my, pr.radius, tiles_x, tiles_y, rect);
    // only Gaussians with a tile are ever read from the packed records
    if (rect[1] > rect[0] && rect[3] > rect[2]) pack_feature(i, m2, con, oc, col, dep, rad, ft);
  }
  clk.lap("project");
  Binning bins = bin_gaussians<S>(rects, dep, N, tiles_x, tiles_y, nthreads);
  clk.lap("bin");

  auto image = torch::empty({3, height, width}, opts);
  auto depth_img = torch::empty({1, height, width}, opts);
  auto alpha_img = torch::empty({1, height, width}, opts);
  auto final_T = torch::empty({height, width}, opts);
  auto last = torch::empty({height, width}, opts.dtype(torch::kInt32));
  auto bgc = background.contiguous();
  const S* bg = bgc.data_ptr<S>();
  const int32_t* gid = bins.gids.data_ptr<int32_t>();
  const int32_t* toff = bins.tile_offsets.data_ptr<int32_t>();
  S* img = image.data_ptr<S>();
  S* dimg = depth_img.data_ptr<S>();
  S* aimg = alpha_img.data_ptr<S>();
  S* fT = final_T.data_ptr<S>();
  int32_t* lst = last.data_ptr<int32_t>();
  const std::vector<uint8_t> fused = reference_fused_tiles(toff, n_tiles, ref_chunk_elements, fused_path<S>());
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
  for (int tile = 0; tile < n_tiles; ++tile) {
    composite_tile_forward<S>(tile, tiles_x, width, height, ft, gid, toff[tile], toff[tile + 1] - toff[tile],
                              fused[tile] != 0, bg, img, dimg, aimg, fT, lst);
  }
  clk.lap("composite");
  std::vector<torch::Tensor> out = {image, depth_img, alpha_img, radii, means2d, conics, opac_c, depths, final_T,
                                    last, bins.gids, bins.tile_offsets, bins.gauss_offsets, bins.gauss_pairs};
  if (return_feat) out.push_back(feat);
  return out;
}

// Gradient of the loss through the projection of one Gaussian, in double precision.
// v_m2d: dL/d(means2d) (pixels); v_con: dL/d(conic); v_oc: dL/d(compensated opacity);
// v_depth: dL/d(camera z). Writes dL/d(mean), dL/d(quat), dL/d(scale), dL/d(opacity).
// Without `compensate` the opacity passes through unscaled, so the covariance gets gradient only
// through the conic (the compensation term's path to the covariance is off).
inline void project_backward_one(const Camera<double>& cam, const double* m, const double* q,
                                 const double* s, double opac, double ks, bool compensate, bool in_front,
                                 bool visible,
                                 const double* v_m2d, const double* v_con, double v_oc, double v_depth,
                                 double* v_mean, double* v_quat, double* v_scale, double* v_opac) {
  const double* R = cam.R;
  const double x = m[0] * R[0] + m[1] * R[1] + m[2] * R[2] + cam.t[0];
  const double y = m[0] * R[3] + m[1] * R[4] + m[2] * R[5] + cam.t[1];
  const double z = m[0] * R[6] + m[1] * R[7] + m[2] * R[8] + cam.t[2];
  const double zs = in_front ? z : 1.0;
  const double zs2 = zs * zs;
  // means2d = (fx x / zs + cx, fy y / zs + cy)
  double v_x = v_m2d[0] * cam.fx / zs;
  double v_y = v_m2d[1] * cam.fy / zs;
  double v_zs = -(v_m2d[0] * cam.fx * x + v_m2d[1] * cam.fy * y) / zs2;
  double v_z = 0.0;
  v_quat[0] = v_quat[1] = v_quat[2] = v_quat[3] = 0.0;
  v_scale[0] = v_scale[1] = v_scale[2] = 0.0;
  *v_opac = 0.0;
  if (visible) {
    v_z += v_depth;
    const double ux_raw = x / zs, uy_raw = y / zs;
    const bool x_free = ux_raw >= -cam.lim_x_neg && ux_raw <= cam.lim_x_pos;
    const bool y_free = uy_raw >= -cam.lim_y_neg && uy_raw <= cam.lim_y_pos;
    const double ux = std::min(std::max(ux_raw, -cam.lim_x_neg), cam.lim_x_pos);
    const double uy = std::min(std::max(uy_raw, -cam.lim_y_neg), cam.lim_y_pos);
    const double tx = zs * ux, ty = zs * uy;
    const double J00 = cam.fx / zs, J02 = -cam.fx * tx / zs2;
    const double J11 = cam.fy / zs, J12 = -cam.fy * ty / zs2;
    const double qn = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    const double w = q[0] / qn, qx = q[1] / qn, qy = q[2] / qn, qz = q[3] / qn;
    double Rq[9];
    quat_to_rot(w, qx, qy, qz, Rq);
    double M[9];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) M[r * 3 + c] = Rq[r * 3 + c] * s[c];
    double Sig[9];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c)
        Sig[r * 3 + c] = M[r * 3] * M[c * 3] + M[r * 3 + 1] * M[c * 3 + 1] + M[r * 3 + 2] * M[c * 3 + 2];
    double JW[6];
    for (int c = 0; c < 3; ++c) {
      JW[c] = J00 * R[c] + J02 * R[6 + c];
      JW[3 + c] = J11 * R[3 + c] + J12 * R[6 + c];
    }
    double Tm[6];  // JW Sig
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 3; ++c)
        Tm[r * 3 + c] = JW[r * 3] * Sig[c] + JW[r * 3 + 1] * Sig[3 + c] + JW[r * 3 + 2] * Sig[6 + c];
    const double a = Tm[0] * JW[0] + Tm[1] * JW[1] + Tm[2] * JW[2];
    const double b = Tm[0] * JW[3] + Tm[1] * JW[4] + Tm[2] * JW[5];
    const double c = Tm[3] * JW[3] + Tm[4] * JW[4] + Tm[5] * JW[5];
    const double det_orig = a * c - b * b;
    const double ap = a + ks, cp = c + ks;
    const double det = ap * cp - b * b;
    const bool compensated = compensate && ks > 0.0;
    double comp = 1.0;
    const double ratio = det_orig / det;
    if (compensated) comp = std::sqrt(std::max(ratio, 0.0));
    *v_opac = v_oc * comp;
    const double v_comp = v_oc * opac;
    // conic = (c', -b, a') / det
    const double det2 = det * det;
    double v_det = (-v_con[0] * cp + v_con[1] * b - v_con[2] * ap) / det2;
    double v_ap = v_con[2] / det, v_cp = v_con[0] / det, v_b = -v_con[1] / det;
    double v_do = 0.0;
    if (compensated && ratio > 0.0) {
      const double v_ratio = v_comp * 0.5 / comp;
      v_do = v_ratio / det;
      v_det += -v_ratio * ratio / det;
    }
    v_ap += v_det * cp;
    v_cp += v_det * ap;
    v_b += -2.0 * b * v_det;
    const double v_a = v_ap + v_do * c;
    const double v_c = v_cp + v_do * a;
    v_b += -2.0 * b * v_do;
    // cov2d = JW Sig JW^T, and only (0,0), (0,1), (1,1) are read: Gs = G + G^T.
    const double Gs[4] = {2.0 * v_a, v_b, v_b, 2.0 * v_c};
    // v_JW = Gs JW Sig = Gs Tm
    double v_JW[6];
    for (int r = 0; r < 2; ++r)
      for (int cc = 0; cc < 3; ++cc) v_JW[r * 3 + cc] = Gs[r * 2] * Tm[cc] + Gs[r * 2 + 1] * Tm[3 + cc];
    // v_M = JW^T Gs JW M
    double GJ[6];  // Gs JW
    for (int r = 0; r < 2; ++r)
      for (int cc = 0; cc < 3; ++cc) GJ[r * 3 + cc] = Gs[r * 2] * JW[cc] + Gs[r * 2 + 1] * JW[3 + cc];
    double VS[9];  // JW^T Gs JW
    for (int r = 0; r < 3; ++r)
      for (int cc = 0; cc < 3; ++cc) VS[r * 3 + cc] = JW[r] * GJ[cc] + JW[3 + r] * GJ[3 + cc];
    double v_M[9];
    for (int r = 0; r < 3; ++r)
      for (int cc = 0; cc < 3; ++cc)
        v_M[r * 3 + cc] = VS[r * 3] * M[cc] + VS[r * 3 + 1] * M[3 + cc] + VS[r * 3 + 2] * M[6 + cc];
    double v_R[9];
    for (int r = 0; r < 3; ++r)
      for (int cc = 0; cc < 3; ++cc) {
        v_scale[cc] += v_M[r * 3 + cc] * Rq[r * 3 + cc];
        v_R[r * 3 + cc] = v_M[r * 3 + cc] * s[cc];
      }
    // rotation matrix -> normalised quaternion
    const double v_w = 2.0 * (-qz * v_R[1] + qy * v_R[2] + qz * v_R[3] - qx * v_R[5] - qy * v_R[6] + qx * v_R[7]);
    const double v_qx = 2.0 * (qy * v_R[1] + qz * v_R[2] + qy * v_R[3] - 2.0 * qx * v_R[4] - w * v_R[5] +
                               qz * v_R[6] + w * v_R[7] - 2.0 * qx * v_R[8]);
    const double v_qy = 2.0 * (-2.0 * qy * v_R[0] + qx * v_R[1] + w * v_R[2] + qx * v_R[3] + qz * v_R[5] -
                               w * v_R[6] + qz * v_R[7] - 2.0 * qy * v_R[8]);
    const double v_qz = 2.0 * (-2.0 * qz * v_R[0] - w * v_R[1] + qx * v_R[2] + w * v_R[3] - 2.0 * qz * v_R[4] +
                               qy * v_R[5] + qx * v_R[6] + qy * v_R[7]);
    const double dot = w * v_w + qx * v_qx + qy * v_qy + qz * v_qz;
    v_quat[0] = (v_w - w * dot) / qn;
    v_quat[1] = (v_qx - qx * dot) / qn;
    v_quat[2] = (v_qy - qy * dot) / qn;
    v_quat[3] = (v_qz - qz * dot) / qn;
    // v_J = v_JW R^T
    double v_J[6];
    for (int r = 0; r < 2; ++r)
      for (int cc = 0; cc < 3; ++cc)
        v_J[r * 3 + cc] = v_JW[r * 3] * R[cc * 3] + v_JW[r * 3 + 1] * R[cc * 3 + 1] + v_JW[r * 3 + 2] * R[cc * 3 + 2];
    const double zs3 = zs2 * zs;
    v_zs += -v_J[0] * cam.fx / zs2 - v_J[4] * cam.fy / zs2 + v_J[2] * 2.0 * cam.fx * tx / zs3 +
            v_J[5] * 2.0 * cam.fy * ty / zs3;
    const double v_tx = -v_J[2] * cam.fx / zs2;
    const double v_ty = -v_J[5] * cam.fy / zs2;
    // t = zs * clamp(x / zs)
    v_zs += v_tx * ux + v_ty * uy;
    if (x_free) {
      v_x += v_tx;  // zs * (1 / zs)
      v_zs += -v_tx * zs * x / zs2;
    }
    if (y_free) {
      v_y += v_ty;
      v_zs += -v_ty * zs * y / zs2;
    }
  }
  if (in_front) v_z += v_zs;
  // p = R mean + t
  v_mean[0] = R[0] * v_x + R[3] * v_y + R[6] * v_z;
  v_mean[1] = R[1] * v_x + R[4] * v_y + R[7] * v_z;
  v_mean[2] = R[2] * v_x + R[5] * v_y + R[8] * v_z;
}

template <typename S>
std::vector<torch::Tensor> backward_impl(
    const torch::Tensor& means, const torch::Tensor& quats, const torch::Tensor& scales,
    const torch::Tensor& opacities, const torch::Tensor& colors, const torch::Tensor& viewmat,
    const torch::Tensor& K, int width, int height, const torch::Tensor& background, double kernel_size,
    const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& opac_c,
    const torch::Tensor& depths, const torch::Tensor& radii, const torch::Tensor& final_T,
    const torch::Tensor& last, const torch::Tensor& gids, const torch::Tensor& tile_offsets,
    const torch::Tensor& gauss_offsets, const torch::Tensor& gauss_pairs, const torch::Tensor& g_image,
    const torch::Tensor& g_depth, const torch::Tensor& g_alpha, const torch::Tensor& g_means2d,
    int64_t ref_chunk_elements, int nthreads, bool compensate, const torch::Tensor* saved_feat) {
  StageClock clk("backward");
  const int64_t N = means.size(0);
  const int tiles_x = (width + TILE - 1) / TILE, tiles_y = (height + TILE - 1) / TILE;
  const int n_tiles = tiles_x * tiles_y;
  auto opts = means.options();
  // The packed per-Gaussian records the forward composited with: passed on from it, or rebuilt.
  torch::Tensor feat;
  if (saved_feat != nullptr) {
    feat = *saved_feat;
  } else {
    feat = torch::empty({N, FEAT}, opts);
    pack_features<S>(N, means2d.data_ptr<S>(), conics.data_ptr<S>(), opac_c.data_ptr<S>(), colors.data_ptr<S>(),
                     depths.data_ptr<S>(), radii.data_ptr<int32_t>(), feat.data_ptr<S>(), nthreads);
  }
  const int64_t P = gids.numel();
  S* pair_grad_mem = pair_scratch<S>(static_cast<size_t>(P) * PAIR_G + 1).data();
  auto bgc = background.contiguous();
  // An empty gradient tensor stands for zeros (the loss did not use that output).
  const torch::Tensor gi = g_image.contiguous();
  const torch::Tensor gd = g_depth.numel() == 0 ? torch::zeros({1, height, width}, opts) : g_depth.contiguous();
  const torch::Tensor ga = g_alpha.numel() == 0 ? torch::zeros({1, height, width}, opts) : g_alpha.contiguous();
  clk.lap("setup");
  {
    const S* ft = feat.data_ptr<S>();
    const int32_t* gid = gids.data_ptr<int32_t>();
    const int32_t* slot = gauss_pairs.data_ptr<int32_t>();
    const int32_t* toff = tile_offsets.data_ptr<int32_t>();
    const S* bg = bgc.data_ptr<S>();
    const S* fT = final_T.data_ptr<S>();
    const int32_t* lst = last.data_ptr<int32_t>();
    const S* gip = gi.data_ptr<S>();
    const S* gdp = gd.data_ptr<S>();
    const S* gap = ga.data_ptr<S>();
    S* pg = pair_grad_mem;
    const std::vector<uint8_t> fused = reference_fused_tiles(toff, n_tiles, ref_chunk_elements, fused_path<S>());
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int tile = 0; tile < n_tiles; ++tile) {
      composite_tile_backward<S>(tile, tiles_x, width, height, ft, gid, slot, toff[tile], toff[tile + 1] - toff[tile],
                                 fused[tile] != 0, bg, fT, lst, gip, gdp, gap, pg);
    }
  }
  clk.lap("composite");
  auto v_means = torch::empty({N, 3}, opts);
  auto v_quats = torch::empty({N, 4}, opts);
  auto v_scales = torch::empty({N, 3}, opts);
  auto v_opac = torch::empty({N}, opts);
  auto v_colors = torch::empty({N, 3}, opts);
  auto v_means2d = torch::empty({N, 2}, opts);
  const Camera<double> cam = make_camera<double>(viewmat, K, width, height);
  {
    const bool gm2_zero = g_means2d.numel() == 0;
    const torch::Tensor gm2 = gm2_zero ? g_means2d : g_means2d.contiguous();
    const S* gm2p = gm2_zero ? nullptr : gm2.data_ptr<S>();
    const S* pg = pair_grad_mem;
    const int32_t* goff = gauss_offsets.data_ptr<int32_t>();
    const int32_t* rad = radii.data_ptr<int32_t>();
    const S* dep = depths.data_ptr<S>();
    const S* m = means.data_ptr<S>();
    const S* q = quats.data_ptr<S>();
    const S* s = scales.data_ptr<S>();
    const S* op = opacities.data_ptr<S>();
    S* vm = v_means.data_ptr<S>();
    S* vq = v_quats.data_ptr<S>();
    S* vs = v_scales.data_ptr<S>();
    S* vo = v_opac.data_ptr<S>();
    S* vc = v_colors.data_ptr<S>();
    S* vm2 = v_means2d.data_ptr<S>();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 2048) if (N >= PARALLEL_MIN)
    for (int64_t i = 0; i < N; ++i) {
      double acc[PAIR_G] = {0};
      bool any = false;
      for (int32_t j = goff[i]; j < goff[i + 1]; ++j) {
        const S* r = pg + static_cast<int64_t>(j) * PAIR_G;
        for (int e = 0; e < PAIR_G; ++e) {
          acc[e] += static_cast<double>(r[e]);
          any |= r[e] != S(0);
        }
      }
      const double g0 = gm2p ? static_cast<double>(gm2p[2 * i]) : 0.0;
      const double g1 = gm2p ? static_cast<double>(gm2p[2 * i + 1]) : 0.0;
      if (!any && g0 == 0.0 && g1 == 0.0) {
        // nothing reaches this Gaussian (culled, or behind every pixel's last contributor): the
        // chain rule gives exact zeros, so skip the projection's backward
        vm2[2 * i] = vm2[2 * i + 1] = S(0);
        for (int e = 0; e < 3; ++e) vm[3 * i + e] = vs[3 * i + e] = vc[3 * i + e] = S(0);
        for (int e = 0; e < 4; ++e) vq[4 * i + e] = S(0);
        vo[i] = S(0);
        continue;
      }
      const double v_m2d[2] = {acc[0] + g0, acc[1] + g1};
      vm2[2 * i] = static_cast<S>(v_m2d[0]);
      vm2[2 * i + 1] = static_cast<S>(v_m2d[1]);
      vc[3 * i] = static_cast<S>(acc[6]);
      vc[3 * i + 1] = static_cast<S>(acc[7]);
      vc[3 * i + 2] = static_cast<S>(acc[8]);
      double md[3] = {m[3 * i], m[3 * i + 1], m[3 * i + 2]};
      double qd[4] = {q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]};
      double sd[3] = {s[3 * i], s[3 * i + 1], s[3 * i + 2]};
      double o_vm[3], o_vq[4], o_vs[3], o_vo;
      const bool in_front = dep[i] > static_cast<S>(NEAR_PLANE);
      project_backward_one(cam, md, qd, sd, static_cast<double>(op[i]), kernel_size, compensate, in_front,
                           rad[i] > 0, v_m2d, acc + 2, acc[5], acc[9], o_vm, o_vq, o_vs, &o_vo);
      for (int e = 0; e < 3; ++e) vm[3 * i + e] = static_cast<S>(o_vm[e]);
      for (int e = 0; e < 4; ++e) vq[4 * i + e] = static_cast<S>(o_vq[e]);
      for (int e = 0; e < 3; ++e) vs[3 * i + e] = static_cast<S>(o_vs[e]);
      vo[i] = static_cast<S>(o_vo);
    }
  }
  clk.lap("per-gaussian");
  // dL/d(background) = sum over pixels of dL/dC * T_final
  auto v_bg = (gi * final_T.unsqueeze(0)).sum({1, 2});
  return {v_means, v_quats, v_scales, v_opac, v_colors, v_means2d, v_bg};
}

std::vector<torch::Tensor> forward(const torch::Tensor& means, const torch::Tensor& quats,
                                   const torch::Tensor& scales, const torch::Tensor& opacities,
                                   const torch::Tensor& colors, const torch::Tensor& viewmat,
                                   const torch::Tensor& K, int64_t width, int64_t height,
                                   const torch::Tensor& background, double kernel_size,
                                   const torch::Tensor& means2d_offset, int64_t ref_chunk_elements,
                                   int64_t nthreads, bool compensate, bool return_feat) {
  check_inputs(means, quats, scales, opacities, colors, means2d_offset, background);
  TORCH_CHECK(width > 0 && height > 0, "width and height must be positive");
  const int nt = static_cast<int>(std::max<int64_t>(1, nthreads));
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "threedsr_cpu_rasterizer.forward", [&] {
    out = forward_impl<scalar_t>(means, quats, scales, opacities, colors, viewmat, K, static_cast<int>(width),
                                 static_cast<int>(height), background, kernel_size, compensate, means2d_offset,
                                 ref_chunk_elements, nt, return_feat);
  });
  return out;
}

std::vector<torch::Tensor> backward(
    const torch::Tensor& means, const torch::Tensor& quats, const torch::Tensor& scales,
    const torch::Tensor& opacities, const torch::Tensor& colors, const torch::Tensor& viewmat,
    const torch::Tensor& K, int64_t width, int64_t height, const torch::Tensor& background, double kernel_size,
    const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& opac_c,
    const torch::Tensor& depths, const torch::Tensor& radii, const torch::Tensor& final_T,
    const torch::Tensor& last, const torch::Tensor& gids, const torch::Tensor& tile_offsets,
    const torch::Tensor& gauss_offsets, const torch::Tensor& gauss_pairs, const torch::Tensor& g_image,
    const torch::Tensor& g_depth, const torch::Tensor& g_alpha, const torch::Tensor& g_means2d,
    int64_t ref_chunk_elements, int64_t nthreads, bool compensate, const c10::optional<torch::Tensor>& feat) {
  const int nt = static_cast<int>(std::max<int64_t>(1, nthreads));
  const auto st = means.scalar_type();
  for (const auto* t : {&g_image, &g_depth, &g_alpha, &g_means2d})
    TORCH_CHECK(t->scalar_type() == st, "gradients must have the inputs' dtype");
  TORCH_CHECK(g_image.numel() == 3 * width * height, "g_image must be [3, H, W]");
  TORCH_CHECK(g_depth.numel() == 0 || g_depth.numel() == width * height, "g_depth must be [1, H, W] or empty");
  TORCH_CHECK(g_alpha.numel() == 0 || g_alpha.numel() == width * height, "g_alpha must be [1, H, W] or empty");
  TORCH_CHECK(g_means2d.numel() == 0 || g_means2d.numel() == means.size(0) * 2, "g_means2d must be [N, 2] or empty");
  const torch::Tensor* saved_feat = nullptr;
  if (feat.has_value() && feat->defined()) {
    TORCH_CHECK(feat->scalar_type() == st && feat->is_contiguous() && feat->dim() == 2 &&
                    feat->size(0) == means.size(0) && feat->size(1) == FEAT,
                "feat must be the forward's packed records");
    saved_feat = &feat.value();
  }
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(st, "threedsr_cpu_rasterizer.backward", [&] {
    out = backward_impl<scalar_t>(means, quats, scales, opacities, colors, viewmat, K, static_cast<int>(width),
                                  static_cast<int>(height), background, kernel_size, means2d, conics, opac_c,
                                  depths, radii, final_T, last, gids, tile_offsets, gauss_offsets, gauss_pairs,
                                  g_image, g_depth, g_alpha, g_means2d, ref_chunk_elements, nt, compensate,
                                  saved_feat);
  });
  return out;
}

std::string build_info() {
  std::string s = "C++ " + std::to_string(__cplusplus) + ", OpenMP " + std::to_string(_OPENMP);
#ifdef __AVX512F__
  s += ", AVX-512";
#elif defined(__AVX2__)
  s += ", AVX2";
#else
  s += ", baseline SIMD";
#endif
#ifdef __FMA__
  s += "+FMA";
#endif
  return s;
}

void register_preprocess(pybind11::module& m);  // preprocess.cpp
}  // namespace tdsr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "3dsr CPU Gaussian rasterizer (forward/backward); see gaussian_renderer/cpu_backend.py";
  namespace py = pybind11;
  // The 2D filter is (kernel_size, compensate): compensate=false is Inria 3DGS's dilation (no opacity
  // compensation). It comes last with a default, so callers written before it still work.
  m.def("forward", &tdsr::forward,
        "Project, bin and composite. Returns image, depth, alpha, radii, means2d and the state "
        "backward needs (conics, opacities, depths, final_T, last, gids, tile_offsets, "
        "gauss_offsets, gauss_pairs).",
        py::arg("means"), py::arg("quats"), py::arg("scales"), py::arg("opacities"), py::arg("colors"),
        py::arg("viewmat"), py::arg("K"), py::arg("width"), py::arg("height"), py::arg("background"),
        py::arg("kernel_size"), py::arg("means2d_offset"), py::arg("ref_chunk_elements"), py::arg("nthreads"),
        py::arg("compensate") = true, py::arg("return_feat") = false);
  m.def("backward", &tdsr::backward, "Gradients for means, quats, scales, opacities, colors, means2d, background.",
        py::arg("means"), py::arg("quats"), py::arg("scales"), py::arg("opacities"), py::arg("colors"),
        py::arg("viewmat"), py::arg("K"), py::arg("width"), py::arg("height"), py::arg("background"),
        py::arg("kernel_size"), py::arg("means2d"), py::arg("conics"), py::arg("opac_c"), py::arg("depths"),
        py::arg("radii"), py::arg("final_T"), py::arg("last"), py::arg("gids"), py::arg("tile_offsets"),
        py::arg("gauss_offsets"), py::arg("gauss_pairs"), py::arg("g_image"), py::arg("g_depth"),
        py::arg("g_alpha"), py::arg("g_means2d"), py::arg("ref_chunk_elements"), py::arg("nthreads"),
        py::arg("compensate") = true, py::arg("feat") = py::none());
  // Bumped when the Python-visible signature changes; gaussian_renderer/cpu_backend.py checks it.
  // 3: forward(return_feat=True) appends the packed per-Gaussian records, backward(feat=...) reuses
  // them; empty g_depth / g_alpha / g_means2d stand for zeros; means2d_offset may be row-strided.
  m.attr("API_VERSION") = 3;
  tdsr::register_preprocess(m);  // SH colours and activations (gaussian_renderer/cpu_backend.py)
  m.def("build_info", &tdsr::build_info, "Compiler features the extension was built with.");
  m.attr("TILE") = tdsr::TILE;
}
