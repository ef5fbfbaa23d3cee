/* Separable antialiased bilinear resampling (see resize.h), in fixed point.
 *
 * Weights are integers in units of 2^-14 and each output's weights sum to exactly 2^14. The
 * vertical pass sums uint8 source rows into int16 values at 2^-7 grey levels; the horizontal
 * pass sums those into int32 and rounds to uint8. Every sum is exact integer arithmetic, so the
 * AVX2 path and the portable path give the same bytes, on any CPU. Against the same filter in
 * floating point the output differs by at most one grey level (rounding near .5 only).
 */
#include "resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FLOWERS_RESIZE_AVX2 1
#endif

namespace flowers {
namespace {

constexpr int kWeightBits = 14;                             // weight units: 2^-14
constexpr int kMidBits = 7;                                 // vertical sums: 2^-7 grey levels
constexpr int kVerticalShift = kWeightBits - kMidBits;      // uint8 * weight -> mid
constexpr int kHorizontalShift = kWeightBits + kMidBits;    // mid * weight -> uint8
constexpr int32_t kVerticalRound = 1 << (kVerticalShift - 1);
constexpr int32_t kHorizontalRound = 1 << (kHorizontalShift - 1);
// 255 * 2^14 + round, shifted by 7: 32640 fits int16; 32640 * 2^14 + round fits int32.

// Filter taps for one axis: output i reads source pixels start[i] .. start[i] + taps - 1 with
// weights[i * taps ..], which sum to 1 << kWeightBits; every output has the same tap count
// (zero weights pad the short ones). Returns taps.
int compute_taps(int in_size, double box_start, double box_extent, int out_size, bool mirror,
                 std::vector<int>* start, std::vector<int16_t>* weights) {
  const double scale = box_extent / out_size;
  const double filter_scale = std::max(scale, 1.0);  // widen the triangle when shrinking
  const double support = filter_scale;               // triangle radius 1, scaled
  std::vector<int> first(out_size), last(out_size);
  int taps = 1;
  for (int i = 0; i < out_size; ++i) {
    const double center = box_start + (i + 0.5) * scale;
    first[i] = std::clamp(static_cast<int>(std::floor(center - support + 0.5)), 0, in_size - 1);
    last[i] = std::clamp(static_cast<int>(std::floor(center + support + 0.5)), first[i] + 1,
                         in_size);  // exclusive
    taps = std::max(taps, last[i] - first[i]);
  }
  taps = std::min(taps, in_size);
  start->assign(out_size, 0);
  weights->assign(static_cast<size_t>(out_size) * taps, 0);
  std::vector<double> exact(taps);
  for (int i = 0; i < out_size; ++i) {
    const double center = box_start + (i + 0.5) * scale;
    const int slot = mirror ? out_size - 1 - i : i;
    const int origin = std::min(first[i], in_size - taps);  // keep start + taps inside
    std::fill(exact.begin(), exact.end(), 0.0);
    double total = 0.0;
    for (int source = first[i]; source < last[i]; ++source) {
      // Distance from the output pixel centre to the source pixel centre.
      const double distance = std::fabs((source + 0.5 - center) / filter_scale);
      const double value = std::max(0.0, 1.0 - distance);
      exact[source - origin] = value;
      total += value;
    }
    if (total <= 0.0) {
      // Box narrower than a pixel and between centres: take the nearest pixel.
      const int nearest = std::clamp(static_cast<int>(std::floor(center)), 0, in_size - 1);
      exact[nearest - origin] = total = 1.0;
    }
    // Rounded to integers; the rounding's remainder goes to the largest weight, so the sum is
    // exactly 1 << kWeightBits and a flat image stays flat.
    int16_t* w = weights->data() + static_cast<size_t>(slot) * taps;
    int sum = 0, largest = 0;
    for (int k = 0; k < taps; ++k) {
      w[k] = static_cast<int16_t>(std::lround(exact[k] / total * (1 << kWeightBits)));
      sum += w[k];
      if (w[k] > w[largest]) largest = k;
    }
    w[largest] = static_cast<int16_t>(w[largest] + ((1 << kWeightBits) - sum));
    (*start)[slot] = origin;
  }
  return taps;
}

// mid[i] = round(sum_k weights[k] * rows[k][i]) in 2^-7 grey levels, for i in [begin, end).
void vertical_portable(const uint8_t* row, size_t stride, const int16_t* weights, int taps,
                       int begin, int end, int16_t* mid) {
  for (int i = begin; i < end; ++i) {
    int32_t total = kVerticalRound;
    for (int k = 0; k < taps; ++k) total += weights[k] * row[k * stride + i];
    mid[i] = static_cast<int16_t>(total >> kVerticalShift);
  }
}

// Output pixel x = round(sum_k weights[x][k] * mid[start[x] + k]) per channel, into
// out[3x .. 3x+2].
void horizontal_portable(const int16_t* mid, const int* start, const int16_t* weights, int taps,
                         int begin, int end, uint8_t* out) {
  for (int x = begin; x < end; ++x) {
    const int16_t* pixel = mid + start[x] * 3;
    const int16_t* w = weights + static_cast<size_t>(x) * taps;
    for (int c = 0; c < 3; ++c) {
      int32_t total = kHorizontalRound;
      for (int k = 0; k < taps; ++k) total += w[k] * pixel[3 * k + c];
      out[3 * x + c] = static_cast<uint8_t>(total >> kHorizontalShift);
    }
  }
}

#ifdef FLOWERS_RESIZE_AVX2
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// 16 values at a time, taps in pairs: (row_k[i], row_k+1[i]) interleaved as int16 pairs and
// multiplied-and-added with (w_k, w_k+1) by one vpmaddwd. Unpack and pack both work within each
// 128-bit lane, so packing the two halves back restores the order. The tail is portable.
__attribute__((target("avx2"))) void vertical_avx2(const uint8_t* row, size_t stride,
                                                   const int16_t* weights, int taps, int values,
                                                   int16_t* mid) {
  const __m256i round = _mm256_set1_epi32(kVerticalRound);
  int i = 0;
  for (; i + 16 <= values; i += 16) {
    __m256i low = round, high = round;
    for (int k = 0; k < taps; k += 2) {
      const __m256i a = _mm256_cvtepu8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * stride + i)));
      const bool pair = k + 1 < taps;
      const __m256i b = pair ? _mm256_cvtepu8_epi16(_mm_loadu_si128(
                                   reinterpret_cast<const __m128i*>(row + (k + 1) * stride + i)))
                             : _mm256_setzero_si256();
      const uint32_t w0 = static_cast<uint16_t>(weights[k]);
      const uint32_t w1 = pair ? static_cast<uint16_t>(weights[k + 1]) : 0u;
      const __m256i w = _mm256_set1_epi32(static_cast<int>(w0 | (w1 << 16)));
      low = _mm256_add_epi32(low, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), w));
      high = _mm256_add_epi32(high, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), w));
    }
    const __m256i packed = _mm256_packs_epi32(_mm256_srai_epi32(low, kVerticalShift),
                                              _mm256_srai_epi32(high, kVerticalShift));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(mid + i), packed);
  }
  vertical_portable(row, stride, weights, taps, i, values, mid);
}

