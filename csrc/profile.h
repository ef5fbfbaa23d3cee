/* Where the time goes in one training crop (bench.profile; not used by the reader itself).
 *
 * The reader's own per-image path (read_file, then augment_image's steps: header, crop choice,
 * JpegDecoder::decode_region, resize_rgb) is run with libjpeg's module methods wrapped in
 * timers through a DecodeObserver: the entropy decoder's decode_mcu, the coefficient
 * controller's decompress_data (entropy + dequantise + IDCT of one iMCU row), the upsampler and
 * the colour converter. Nested calls are subtracted, and so is the clock reads' own cost
 * (measured), so the stages add up to the hooked run less its timing overhead.
 * The same image also goes through the reader's path without hooks (the time a reader worker
 * spends on it) and through whole-image references: entropy decoding only
 * (jpeg_read_coefficients), and full decodes to YCbCr and to RGB at 8/8. The hooked run's
 * pixels must equal the unhooked run's (checked; a mismatch throws), so the profile times
 * exactly what the reader does.
 */
#pragma once

#include <cstdint>
#include <string>

#include "image_task.h"

namespace flowers {

// Seconds, each the minimum over the repeats (a floor: the machine may be busy).
struct StageProfile {
  // The reader's path, hooked. The stages partition hooked_total.
  double read = 0;           // read_file: the file into memory
  double header = 0;         // jpeg_read_header (JpegDecoder::read_info)
  double start = 0;          // jpeg_start_decompress + column crop; multi-scan files (progressive)
                             // entropy-decode every scan here, down to the crop's last rows
                             // (DecoderOptions::skip_rows_below_crop; else the whole image)
  double entropy = 0;        // Huffman decode of the MCUs decoded (rows above the crop and its
                             // own rows, all columns); single-scan files only
  double idct = 0;           // dequantise + inverse DCT (+ for multi-scan, coefficient reads)
  double upsample = 0;       // chroma upsampling; with the merged upsampler also colour conversion
  double color_convert = 0;  // YCbCr -> RGB (grey -> RGB for grayscale files)
  double decode_other = 0;   // the rest of decode_region: row bookkeeping, skip logic, abort
  double resize = 0;         // resize_rgb into the output slot
  double hooked_total = 0;   // the sum of the stages above
  double timer_overhead = 0;  // the hooks' own clock reads (estimated; in no stage)
  // The reader's path without hooks: read_file + augment_image (what a worker spends).
  double reader_total = 0;
  // Whole-image references, no crop, no DCT scaling, no hooks.
  double full_entropy = 0;      // jpeg_read_header + jpeg_read_coefficients: every row
  double full_decode_ycbcr = 0;  // header + decode to YCbCr (no colour conversion)
  double full_decode_rgb = 0;    // header + decode to RGB (what decode_jpeg does)
  double crop_no_dct_scaling = 0;  // read + augment_image with use_dct_scaling off, same crop
  // What was decoded.
  int width = 0, height = 0;  // the file
  int scale_num = 8;          // DCT scale M/8 the crop used
  double entropy_fraction = 0;  // MCUs entropy-decoded / MCUs in the image (1 for multi-scan)
  bool multi_scan = false;
  bool merged_upsampler = false;
  int64_t timer_calls = 0;  // wrapped calls in one hooked run (two clock reads each)
};

// Profiles the training crop (or eval crop, options.training false) that a reader with
// options and seed would draw for the file at `file_index` in `epoch`. repeats >= 1.
// DecodeError for a bad file; std::runtime_error if the hooked pixels differ from the
// reader's, or if this build has no jpegint.h (libjpeg's internal header, needed for hooks).
StageProfile profile_crop(const std::string& path, const ImageOptions& options,
                          const DecoderOptions& decoder, uint64_t seed, int64_t epoch,
                          int64_t file_index, int repeats);

}  // namespace flowers
