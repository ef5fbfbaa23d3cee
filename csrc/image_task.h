/* One image, start to finish: read the file, read the header, pick the crop, decode only that
 * region at a reduced DCT scale, resample it into the output slot. Used by the reader's workers
 * and, one image at a time, by the Python binding's test and benchmark entry points. */
#pragma once

#include <cstdint>
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

// Reads a whole regular file; DecodeError naming the reason (no such file, permission denied,
// a directory or FIFO named *.jpg, over kMaxFileBytes, ...). Never blocks on a FIFO.
void read_file(const std::string& path, std::vector<uint8_t>* bytes);

// Decodes and augments encoded JPEG bytes into `out` (image_size^2 * 3 bytes, options.layout).
// image_seed fixes the crop and the flip.
void augment_image(const uint8_t* data, size_t size, const ImageOptions& options,
                   uint64_t image_seed, WorkerContext* context, uint8_t* out);

}  // namespace flowers
