/* JPEG decoding through the libjpeg API: header checks, DCT-scaled region-of-interest decode,
 * colour conversion to RGB. See jpeg_decode.h for the contract. */
#include "jpeg_decode.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <algorithm>
#include <string>

// jpeglib.h needs size_t and FILE declared before it.
#include <jpeglib.h>
#include <jerror.h>

namespace flowers {
namespace {

struct ErrorManager {
  jpeg_error_mgr pub;  // must be first: libjpeg hands us a pointer to it
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void on_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

struct ProgressManager {
  jpeg_progress_mgr pub;  // must be first: libjpeg hands us a pointer to it
  int max_scans;
  // Multi-scan region decodes: iMCU rows from this one on are not needed (-1: all are), and
  // the scan whose rest was jumped over (its "hit marker" warning is ours, not the file's).
  int stop_row = -1;
  int jumped_scan = -1;
  int scans_cut = 0;
};

// The next marker at or after `p` that ends an entropy-coded segment: 0xFF followed by a code
// other than 0x00 (a stuffed byte), 0xFF (fill) or RST0-7; nullptr if there is none.
const uint8_t* next_segment_marker(const uint8_t* p, const uint8_t* end) {
  while (p + 1 < end) {
    p = static_cast<const uint8_t*>(std::memchr(p, 0xFF, static_cast<size_t>(end - p - 1)));
    if (p == nullptr) return nullptr;
    const uint8_t code = p[1];
    if (code != 0x00 && code != 0xFF && (code < 0xD0 || code > 0xD7)) return p;
    ++p;
  }
  return nullptr;
}

// In a scan of a multi-scan file, past the rows the crop needs: moves the source to the next
// marker, so the entropy decoder runs out of data there and leaves the remaining blocks alone
// (libjpeg's insufficient_data path, which skips them without decoding). Restart intervals and
// arithmetic coding keep the plain path. A file with no later marker is left as it is, so a
// truncated file still fails as truncated.
void skip_rest_of_scan(j_decompress_ptr cinfo, ProgressManager* progress) {
  if (progress->stop_row < 0) return;  // set only inside jpeg_start_decompress()
  if (cinfo->restart_interval != 0 || cinfo->arith_code) return;
  if (static_cast<int>(cinfo->input_iMCU_row) < progress->stop_row) return;
  if (cinfo->input_iMCU_row >= cinfo->total_iMCU_rows) return;  // between scans
  if (progress->jumped_scan == cinfo->input_scan_number) return;
  // The entropy decoder already read this segment's end marker: the source now points into
  // that marker's own segment (a DHT, say), which must be read, not jumped over.
  if (cinfo->unread_marker != 0) return;
  jpeg_source_mgr* src = cinfo->src;
  const uint8_t* from = src->next_input_byte;
  const uint8_t* marker = next_segment_marker(from, from + src->bytes_in_buffer);
  if (marker == nullptr) return;
  src->bytes_in_buffer -= static_cast<size_t>(marker - from);
  src->next_input_byte = marker;
  progress->jumped_scan = cinfo->input_scan_number;
  ++progress->scans_cut;
}

// Called by libjpeg between iMCU rows while it decodes (for multi-scan files, of every scan).
void on_progress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
  auto* progress = reinterpret_cast<ProgressManager*>(cinfo->progress);
  if (dinfo->input_scan_number <= progress->max_scans) {
    skip_rest_of_scan(dinfo, progress);
    return;
  }
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  std::snprintf(err->message, sizeof(err->message),
                "more than %d scans (each a pass over the whole image; encoders write about 10)",
                progress->max_scans);
  std::longjmp(err->jump, 1);  // as on_error_exit: the decode's setjmp cleans up
}

void on_emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level >= 0) return;  // trace messages
  // A truncated file is only a warning to libjpeg, which pads the rest with grey. We refuse it:
  // the grey pixels would become silent training data.
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) on_error_exit(cinfo);
  if (cinfo->err->msg_code == JWRN_HIT_MARKER && cinfo->is_decompressor &&
      reinterpret_cast<ProgressManager*>(cinfo->progress)->jumped_scan ==
          reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number)
    return;  // the marker skip_rest_of_scan() jumped to
  cinfo->err->num_warnings++;
}

