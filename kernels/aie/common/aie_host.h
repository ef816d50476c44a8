// A host implementation of the part of AMD's aie_api (AIE-ML, `aie2`) that the vectorised kernels
// of kernels/aie use, so that the same kernel source builds with g++ here and with Peano (and the
// real aie_api) for the NPU. The real headers refuse to build for the host, and no open AIE2
// simulator exists: this header is how the kernels run here. Written for this project from the
// aie_api documentation; only the names and the documented semantics follow aie_api.
//
// What the hardware does where aie_api does not document it, and what this header assumes
// instead (kernels/CONTRACT.md repeats it; the emulator in kernels/contract.py follows it):
//   * mmul<4,8,4> bf16 x bf16 -> accfloat: each of the 16 outputs adds the exact sum of its 8
//     products to the accumulator and rounds once to fp32 (AM020 describes one aligned post-adder
//     for all products and the accumulator; its width and rounding are not documented). Here the
//     sum is exact (detail::round_sum).
//   * fp32 add and subtract (the accumulator adders) round to nearest even; so does an elementwise
//     mac/msc, which adds an exact bf16 x bf16 product to the accumulator.
//   * fp32 multiply: aie_api emulates it with bf16 products (Peano's default "safe" mode: 9
//     products, 0 ULP in UG1603's measurement); taken here to be the correctly rounded product.
//   * fp32 -> bf16 (accum::to_vector<bfloat16>) rounds by the core's rounding mode: the kernels
//     set conv_even (nearest even) on entry, as the mode after reset is floor.
//   * No subnormals (AM020): a result below FLT_MIN in magnitude becomes zero of the same sign.
//   * reduce_add of 16 floats is the halving tree x[i] += x[i + 8], then + 4, + 2, + 1 (aie_api's
//     aie2 implementation); reduce_max is exact in any order.
// The kernels use no other floating-point operation of the vector unit.
#pragma once
#include <array>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// bf16 as a storage type: 16 bits, converted only through the vector API below.
struct bfloat16 {
  uint16_t bits;
};
static_assert(sizeof(bfloat16) == 2, "bfloat16 is 16 bits");
struct accfloat {};

