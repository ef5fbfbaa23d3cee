/* Crop sampling (see augment.h). */
#include "augment.h"

#include <algorithm>
#include <cmath>

namespace flowers {

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  SplitMix64 mixer(a);
  uint64_t h = mixer.next();
  for (uint64_t word : {b, c, d}) {
    SplitMix64 step(h ^ word);
    h = step.next();
  }
  return h;
}

CropBox random_resized_crop(int width, int height, const CropOptions& options, SplitMix64* rng) {
  const double area = static_cast<double>(width) * height;
  const double log_min = std::log(options.aspect_min), log_max = std::log(options.aspect_max);
  for (int attempt = 0; attempt < options.max_attempts; ++attempt) {
    const double target_area =
        area * (options.area_min + (options.area_max - options.area_min) * rng->uniform());
    const double aspect = std::exp(log_min + (log_max - log_min) * rng->uniform());
    const int w = static_cast<int>(std::lround(std::sqrt(target_area * aspect)));
    const int h = static_cast<int>(std::lround(std::sqrt(target_area / aspect)));
    if (w > 0 && h > 0 && w <= width && h <= height) {
      const int x = static_cast<int>(rng->below(static_cast<uint64_t>(width - w) + 1));
      const int y = static_cast<int>(rng->below(static_cast<uint64_t>(height - h) + 1));
      return CropBox{double(x), double(y), double(w), double(h)};
    }
  }
  // Fallback: the whole image, trimmed to the nearest allowed aspect ratio, centred.
  const double ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (ratio < options.aspect_min) {
    h = std::max(1, static_cast<int>(std::lround(width / options.aspect_min)));
  } else if (ratio > options.aspect_max) {
    w = std::max(1, static_cast<int>(std::lround(height * options.aspect_max)));
  }
  w = std::min(w, width);
  h = std::min(h, height);
  return CropBox{double((width - w) / 2), double((height - h) / 2), double(w), double(h)};
}

CropBox center_crop(int width, int height, int image_size, double resize_size) {
  const double scale = resize_size / std::min(width, height);  // output pixels per source pixel
  const double side_x = std::min(image_size / scale, static_cast<double>(width));
  const double side_y = std::min(image_size / scale, static_cast<double>(height));
  return CropBox{(width - side_x) / 2, (height - side_y) / 2, side_x, side_y};
}

}  // namespace flowers