// Two output pixels per register, one per 128-bit lane. For each pair of taps, 8 int16 loaded
// at the pair's first source pixel (its R G B, the next pixel's R G B, 2 more) are shuffled to
// (R0 R1 G0 G1 B0 B1 0 0) and multiplied-and-added with (w0 w1 w0 w1 w0 w1 0 0): R G B 0 as
// int32. `pairs` holds those weight vectors, 16 int16 per pixel pair and tap pair. A compile-time
// tap-pair count (0: any) unrolls the common cases.
template <int kPairs>
__attribute__((target("avx2"), always_inline)) inline __m256i two_pixels(
    const int16_t* mid, const int* start, const int16_t* pairs, int tap_pairs, int x) {
  const __m256i shuffle = _mm256_setr_epi8(0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11, -1, -1, -1, -1,
                                           0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11, -1, -1, -1, -1);
  const int16_t* left = mid + start[x] * 3;
  const int16_t* right = mid + start[x + 1] * 3;
  const int count = kPairs > 0 ? kPairs : tap_pairs;
  const int16_t* w = pairs + static_cast<size_t>(x / 2) * count * 16;
  __m256i total = _mm256_set1_epi32(kHorizontalRound);
  for (int j = 0; j < count; ++j) {
    const __m256i pixels = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(left + 6 * j))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(right + 6 * j)), 1);
    const __m256i weights = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16 * j));
    total = _mm256_add_epi32(total,
                             _mm256_madd_epi16(_mm256_shuffle_epi8(pixels, shuffle), weights));
  }
  return _mm256_srai_epi32(total, kHorizontalShift);
}

// Four output pixels per step: two registers of two, packed to bytes (R G B 0 per pixel, in the
// order 0 2 | 1 3 that in-lane packing leaves), put in order and squeezed to 12 bytes, stored
// as 16 (`out` needs 4 bytes of slack; the next step overwrites them). mid needs 8 int16
// readable past the last value a tap reads (the zero-weight partner of an odd tap count, and
// the load's width). Returns the pixels done (a multiple of 4).
template <int kPairs>
__attribute__((target("avx2"))) int horizontal_avx2(const int16_t* mid, const int* start,
                                                    const int16_t* pairs, int tap_pairs,
                                                    int out_width, uint8_t* out) {
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m128i squeeze = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
  const int done = out_width & ~3;
  for (int x = 0; x < done; x += 4) {
    const __m256i first = two_pixels<kPairs>(mid, start, pairs, tap_pairs, x);
    const __m256i second = two_pixels<kPairs>(mid, start, pairs, tap_pairs, x + 2);
    const __m256i words = _mm256_packs_epi32(first, second);  // 0 2 | 1 3, int16
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words, words), order);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 3 * x),
                     _mm_shuffle_epi8(_mm256_castsi256_si128(bytes), squeeze));
  }
  return done;
}

