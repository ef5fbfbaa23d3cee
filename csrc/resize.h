/* Bilinear resampling of a crop box of an RGB image, without aliasing when shrinking.
 *
 * Separable triangle filter whose support widens with the shrink factor (the same filter as
 * PIL's BILINEAR and tf.image.resize(antialias=True)): a plain 2-tap bilinear resize that
 * shrinks more than 2x skips source pixels and aliases. Only pixels inside the source buffer
 * are used; weights are renormalised at its edges, which is "crop, then resize".
 * Fixed-point arithmetic (weights in 2^-14 units, exact integer sums), so every CPU, with or
 * without AVX2, writes the same bytes; within one grey level of the same filter in float.
 * Writes interleaved HWC or planar CHW uint8, optionally mirrored left-right, straight into the
 * caller's buffer (a slot of a batch).
 */
#pragma once

#include <cstdint>
#include <vector>

#include "jpeg_decode.h"

namespace flowers {

enum class Layout { kHWC, kCHW };

// Per-thread buffers so a worker allocates nothing per image once they have grown.
struct ResizeScratch {
  std::vector<int> x_start, y_start, x_relative;
  std::vector<int16_t> x_weights, y_weights;  // fixed point, 2^-14 units
  std::vector<int16_t> x_pairs;               // x_weights laid out for the AVX2 pass
  std::vector<int16_t> mid;                   // one output row resampled vertically
  std::vector<uint8_t> out_row;               // the same row resampled horizontally
  // Use the AVX2 passes where the CPU has them (same bytes either way; false for tests).
  bool simd = true;
};

// src: interleaved RGB, src_width x src_height, rows src_stride bytes apart.
// box: the area to resample, in src pixel-edge coordinates (fractions allowed).
void resize_rgb(const uint8_t* src, int src_width, int src_height, size_t src_stride,
                const CropBox& box,
                int out_width, int out_height, bool flip, Layout layout, uint8_t* out,
                ResizeScratch* scratch);

}  // namespace flowers
