/* One image, start to finish: read the file, read the header, pick the crop, decode only that
 * region at a reduced DCT scale, resample it into the output slot. Used by the reader's workers
 * and, one image at a time, by the Python binding's test and benchmark entry points.
 * The decoded-image cache's two halves live here too: decode a whole image once at its capped
 * size (decode_for_cache), and later draw the same crop from those pixels (augment_cached). */
#pragma once

#include <cstdint>
#include <cstddef>
#include <string>
#include <vector>

#include "augment.h"
#include "jpeg_decode.h"
#include "resize.h"

namespace flowers {

// Defaults here are the reader's defaults (flowers_tl.reader.ReaderConfig reads them from a
// default-constructed _reader.ImageOptions); the geometry (crop ranges, eval resize ratio) is
// unset, see CropOptions.
struct ImageOptions {
  int image_size = 224;
  bool training = true;
  CropOptions crop;
  bool random_flip = true;
  // Eval: shorter side to round(image_size * this) (half away from zero), then the centre crop.
  double eval_resize_ratio = kUnset;
  bool use_dct_scaling = true;
  Layout layout = Layout::kHWC;
};

// std::invalid_argument naming the first bad field (the geometry included: unset is bad).
void check_image_options(const ImageOptions& options);

// What one worker thread owns; reused for every image it handles.
struct WorkerContext {
  explicit WorkerContext(const DecoderOptions& options) : decoder(options) {}
  JpegDecoder decoder;
  DecodedRegion region;
  ResizeScratch scratch;
  std::vector<uint8_t> file_bytes;
};

// Larger files are refused before anything is allocated (a 100 MP JPEG is well under 100 MiB).
constexpr uint64_t kMaxFileBytes = uint64_t{1} << 30;

// Reads a whole regular file (or only its first max_bytes); DecodeError naming the reason (no
// such file, permission denied, a directory or FIFO named *.jpg, over kMaxFileBytes, ...).
// Never blocks on a FIFO.
void read_file(const std::string& path, std::vector<uint8_t>* bytes,
               size_t max_bytes = SIZE_MAX);

// Decodes and augments encoded JPEG bytes into `out` (image_size^2 * 3 bytes, options.layout).
// image_seed fixes the crop and the flip.
void augment_image(const uint8_t* data, size_t size, const ImageOptions& options,
                   uint64_t image_seed, WorkerContext* context, uint8_t* out);

// The crop box (in the image's own width x height pixels) and the flip that image_seed draws:
// random-resized-crop and coin flip when training, the eval centre box otherwise.
void choose_crop(int width, int height, const ImageOptions& options, uint64_t image_seed,
                 CropBox* box, bool* flip);

// The size an image is kept at in the decoded-image cache: unchanged when its shorter side is
// at most short_side, otherwise shrunk so that the shorter side is short_side and the longer
// one keeps the aspect ratio (rounded, at least 1).
void cached_size(int width, int height, int short_side, int* cached_width, int* cached_height);

// Decodes the whole image whose header context->decoder.read_info() just returned as `info`
// (at the smallest allowed DCT scale that still covers cached_width x cached_height when
// use_dct_scaling) and resamples it to exactly that size, packed RGB rows, into `out`.
void decode_for_cache(const JpegInfo& info, int cached_width, int cached_height,
                      bool use_dct_scaling, WorkerContext* context, uint8_t* out);

// augment_image's crop for the same seed, taken from cached pixels instead of the JPEG: the box
// is drawn in the original width x height (so every crop rectangle is the streaming one) and
// mapped onto the cached_width x cached_height pixels, axis by axis, before the resample.
void augment_cached(const uint8_t* pixels, int cached_width, int cached_height, int width,
                    int height, const ImageOptions& options, uint64_t image_seed,
                    ResizeScratch* scratch, uint8_t* out);

}  // namespace flowers