// The horizontal weights rearranged for horizontal_avx2: per pixel pair, per tap pair, pixel
// x's (w0 w1 w0 w1 w0 w1 0 0) then pixel x+1's.
void pair_weights(const std::vector<int16_t>& weights, int taps, int out_width,
                  std::vector<int16_t>* pairs) {
  const int tap_pairs = (taps + 1) / 2;
  pairs->assign(static_cast<size_t>(out_width / 2) * tap_pairs * 16, 0);
  for (int x = 0; x + 1 < out_width; x += 2) {
    for (int half = 0; half < 2; ++half) {
      const int16_t* w = weights.data() + static_cast<size_t>(x + half) * taps;
      for (int j = 0; j < tap_pairs; ++j) {
        int16_t* slot = pairs->data() + (static_cast<size_t>(x / 2) * tap_pairs + j) * 16 + 8 * half;
        const int16_t w0 = w[2 * j];
        const int16_t w1 = 2 * j + 1 < taps ? w[2 * j + 1] : 0;
        for (int c = 0; c < 3; ++c) {
          slot[2 * c] = w0;
          slot[2 * c + 1] = w1;
        }
      }
    }
  }
}
#endif

}  // namespace

void resize_rgb(const uint8_t* src, int src_width, int src_height, size_t src_stride,
                const CropBox& box,
                int out_width, int out_height, bool flip, Layout layout, uint8_t* out,
                ResizeScratch* scratch) {
  const int x_taps =
      compute_taps(src_width, box.x, box.width, out_width, flip, &scratch->x_start, &scratch->x_weights);
  const int y_taps = compute_taps(src_height, box.y, box.height, out_height, false,
                                  &scratch->y_start, &scratch->y_weights);
  // Only the source columns some output pixel reads take part in the vertical pass.
  const auto [first_it, last_it] =
      std::minmax_element(scratch->x_start.begin(), scratch->x_start.end());
  const int column_first = *first_it;
  const int values = (*last_it + x_taps - column_first) * 3;
  // +8: horizontal_avx2 loads 8 int16 at its last tap pair's first pixel.
  scratch->mid.assign(static_cast<size_t>(values) + 8, 0);
  int16_t* mid = scratch->mid.data();
  scratch->out_row.resize(static_cast<size_t>(out_width) * 3 + 4);  // horizontal_avx2's slack
  uint8_t* resampled = scratch->out_row.data();
  // Starts relative to the first column the vertical pass keeps.
  scratch->x_relative.resize(out_width);
  for (int x = 0; x < out_width; ++x) scratch->x_relative[x] = scratch->x_start[x] - column_first;
  const int* x_start = scratch->x_relative.data();
  const size_t plane = static_cast<size_t>(out_width) * out_height;

#ifdef FLOWERS_RESIZE_AVX2
  const bool avx2 = scratch->simd && cpu_has_avx2();
  if (avx2) pair_weights(scratch->x_weights, x_taps, out_width, &scratch->x_pairs);
#endif
  for (int y = 0; y < out_height; ++y) {
    // Vertical pass first: a weighted sum of whole rows, contiguous bytes (a horizontal-first
    // pass would gather 3-byte pixels at irregular offsets on every row).
    const int16_t* wy = scratch->y_weights.data() + static_cast<size_t>(y) * y_taps;
    const uint8_t* row = src + scratch->y_start[y] * src_stride + column_first * 3;
#ifdef FLOWERS_RESIZE_AVX2
    if (avx2) {
      vertical_avx2(row, src_stride, wy, y_taps, values, mid);
      const int16_t* pairs = scratch->x_pairs.data();
      const int tap_pairs = (x_taps + 1) / 2;
      int done;
      switch (tap_pairs) {
        case 1: done = horizontal_avx2<1>(mid, x_start, pairs, 1, out_width, resampled); break;
        case 2: done = horizontal_avx2<2>(mid, x_start, pairs, 2, out_width, resampled); break;
        case 3: done = horizontal_avx2<3>(mid, x_start, pairs, 3, out_width, resampled); break;
        default: done = horizontal_avx2<0>(mid, x_start, pairs, tap_pairs, out_width, resampled);
      }
      horizontal_portable(mid, x_start, scratch->x_weights.data(), x_taps, done, out_width,
                          resampled);
    } else
#endif
    {
      vertical_portable(row, src_stride, wy, y_taps, 0, values, mid);
      horizontal_portable(mid, x_start, scratch->x_weights.data(), x_taps, 0, out_width,
                          resampled);
    }
    if (layout == Layout::kHWC) {
      std::memcpy(out + static_cast<size_t>(y) * out_width * 3, resampled,
                  static_cast<size_t>(out_width) * 3);
    } else {
      uint8_t* target = out + static_cast<size_t>(y) * out_width;
      for (int c = 0; c < 3; ++c) {
        for (int x = 0; x < out_width; ++x) target[c * plane + x] = resampled[3 * x + c];
      }
    }
  }
}

}  // namespace flowers
