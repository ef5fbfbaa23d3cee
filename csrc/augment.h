/* Crop sampling for training and evaluation, and the counter-based random numbers behind it.
 *
 * Random numbers come from SplitMix64 seeded by (seed, epoch, file index), never from a shared
 * generator: an image gets the same crop and flip whichever thread decodes it and in whatever
 * order, which is what makes batches identical for any thread count.
 */
#pragma once

#include <cstdint>
#include <limits>

#include "jpeg_decode.h"

namespace flowers {

// "Not set": fails every range check (every comparison with NaN is false).
inline constexpr double kUnset = std::numeric_limits<double>::quiet_NaN();

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * 0x1.0p-53; }  // [0, 1)
  // Uniform integer in [0, bound), bound > 0 (Lemire's multiply-shift; bias < 2^-32 here).
  uint64_t below(uint64_t bound) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * bound) >> 64);
  }

 private:
  uint64_t state_;
};

// Mixes several words into one seed (each step is a SplitMix64 finaliser).
uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0, uint64_t d = 0);

// The crop geometry has no default here: its one home is flowers_tl/geometry.py (shared with
// the tf.data pipeline and the SavedModel export), and the Python side always sets it. Unset
// (NaN / 0) values are refused by check_image_options(), so a caller that forgets them gets an
// error instead of a second, silently different recipe.
struct CropOptions {
  double area_min = kUnset, area_max = kUnset;      // fraction of the image area
  double aspect_min = kUnset, aspect_max = kUnset;  // width / height
  int max_attempts = 0;                             // tries before the centre-crop fallback
};

// Random-resized-crop as in the Inception / torchvision recipe: up to max_attempts tries of a
// random area fraction and log-uniform aspect ratio that fit inside the image, then a centre
// crop with the aspect ratio clamped to the range. Integer pixel box.
CropBox random_resized_crop(int width, int height, const CropOptions& options, SplitMix64* rng);

// Evaluation crop: the box that "resize the shorter side to resize_size, then take the centre
// image_size x image_size" reads, expressed in source pixels, so a single resample does both.
CropBox center_crop(int width, int height, int image_size, double resize_size);

}  // namespace flowers