namespace aie {

enum class rounding_mode { floor, conv_even };

namespace detail {
inline rounding_mode& rounding() {
  static thread_local rounding_mode mode = rounding_mode::floor;   // the core's reset value
  return mode;
}

inline float flush(float x) { return std::fabs(x) < FLT_MIN ? std::copysign(0.0f, x) : x; }

// Σ t exactly, as non-overlapping partials of ascending magnitude (Shewchuk's grow-expansion:
// each addition's rounding error is kept as a partial of its own); returns their number.
inline int expand(const double* t, int n, double* partials) {
  int count = 0;
  for (int i = 0; i < n; ++i) {
    double x = t[i];
    int kept = 0;
    for (int j = 0; j < count; ++j) {
      double y = partials[j];
      if (std::fabs(x) < std::fabs(y)) std::swap(x, y);
      double hi = x + y, lo = y - (hi - x);
      if (lo != 0.0) partials[kept++] = lo;
      x = hi;
    }
    partials[kept++] = x;
    count = kept;
  }
  return count;
}

// The sign of Σ t, exactly: the sign of its largest non-zero partial.
inline int exact_sign(const double* t, int n) {
  double partials[16];
  for (int i = expand(t, n, partials) - 1; i >= 0; --i)
    if (partials[i] != 0.0) return partials[i] > 0.0 ? 1 : -1;
  return 0;
}

inline float even_of(float a, float b) {
  uint32_t u;
  std::memcpy(&u, &a, 4);
  return (u & 1) ? b : a;
}

// fl32(Σ t) of up to 15 terms exact in double, rounded to nearest even from the exact sum. The
// ordered double sum s errs by less than (n + 1) * 2^-53 * Σ|t|; only where that reaches one of the
// fp32 midpoints around s's rounding r does the exact sum's side of the midpoint decide.
inline float round_sum(const double* t, int n) {
  double s = 0.0, magnitude = 0.0;
  for (int i = 0; i < n; ++i) {
    s += t[i];
    magnitude += std::fabs(t[i]);
  }
  const float r = float(s), up = std::nextafter(r, INFINITY), down = std::nextafter(r, -INFINITY);
  const double bound = (n + 1) * 0x1p-53 * magnitude;
  const double mid_up = (double(r) + up) / 2, mid_down = (double(r) + down) / 2;   // exact
  if (mid_up - s > bound && s - mid_down > bound) return r;
  double u[16];
  std::memcpy(u, t, n * sizeof(double));
  u[n] = -mid_up;
  const int above = exact_sign(u, n + 1);
  if (above > 0) return up;
  if (above == 0) return even_of(r, up);
  u[n] = -mid_down;
  const int below = exact_sign(u, n + 1);
  if (below < 0) return down;
  if (below == 0) return even_of(r, down);
  return r;
}

inline float to_float(bfloat16 b) {
  uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return flush(f);
}

inline bfloat16 to_bf16(float f, rounding_mode mode) {
  f = flush(f);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{uint16_t((u >> 16) | 0x40)};   // NaN stays NaN
  if (mode == rounding_mode::conv_even)
    u += 0x7fffu + ((u >> 16) & 1u);
  else if (u & 0x80000000u && u & 0xffffu)                    // floor: toward -inf
    u += 0x10000u;
  return bfloat16{uint16_t(u >> 16)};      // a normal fp32 never rounds to a subnormal bf16
}
}  // namespace detail

inline void set_rounding(rounding_mode mode) { detail::rounding() = mode; }
inline rounding_mode get_rounding() { return detail::rounding(); }

template <unsigned N>
struct mask {
  std::array<bool, N> bits{};
  static mask from_uint32(uint32_t w) {
    mask m;
    for (unsigned i = 0; i < N; ++i) m.bits[i] = (w >> i) & 1u;
    return m;
  }
  bool test(unsigned i) const { return bits[i]; }
};

template <typename T, unsigned N>
struct vector {
  std::array<T, N> v{};
  using value_type = T;
  static constexpr unsigned size() { return N; }
  T get(unsigned i) const { return v[i]; }
  T operator[](unsigned i) const { return v[i]; }
  vector& set(T x, unsigned i) {
    v[i] = x;
    return *this;
  }
  template <unsigned M>
  vector<T, M> extract(unsigned part) const {   // part: index of an M-element partition
    vector<T, M> out;
    for (unsigned i = 0; i < M; ++i) out.v[i] = v[part * M + i];
    return out;
  }
  template <unsigned M>
  vector& insert(unsigned part, const vector<T, M>& sub) {
    for (unsigned i = 0; i < M; ++i) v[part * M + i] = sub.v[i];
    return *this;
  }
};

template <typename Tag, unsigned N>
struct accum {
  std::array<float, N> v{};
  accum() = default;
  explicit accum(const vector<bfloat16, N>& x) { from_vector(x); }
  explicit accum(const vector<float, N>& x) { from_vector(x); }
  accum& from_vector(const vector<bfloat16, N>& x) {      // bf16 -> fp32: exact
    for (unsigned i = 0; i < N; ++i) v[i] = detail::to_float(x.v[i]);
    return *this;
  }
  accum& from_vector(const vector<float, N>& x) {         // a reinterpretation
    for (unsigned i = 0; i < N; ++i) v[i] = x.v[i];
    return *this;
  }
  template <typename T>
  vector<T, N> to_vector() const {
    vector<T, N> out;
    for (unsigned i = 0; i < N; ++i) {
      if constexpr (std::is_same_v<T, bfloat16>)
        out.v[i] = detail::to_bf16(v[i], detail::rounding());
      else
        out.v[i] = v[i];
    }
    return out;
  }
};

template <unsigned N, typename T>
vector<T, N> load_v(const T* p) {
  vector<T, N> out;
  std::memcpy(out.v.data(), p, sizeof(T) * N);
  return out;
}

template <typename T, unsigned N>
T* store_v(T* p, const vector<T, N>& x) {
  std::memcpy(p, x.v.data(), sizeof(T) * N);
  return p + N;
}

template <typename T, unsigned N>
vector<T, N> broadcast(T x) {
  vector<T, N> out;
  out.v.fill(x);
  return out;
}

template <typename T, unsigned N>
vector<T, N> zeros() {
  return vector<T, N>{};
}

template <typename T, unsigned... Ns>
auto concat(const vector<T, Ns>&... parts) {
  constexpr unsigned total = (Ns + ...);
  vector<T, total> out;
  unsigned at = 0;
  ((std::memcpy(out.v.data() + at, parts.v.data(), sizeof(T) * Ns), at += Ns), ...);
  return out;
}

// ---- elementwise arithmetic ------------------------------------------------------------------------
template <typename T, unsigned N, typename F>
vector<T, N> map2(const vector<T, N>& a, const vector<T, N>& b, F f) {
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i) out.v[i] = f(a.v[i], b.v[i]);
  return out;
}

