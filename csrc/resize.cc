/* Separable antialiased bilinear resampling (see resize.h). */
#include "resize.h"

#include <algorithm>
#include <cmath>

namespace flowers {
namespace {

// Filter taps for one axis: for output i, source pixels start[i] .. start[i]+count[i]-1 with
// weights[i*taps ..]. Returns the tap stride.
int compute_taps(int in_size, double box_start, double box_extent, int out_size, bool mirror,
                 std::vector<int>* start, std::vector<int>* count, std::vector<float>* weights) {
  const double scale = box_extent / out_size;
  const double filter_scale = std::max(scale, 1.0);  // widen the triangle when shrinking
  const double support = filter_scale;               // triangle radius 1, scaled
  const int taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  start->assign(out_size, 0);
  count->assign(out_size, 0);
  weights->assign(static_cast<size_t>(out_size) * taps, 0.0f);
  for (int i = 0; i < out_size; ++i) {
    const double center = box_start + (i + 0.5) * scale;
    int first = static_cast<int>(std::floor(center - support + 0.5));
    int last = static_cast<int>(std::floor(center + support + 0.5));  // exclusive
    first = std::clamp(first, 0, in_size - 1);
    last = std::clamp(last, first + 1, in_size);
    last = std::min(last, first + taps);
    const int slot = mirror ? out_size - 1 - i : i;
    float* w = weights->data() + static_cast<size_t>(slot) * taps;
    double total = 0.0;
    for (int k = 0; k < last - first; ++k) {
      // Distance from the output pixel centre to source pixel centre (first + k + 0.5).
      const double distance = std::fabs((first + k + 0.5 - center) / filter_scale);
      const double value = std::max(0.0, 1.0 - distance);
      w[k] = static_cast<float>(value);
      total += value;
    }
    if (total > 0.0) {
      for (int k = 0; k < last - first; ++k) w[k] = static_cast<float>(w[k] / total);
    } else {
      // Box narrower than a pixel and between centres: take the nearest pixel.
      const int nearest = std::clamp(static_cast<int>(std::floor(center)), 0, in_size - 1);
      first = nearest;
      last = nearest + 1;
      w[0] = 1.0f;
    }
    (*start)[slot] = first;
    (*count)[slot] = last - first;
  }
  return taps;
}

inline uint8_t to_uint8(float value) {
  const float rounded = value + 0.5f;
  return static_cast<uint8_t>(rounded <= 0.0f ? 0 : (rounded >= 255.0f ? 255 : rounded));
}

}  // namespace

void resize_rgb(const uint8_t* src, int src_width, int src_height, const CropBox& box,
                int out_width, int out_height, bool flip, Layout layout, uint8_t* out,
                ResizeScratch* scratch) {
  const int x_taps = compute_taps(src_width, box.x, box.width, out_width, flip, &scratch->x_start,
                                  &scratch->x_count, &scratch->x_weights);
  const int y_taps = compute_taps(src_height, box.y, box.height, out_height, false,
                                  &scratch->y_start, &scratch->y_count, &scratch->y_weights);
  // Only the source rows some output row reads are resampled horizontally.
  const int row_first = scratch->y_start.front();
  int row_end = row_first;
  for (int i = 0; i < out_height; ++i)
    row_end = std::max(row_end, scratch->y_start[i] + scratch->y_count[i]);
  const int row_stride = out_width * 3;
  scratch->rows.resize(static_cast<size_t>(row_end - row_first) * row_stride);

  for (int r = row_first; r < row_end; ++r) {
    const uint8_t* in = src + static_cast<size_t>(r) * src_width * 3;
    float* dst = scratch->rows.data() + static_cast<size_t>(r - row_first) * row_stride;
    for (int x = 0; x < out_width; ++x) {
      const float* w = scratch->x_weights.data() + static_cast<size_t>(x) * x_taps;
      const uint8_t* p = in + scratch->x_start[x] * 3;
      float red = 0.f, green = 0.f, blue = 0.f;
      for (int k = 0; k < scratch->x_count[x]; ++k) {
        red += w[k] * p[3 * k];
        green += w[k] * p[3 * k + 1];
        blue += w[k] * p[3 * k + 2];
      }
      dst[3 * x] = red;
      dst[3 * x + 1] = green;
      dst[3 * x + 2] = blue;
    }
  }

  const size_t plane = static_cast<size_t>(out_width) * out_height;
  for (int y = 0; y < out_height; ++y) {
    const float* w = scratch->y_weights.data() + static_cast<size_t>(y) * y_taps;
    const float* first_row =
        scratch->rows.data() + static_cast<size_t>(scratch->y_start[y] - row_first) * row_stride;
    const int count = scratch->y_count[y];
    for (int x = 0; x < out_width; ++x) {
      float red = 0.f, green = 0.f, blue = 0.f;
      for (int k = 0; k < count; ++k) {
        const float* p = first_row + static_cast<size_t>(k) * row_stride + 3 * x;
        red += w[k] * p[0];
        green += w[k] * p[1];
        blue += w[k] * p[2];
      }
      if (layout == Layout::kHWC) {
        uint8_t* o = out + (static_cast<size_t>(y) * out_width + x) * 3;
        o[0] = to_uint8(red);
        o[1] = to_uint8(green);
        o[2] = to_uint8(blue);
      } else {
        const size_t at = static_cast<size_t>(y) * out_width + x;
        out[at] = to_uint8(red);
        out[plane + at] = to_uint8(green);
        out[2 * plane + at] = to_uint8(blue);
      }
    }
  }
}

}  // namespace flowers