const char* color_space_name(J_COLOR_SPACE space) {
  switch (space) {
    case JCS_GRAYSCALE: return "grayscale";
    case JCS_YCbCr: return "ycbcr";
    case JCS_RGB: return "rgb";
    case JCS_CMYK: return "cmyk";
    case JCS_YCCK: return "ycck";
    default: return "unknown";
  }
}

// Adobe applications write CMYK JPEGs with inverted values (and say so with an APP14 marker).
void cmyk_row_to_rgb(const uint8_t* cmyk, uint8_t* rgb, int width, bool inverted) {
  for (int x = 0; x < width; ++x) {
    int c = cmyk[4 * x], m = cmyk[4 * x + 1], y = cmyk[4 * x + 2], k = cmyk[4 * x + 3];
    if (!inverted) { c = 255 - c; m = 255 - m; y = 255 - y; k = 255 - k; }
    rgb[3 * x] = static_cast<uint8_t>((c * k + 127) / 255);
    rgb[3 * x + 1] = static_cast<uint8_t>((m * k + 127) / 255);
    rgb[3 * x + 2] = static_cast<uint8_t>((y * k + 127) / 255);
  }
}

}  // namespace

struct JpegDecoder::State {
  jpeg_decompress_struct cinfo;
  ErrorManager error;
  ProgressManager progress;
  std::vector<uint8_t> row;  // one scanline as libjpeg writes it (RGB or CMYK)
  bool header_ready = false;  // read_info() succeeded and no decode has consumed it yet
};

int choose_dct_scale(double box_width, double box_height, int min_width, int min_height,
                     unsigned allowed_scales) {
  for (int m = 1; m < 8; ++m) {
    if (!(allowed_scales & (1u << (m - 1)))) continue;
    // Compare in integers of eighths where possible: box * m / 8 >= min  <=>  box * m >= 8 * min.
    if (box_width * m >= 8.0 * min_width && box_height * m >= 8.0 * min_height) return m;
  }
  return 8;
}

JpegDecoder::JpegDecoder(const DecoderOptions& options) : state_(new State), options_(options) {
  state_->cinfo.err = jpeg_std_error(&state_->error.pub);
  state_->error.pub.error_exit = on_error_exit;
  state_->error.pub.emit_message = on_emit_message;
  state_->error.message[0] = '\0';
  jpeg_create_decompress(&state_->cinfo);
  state_->progress.pub.progress_monitor = on_progress;
  state_->progress.max_scans = options.max_scans;
  state_->cinfo.progress = &state_->progress.pub;
}

JpegDecoder::~JpegDecoder() {
  jpeg_destroy_decompress(&state_->cinfo);
  delete state_;
}

void JpegDecoder::run_header(const uint8_t* data, size_t size, JpegInfo* info) {
  jpeg_decompress_struct* cinfo = &state_->cinfo;
  if (setjmp(state_->error.jump)) {
    jpeg_abort_decompress(cinfo);
    throw DecodeError(state_->error.message);
  }
  state_->header_ready = false;
  jpeg_abort_decompress(cinfo);  // forget any earlier image, whatever state it was left in
  cinfo->err->num_warnings = 0;
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(cinfo, TRUE);
  info->width = static_cast<int>(cinfo->image_width);
  info->height = static_cast<int>(cinfo->image_height);
  info->components = cinfo->num_components;
  info->color_space = color_space_name(cinfo->jpeg_color_space);
  info->progressive = cinfo->progressive_mode != 0;
}