template <unsigned N>
vector<float, N> add(const vector<float, N>& a, const vector<float, N>& b) {
  return map2(a, b, [](float x, float y) { return detail::flush(x + y); });
}
template <unsigned N>
vector<float, N> sub(const vector<float, N>& a, const vector<float, N>& b) {
  return map2(a, b, [](float x, float y) { return detail::flush(x - y); });
}
template <unsigned N>
accum<accfloat, N> mul(const vector<float, N>& a, const vector<float, N>& b) {
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i) out.v[i] = detail::flush(a.v[i] * b.v[i]);
  return out;
}
// Elementwise bf16 x bf16 products into fp32 accumulators: the product is exact in fp32; mac and msc
// add it to (subtract it from) the accumulator with one rounding.
template <unsigned N>
accum<accfloat, N> mul(const vector<bfloat16, N>& a, const vector<bfloat16, N>& b) {
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i) out.v[i] = detail::flush(detail::to_float(a.v[i]) * detail::to_float(b.v[i]));
  return out;
}
template <unsigned N>
accum<accfloat, N> mac(const accum<accfloat, N>& acc, const vector<bfloat16, N>& a, const vector<bfloat16, N>& b) {
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = detail::flush(acc.v[i] + detail::to_float(a.v[i]) * detail::to_float(b.v[i]));
  return out;
}
template <unsigned N>
accum<accfloat, N> msc(const accum<accfloat, N>& acc, const vector<bfloat16, N>& a, const vector<bfloat16, N>& b) {
  accum<accfloat, N> out;
  for (unsigned i = 0; i < N; ++i)
    out.v[i] = detail::flush(acc.v[i] - detail::to_float(a.v[i]) * detail::to_float(b.v[i]));
  return out;
}
template <unsigned N>
vector<float, N> max(const vector<float, N>& a, const vector<float, N>& b) {
  return map2(a, b, [](float x, float y) { return x > y ? x : y; });
}
template <unsigned N>
vector<float, N> min(const vector<float, N>& a, const vector<float, N>& b) {
  return map2(a, b, [](float x, float y) { return x < y ? x : y; });
}

template <unsigned N>
vector<int32_t, N> add(const vector<int32_t, N>& a, const vector<int32_t, N>& b) {
  return map2(a, b, [](int32_t x, int32_t y) { return int32_t(uint32_t(x) + uint32_t(y)); });
}
template <unsigned N>
vector<int32_t, N> sub(const vector<int32_t, N>& a, const vector<int32_t, N>& b) {
  return map2(a, b, [](int32_t x, int32_t y) { return int32_t(uint32_t(x) - uint32_t(y)); });
}
template <unsigned N>
vector<int32_t, N> bit_and(const vector<int32_t, N>& a, const vector<int32_t, N>& b) {
  return map2(a, b, [](int32_t x, int32_t y) { return x & y; });
}
template <unsigned N>
vector<int32_t, N> bit_or(const vector<int32_t, N>& a, const vector<int32_t, N>& b) {
  return map2(a, b, [](int32_t x, int32_t y) { return x | y; });
}
template <unsigned N>
vector<int32_t, N> upshift(const vector<int32_t, N>& a, unsigned s) {
  vector<int32_t, N> out;
  for (unsigned i = 0; i < N; ++i) out.v[i] = int32_t(uint32_t(a.v[i]) << s);
  return out;
}
template <unsigned N>
vector<int32_t, N> downshift(const vector<int32_t, N>& a, unsigned s) {   // arithmetic, as for signed types
  vector<int32_t, N> out;
  for (unsigned i = 0; i < N; ++i) out.v[i] = a.v[i] >> s;
  return out;
}

template <typename U, typename T, unsigned N>
vector<U, N * sizeof(T) / sizeof(U)> vector_cast(const vector<T, N>& x) {   // bits reinterpreted
  vector<U, N * sizeof(T) / sizeof(U)> out;
  static_assert(sizeof(out.v) == sizeof(x.v), "vector_cast keeps the size");
  std::memcpy(out.v.data(), x.v.data(), sizeof(x.v));
  return out;
}

