/* Separable antialiased bilinear resampling (see resize.h). */
#include "resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace flowers {
namespace {

// GCC/Clang vector extension: SSE on x86-64, NEON on ARM, plain code elsewhere.
typedef float Float4 __attribute__((vector_size(16)));

// Filter taps for one axis: output i reads source pixels start[i] .. start[i] + taps - 1 with
// weights[i * taps ..]; every output has the same tap count (zero weights pad the short ones),
// so the inner loops have a fixed trip count. Returns taps.
int compute_taps(int in_size, double box_start, double box_extent, int out_size, bool mirror,
                 std::vector<int>* start, std::vector<float>* weights) {
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
  weights->assign(static_cast<size_t>(out_size) * taps, 0.0f);
  for (int i = 0; i < out_size; ++i) {
    const double center = box_start + (i + 0.5) * scale;
    const int slot = mirror ? out_size - 1 - i : i;
    const int origin = std::min(first[i], in_size - taps);  // keep start + taps inside
    float* w = weights->data() + static_cast<size_t>(slot) * taps;
    double total = 0.0;
    for (int source = first[i]; source < last[i]; ++source) {
      // Distance from the output pixel centre to the source pixel centre.
      const double distance = std::fabs((source + 0.5 - center) / filter_scale);
      const double value = std::max(0.0, 1.0 - distance);
      w[source - origin] = static_cast<float>(value);
      total += value;
    }
    if (total > 0.0) {
      for (int k = 0; k < taps; ++k) w[k] = static_cast<float>(w[k] / total);
    } else {
      // Box narrower than a pixel and between centres: take the nearest pixel.
      const int nearest = std::clamp(static_cast<int>(std::floor(center)), 0, in_size - 1);
      w[nearest - origin] = 1.0f;
    }
    (*start)[slot] = origin;
  }
  return taps;
}

// Sum of `taps` weighted pixels (3 floats each, loaded as 4). A compile-time tap count lets the
// compiler unroll the loop for the common cases.
template <int kTaps>
__attribute__((always_inline)) inline Float4 weighted_pixels(const float* pixel,
                                                             const float* weights, int taps) {
  Float4 total = {0.f, 0.f, 0.f, 0.f};
  const int count = kTaps > 0 ? kTaps : taps;
  for (int k = 0; k < count; ++k) {
    Float4 value;
    std::memcpy(&value, pixel + 3 * k, sizeof(value));
    total += weights[k] * value;
  }
  return total;
}

// One output row, as floats: pixel x lands at row[3x .. 3x+2]. Each pixel is stored as 4 floats
// and the next one overwrites the 4th, so `row` needs one float of slack.
template <int kTaps>
__attribute__((always_inline)) inline void horizontal_row(const float* sums, int column_first,
                                                          const ResizeScratch& scratch, int taps,
                                                          int out_width, float* row) {
  for (int x = 0; x < out_width; ++x) {
    const float* pixel = sums + (scratch.x_start[x] - column_first) * 3;
    const Float4 value = weighted_pixels<kTaps>(
        pixel, scratch.x_weights.data() + static_cast<size_t>(x) * taps, taps);
    std::memcpy(row + 3 * x, &value, sizeof(value));
  }
}

// Rounds a float row to uint8, interleaved (HWC) or into three planes (CHW). The weights are
// non-negative and sum to one, so every value is a convex combination of uint8 inputs and lies
// in [0, 255] up to float rounding: no clamping needed.
__attribute__((always_inline)) inline void store_row(const float* row, int out_width,
                                                     Layout layout, size_t plane, uint8_t* out) {
  if (layout == Layout::kHWC) {
    for (int i = 0; i < out_width * 3; ++i) out[i] = static_cast<uint8_t>(static_cast<int>(row[i] + 0.5f));
  } else {
    for (int c = 0; c < 3; ++c) {
      for (int x = 0; x < out_width; ++x)
        out[c * plane + x] = static_cast<uint8_t>(static_cast<int>(row[3 * x + c] + 0.5f));
    }
  }
}

}  // namespace

// Compiled twice, for AVX2 and for baseline x86-64, and picked when the library loads: the
// vertical pass converts and sums twice as many values per instruction with AVX2.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
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
  // +4: the horizontal pass loads 4 floats for a 3-float pixel and may read one past the end.
  scratch->column_sums.assign(static_cast<size_t>(values) + 4, 0.0f);
  float* sums = scratch->column_sums.data();
  scratch->out_row.resize(static_cast<size_t>(out_width) * 3 + 1);
  float* resampled = scratch->out_row.data();
  const size_t plane = static_cast<size_t>(out_width) * out_height;

  for (int y = 0; y < out_height; ++y) {
    // Vertical pass first: a plain weighted sum of whole rows, which the compiler vectorises
    // (a horizontal-first pass would gather 3-byte pixels at irregular offsets on every row).
    const float* wy = scratch->y_weights.data() + static_cast<size_t>(y) * y_taps;
    const uint8_t* row = src + scratch->y_start[y] * src_stride + column_first * 3;
    for (int i = 0; i < values; ++i) sums[i] = wy[0] * row[i];
    for (int k = 1; k < y_taps; ++k) {
      row += src_stride;
      const float weight = wy[k];
      for (int i = 0; i < values; ++i) sums[i] += weight * row[i];
    }
    // Horizontal pass: each RGB pixel as one 4-float vector (the 4th lane is ignored).
    switch (x_taps) {
      case 2: horizontal_row<2>(sums, column_first, *scratch, x_taps, out_width, resampled); break;
      case 3: horizontal_row<3>(sums, column_first, *scratch, x_taps, out_width, resampled); break;
      case 4: horizontal_row<4>(sums, column_first, *scratch, x_taps, out_width, resampled); break;
      default: horizontal_row<0>(sums, column_first, *scratch, x_taps, out_width, resampled);
    }
    store_row(resampled, out_width, layout, plane,
              layout == Layout::kHWC ? out + static_cast<size_t>(y) * out_width * 3
                                     : out + static_cast<size_t>(y) * out_width);
  }
}

}  // namespace flowers