JpegInfo JpegDecoder::read_info(const uint8_t* data, size_t size) {
  if (size == 0) throw DecodeError("file is empty (0 bytes)");
  JpegInfo info;
  run_header(data, size, &info);
  const uint64_t pixels = static_cast<uint64_t>(info.width) * static_cast<uint64_t>(info.height);
  if (pixels > options_.max_pixels) {
    jpeg_abort_decompress(&state_->cinfo);
    throw DecodeError("header claims " + std::to_string(info.width) + "x" +
                      std::to_string(info.height) + " = " + std::to_string(pixels) +
                      " pixels, over the limit of " + std::to_string(options_.max_pixels) +
                      " (raise max_pixels to accept it)");
  }
  if (info.color_space == "unknown") {
    jpeg_abort_decompress(&state_->cinfo);
    throw DecodeError("unsupported JPEG colour space with " + std::to_string(info.components) +
                      " components");
  }
  state_->header_ready = true;
  return info;
}

void JpegDecoder::run_decode(const CropBox* box, int min_width, int min_height,
                             bool use_dct_scaling, DecodedRegion* out) {
  jpeg_decompress_struct* cinfo = &state_->cinfo;
  state_->header_ready = false;
  if (setjmp(state_->error.jump)) {
    state_->progress.stop_row = -1;
    jpeg_abort_decompress(cinfo);
    throw DecodeError(state_->error.message);
  }
  const bool cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
  cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // libjpeg-turbo expands grayscale to RGB
  int scale = 8;
  if (box != nullptr && use_dct_scaling)
    scale = choose_dct_scale(box->width, box->height, min_width, min_height,
                             options_.allowed_scales);
  cinfo->scale_num = static_cast<unsigned>(scale);
  cinfo->scale_denom = 8;
  cinfo->dct_method = options_.fast_idct ? JDCT_IFAST : JDCT_ISLOW;
  cinfo->do_fancy_upsampling = options_.fancy_upsampling ? TRUE : FALSE;
  // The merged upsampler (fancy_upsampling off, 4:2:x, some DCT scales) creates no colour
  // converter, and libjpeg-turbo 2.1 leaves the previous image's, freed by the abort, in
  // cinfo->cconvert; jpeg_skip_scanlines() then writes through it (a heap use-after-free the
  // fuzzer found, fuzz/regressions/skip-scanlines-stale-cconvert). Null it for every image:
  // libjpeg sets it again whenever this image has a converter.
  cinfo->cconvert = nullptr;
  state_->progress.jumped_scan = -1;
  state_->progress.stop_row = -1;
  state_->progress.scans_cut = 0;
  if (box != nullptr && options_.skip_rows_below_crop) {
    // The source rows the crop reaches (8 rows of slack for the scaled region's outward
    // rounding), then two iMCU rows more: the one below the crop's last, whose rows the
    // chroma upsampler's context reads, and one for good measure.
    const int imcu_height = cinfo->max_v_samp_factor * DCTSIZE;
    const double height = static_cast<double>(cinfo->image_height);
    const int bottom = static_cast<int>(
        std::clamp(std::ceil(box->y + box->height) + 8.0, 0.0, height));
    state_->progress.stop_row = (bottom + imcu_height - 1) / imcu_height + 2;
  }
  jpeg_start_decompress(cinfo);  // multi-scan files: every scan is decoded in here
  state_->progress.stop_row = -1;
  state_->progress.jumped_scan = -1;
  out->scans_cut = state_->progress.scans_cut;

  // The region in scaled output coordinates: the crop box's pixel edges times scale/8, rounded
  // outwards, so that every pixel the resampler may touch is decoded.
  const double s = scale / 8.0;
  const int scaled_width = static_cast<int>(cinfo->output_width);
  const int scaled_height = static_cast<int>(cinfo->output_height);
  int x0 = 0, y0 = 0, x1 = scaled_width, y1 = scaled_height;
  if (box != nullptr) {
    x0 = std::clamp(static_cast<int>(std::floor(box->x * s)), 0, scaled_width - 1);
    y0 = std::clamp(static_cast<int>(std::floor(box->y * s)), 0, scaled_height - 1);
    x1 = std::clamp(static_cast<int>(std::ceil((box->x + box->width) * s)), x0 + 1, scaled_width);
    y1 = std::clamp(static_cast<int>(std::ceil((box->y + box->height) * s)), y0 + 1, scaled_height);
  }
  JDIMENSION crop_x = static_cast<JDIMENSION>(x0);
  // At least 8 columns (up to the right edge): when a crop leaves a component less than 2
  // samples wide, libjpeg-turbo 2.1 re-initialises the upsampler as the plain kind, which with
  // the merged upsampler in place (fancy_upsampling off, 4:2:x) crashes in the next read
  // (fuzz/regressions/crop-narrow-merged-upsampler). 8 >= 2 x the widest sampling ratio (4).
  JDIMENSION crop_width =
      static_cast<JDIMENSION>(std::min(std::max(x1 - x0, 8), scaled_width - x0));
  if (x0 > 0 || x0 + static_cast<int>(crop_width) < scaled_width) {
    // Widens the window to iMCU boundaries: crop_x moves left, crop_width grows.
    jpeg_crop_scanline(cinfo, &crop_x, &crop_width);
  }
  if (observer_ != nullptr) observer_->after_start(cinfo);
  const int skip_left = x0 - static_cast<int>(crop_x);
  const int width = x1 - x0, height = y1 - y0;
  const size_t row_bytes = static_cast<size_t>(cinfo->output_width) * 3;  // after the crop
  if (cmyk) {
    // 4 components: decode row by row into a side buffer and convert into a packed region.
    state_->row.resize(static_cast<size_t>(cinfo->output_width) * 4);
    out->pixels.resize(static_cast<size_t>(width) * height * 3);
    out->offset = 0;
    out->stride = static_cast<size_t>(width) * 3;
  } else {
    // RGB: libjpeg writes straight into the region buffer, whole (iMCU-widened) rows.
    out->pixels.resize(row_bytes * height);
    out->offset = static_cast<size_t>(skip_left) * 3;
    out->stride = row_bytes;
  }
  out->width = width;
  out->height = height;
  out->scale_num = scale;
  if (box != nullptr) {
    out->box = CropBox{box->x * s - x0, box->y * s - y0, box->width * s, box->height * s};
  } else {
    out->box = CropBox{0, 0, static_cast<double>(width), static_cast<double>(height)};
  }
  if (y0 > 0) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(y0));
  const bool inverted = cinfo->saw_Adobe_marker != 0;
  JSAMPROW rows[4];  // libjpeg returns at most max_v_samp_factor (<= 4) rows per call
  for (int y = 0; y < height;) {
    const int wanted = std::min(4, height - y);
    for (int k = 0; k < wanted; ++k) {
      rows[k] = cmyk ? state_->row.data() : out->pixels.data() + (y + k) * row_bytes;
    }
    // With the CMYK side buffer, one row at a time.
    const JDIMENSION got = jpeg_read_scanlines(cinfo, rows, cmyk ? 1 : wanted);
    if (got == 0) ERREXIT(cinfo, JERR_BAD_STATE);  // cannot happen with a memory source
    if (cmyk) {
      cmyk_row_to_rgb(state_->row.data() + static_cast<size_t>(skip_left) * 4,
                      out->pixels.data() + static_cast<size_t>(y) * out->stride, width, inverted);
    }
    y += static_cast<int>(got);
  }
  // Abort rather than finish: the rows below the crop are never decoded.
  jpeg_abort_decompress(cinfo);
}

void JpegDecoder::decode(const uint8_t* data, size_t size, DecodedRegion* out) {
  read_info(data, size);
  run_decode(nullptr, 0, 0, false, out);
}

void JpegDecoder::decode_region(const CropBox& box, int min_width, int min_height,
                                bool use_dct_scaling, DecodedRegion* out) {
  if (!state_->header_ready) throw std::logic_error("decode_region() without read_info()");
  run_decode(&box, min_width, min_height, use_dct_scaling, out);
}

}  // namespace flowers
