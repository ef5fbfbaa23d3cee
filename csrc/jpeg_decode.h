/* JPEG decoding through the libjpeg API (libjpeg-turbo).
 *
 * One JpegDecoder per thread: it keeps one libjpeg decompressor alive and reuses it for every
 * image, so a worker allocates nothing per image once its buffers have grown.
 *
 * Two paths:
 *  - decode(): the whole image, RGB, at full resolution (the reference path, and decode_jpeg()).
 *  - decode_region(): only the rows and iMCU columns that cover a crop box, at the smallest DCT
 *    scale M/8 whose result still covers the output size. This is the fast training path:
 *    jpeg_crop_scanline() skips columns, jpeg_skip_scanlines() skips rows above the crop, and
 *    jpeg_abort_decompress() skips everything below it; in multi-scan (progressive) files,
 *    where libjpeg decodes every scan before the first row comes out, each scan stops at the
 *    crop's last iMCU row and jumps to the next scan (DecoderOptions::skip_rows_below_crop).
 *
 * Grayscale decodes to RGB inside libjpeg-turbo; CMYK and YCCK are converted here (Adobe files
 * store inverted CMYK). Errors are DecodeError with libjpeg's own message; a file that ends early
 * ("Premature end of JPEG file", which libjpeg only warns about and pads with grey) is an error,
 * because the grey padding would silently become training data.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

struct jpeg_decompress_struct;

namespace flowers {

struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct JpegInfo {
  int width = 0;
  int height = 0;
  int components = 0;
  std::string color_space;  // "grayscale", "ycbcr", "rgb", "cmyk", "ycck"
  bool progressive = false;
};

// A rectangle of the source image in full-resolution pixel-edge coordinates (fractions allowed).
struct CropBox {
  double x = 0, y = 0, width = 0, height = 0;
};

// Decoded RGB pixels of a region, plus where the requested crop box lies inside them. libjpeg
// writes whole iMCU-aligned rows straight into `pixels`; the region starts `offset` bytes in.
struct DecodedRegion {
  std::vector<uint8_t> pixels;  // interleaved RGB rows of `stride` bytes
  size_t offset = 0;
  size_t stride = 0;
  int width = 0;
  int height = 0;
  const uint8_t* data() const { return pixels.data() + offset; }
  CropBox box;      // the crop box in this buffer's (scaled) pixel coordinates
  int scale_num = 8;  // DCT scale used: scale_num / 8
  int scans_cut = 0;  // scans that skip_rows_below_crop stopped early
};

// Scales 1/8, 2/8, 4/8 and 8/8: bits 0, 1, 3 and 7.
inline constexpr unsigned kSimdDctScales = 0x8Bu;

struct DecoderOptions {
  // Headers claiming more pixels than this are refused before anything is allocated.
  uint64_t max_pixels = 100000000;
  // Files with more scans are refused. Every scan of a progressive (or non-interleaved) JPEG
  // is a pass over the whole image, and a scan header is a dozen bytes, so a tiny hostile file
  // can otherwise keep a worker busy for minutes; real encoders write about 10 scans.
  int max_scans = 500;
  // Bit M-1 set: the DCT scale M/8 (M = 1..8) may be used. Default 1/8, 1/4, 1/2 and 1: those
  // have SIMD IDCTs in libjpeg-turbo; 3/8, 5/8, 6/8 and 7/8 run scalar code (for 4:2:0 chroma
  // at up to 14x14) that costs more than the smaller resize saves: 5.9M vs 7.7M instructions
  // per flowers-like image (callgrind). Python sees it as the list `dct_scales`.
  unsigned allowed_scales = kSimdDctScales;
  // libjpeg's JDCT_IFAST instead of the accurate JDCT_ISLOW (what tf.image.decode_jpeg uses by
  // default): faster, a few levels off.
  bool fast_idct = false;
  // Smooth chroma upsampling (libjpeg's default). Off: the cheaper merged upsampler, blockier
  // chroma edges.
  bool fancy_upsampling = true;
  // Multi-scan files (progressive, non-interleaved) in decode_region(): in every scan, once
  // the iMCU rows the crop needs (plus two of context) are decoded, jump to the next scan's
  // marker instead of entropy-decoding the rows below. The crop's pixels are the same (tests
  // compare them bit for bit); the rows below are left as libjpeg leaves data it ran out of.
  // Baseline files already stop at the crop's last row (jpeg_abort_decompress).
  bool skip_rows_below_crop = true;
};

// Profiling only (csrc/profile.cc): sees libjpeg's decompressor inside decode_region() once
// jpeg_start_decompress and the column crop are done, before any row is skipped or read, which
// is where libjpeg's per-module methods (entropy decoder, IDCT controller, upsampler, colour
// converter) can be wrapped in timers. Must not throw (it runs under libjpeg's setjmp).
struct DecodeObserver {
  virtual ~DecodeObserver() = default;
  virtual void after_start(jpeg_decompress_struct* cinfo) noexcept = 0;
};

class JpegDecoder {
 public:
  explicit JpegDecoder(const DecoderOptions& options = DecoderOptions());
  ~JpegDecoder();
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;

  // Reads the header only and checks the pixel limit. The decoder then holds the header, so
  // decode_region() can follow on the same bytes without parsing it again. `data` must stay
  // alive until decode_region() returns.
  JpegInfo read_info(const uint8_t* data, size_t size);

  // Full decode to RGB.
  void decode(const uint8_t* data, size_t size, DecodedRegion* out);

  // Decodes the part of the image whose header read_info() just read that covers `box` (clamped
  // to the image), at the smallest allowed DCT scale that keeps the box at least
  // min_width x min_height pixels; use_dct_scaling=false always decodes at scale 8/8.
  void decode_region(const CropBox& box, int min_width, int min_height, bool use_dct_scaling,
                     DecodedRegion* out);

  // nullptr (the default) for none; the observer must outlive the decodes it watches.
  void set_observer(DecodeObserver* observer) { observer_ = observer; }

 private:
  struct State;
  // All libjpeg calls live in these two functions: they hold the setjmp for libjpeg's errors,
  // and keep nothing with a destructor on their own stack (longjmp would skip it).
  void run_header(const uint8_t* data, size_t size, JpegInfo* info);
  void run_decode(const CropBox* box, int min_width, int min_height, bool use_dct_scaling,
                  DecodedRegion* out);

  State* state_;
  DecoderOptions options_;
  DecodeObserver* observer_ = nullptr;
};

// Chooses the smallest allowed M in 1..8 with box_width*M/8 >= min_width and
// box_height*M/8 >= min_height; 8 when none is smaller. Exposed for tests.
int choose_dct_scale(double box_width, double box_height, int min_width, int min_height,
                     unsigned allowed_scales);

}  // namespace flowers