// ---- comparisons and selection ---------------------------------------------------------------------
template <typename T, unsigned N>
mask<N> lt(const vector<T, N>& a, const vector<T, N>& b) {
  mask<N> m;
  for (unsigned i = 0; i < N; ++i) m.bits[i] = a.v[i] < b.v[i];
  return m;
}
template <typename T, unsigned N>
mask<N> ge(const vector<T, N>& a, const vector<T, N>& b) {
  mask<N> m;
  for (unsigned i = 0; i < N; ++i) m.bits[i] = a.v[i] >= b.v[i];
  return m;
}
template <typename T, unsigned N>
vector<T, N> select(const vector<T, N>& a, const vector<T, N>& b, const mask<N>& m) {   // m ? b : a
  vector<T, N> out;
  for (unsigned i = 0; i < N; ++i) out.v[i] = m.bits[i] ? b.v[i] : a.v[i];
  return out;
}

// ---- reductions -------------------------------------------------------------------------------------
inline float reduce_add(const vector<float, 16>& x) {
  std::array<float, 16> s = x.v;
  for (unsigned width = 8; width >= 1; width /= 2)
    for (unsigned i = 0; i < width; ++i) s[i] = detail::flush(s[i] + s[i + width]);
  return s[0];
}
inline float reduce_max(const vector<float, 16>& x) {
  float m = x.v[0];
  for (unsigned i = 1; i < 16; ++i) m = x.v[i] > m ? x.v[i] : m;
  return m;
}

// ---- shuffles ---------------------------------------------------------------------------------------
template <typename T, unsigned N>
vector<T, N> transpose(const vector<T, N>& x, unsigned rows, unsigned cols) {   // rows x cols -> cols x rows
  vector<T, N> out;
  for (unsigned r = 0; r < rows; ++r)
    for (unsigned c = 0; c < cols; ++c) out.v[c * rows + r] = x.v[r * cols + c];
  return out;
}

// filter_even(x, step): the even-numbered groups of `step` consecutive elements, in order (half of x);
// filter_odd: the odd-numbered groups.
template <typename T, unsigned N>
vector<T, N / 2> filter_even(const vector<T, N>& x, unsigned step = 1) {
  vector<T, N / 2> out;
  for (unsigned i = 0; i < N / 2; ++i) out.v[i] = x.v[(i / step) * 2 * step + i % step];
  return out;
}
template <typename T, unsigned N>
vector<T, N / 2> filter_odd(const vector<T, N>& x, unsigned step = 1) {
  vector<T, N / 2> out;
  for (unsigned i = 0; i < N / 2; ++i) out.v[i] = x.v[(i / step) * 2 * step + step + i % step];
  return out;
}

// ---- the matrix multiply unit -----------------------------------------------------------------------
template <unsigned M, unsigned K, unsigned N, typename TA, typename TB, typename Tag>
struct mmul;

template <>
struct mmul<4, 8, 4, bfloat16, bfloat16, accfloat> {
  static constexpr unsigned size_A = 32, size_B = 32, size_C = 16;
  accum<accfloat, 16> c;
  bool zero = true;                                 // a default-constructed mmul starts from zero
  mmul() = default;
  explicit mmul(const accum<accfloat, 16>& acc) : c(acc), zero(false) {}

  void mac(const vector<bfloat16, 32>& a, const vector<bfloat16, 32>& b) {
    for (unsigned i = 0; i < 4; ++i)
      for (unsigned j = 0; j < 4; ++j) {
        double terms[9];
        terms[0] = zero ? 0.0 : double(c.v[i * 4 + j]);
        for (unsigned k = 0; k < 8; ++k)          // products of two bf16 values, exact in double
          terms[k + 1] = double(detail::to_float(a.v[i * 8 + k])) * double(detail::to_float(b.v[k * 4 + j]));
        c.v[i * 4 + j] = detail::flush(detail::round_sum(terms, 9));
      }
    zero = false;
  }
  void mul(const vector<bfloat16, 32>& a, const vector<bfloat16, 32>& b) {
    zero = true;
    mac(a, b);
  }
  accum<accfloat, 16> to_accum() const { return zero ? accum<accfloat, 16>{} : c; }
  template <typename T>
  vector<T, 16> to_vector() const {
    return to_accum().template to_vector<T>();
  }
};

}  // namespace aie
