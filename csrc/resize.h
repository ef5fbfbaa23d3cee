/* Bilinear resampling of a crop box of an RGB image, without aliasing when shrinking.
 *
 * Separable triangle filter whose support widens with the shrink factor (the same filter as
 * PIL's BILINEAR and tf.image.resize(antialias=True)): a plain 2-tap bilinear resize that
 * shrinks more than 2x skips source pixels and aliases. Only pixels inside the source buffer
 * are used; weights are renormalised at its edges, which is "crop, then resize".
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
  std::vector<int> x_start, y_start;
  std::vector<float> x_weights, y_weights;
  std::vector<float> column_sums;  // one output row resampled vertically, at source width
  std::vector<float> out_row;      // the same row resampled horizontally, before rounding
};

// src: interleaved RGB, src_width x src_height, rows src_stride bytes apart.
// box: the area to resample, in src pixel-edge coordinates (fractions allowed).
void resize_rgb(const uint8_t* src, int src_width, int src_height, size_t src_stride,
                const CropBox& box,
                int out_width, int out_height, bool flip, Layout layout, uint8_t* out,
                ResizeScratch* scratch);

}  // namespace flowers
