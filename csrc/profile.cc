/* Per-stage profile of one crop through the reader's decode path (see profile.h). */
#include "profile.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

// The hooks need libjpeg's internal module structs (jpegint.h, installed by libjpeg-turbo's
// -dev packages). JPEG_INTERNALS makes jpeglib.h include it, declared as the library was built.
#if __has_include(<jpegint.h>)
#define FLOWERS_PROFILE_HOOKS 1
#define JPEG_INTERNALS
#endif
#include <jpeglib.h>

namespace flowers {

#if FLOWERS_PROFILE_HOOKS
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Cost of one clock read, measured once per profile. A wrapped call's interval holds about one
// read of its own (half of each) plus its children's full reads; those are taken out of the
// stages (see Hooks::self_time) and reported as timer_overhead instead.
double clock_read_cost() {
  double best = std::numeric_limits<double>::infinity();
  for (int round = 0; round < 5; ++round) {
    constexpr int kReads = 2000;
    const double begin = now();
    double sink = 0;
    for (int i = 0; i < kReads; ++i) sink += now();
    const double per_read = (now() - begin) / (kReads + 1);
    if (sink > 0) best = std::min(best, per_read);
  }
  return best;
}

// Wraps libjpeg's per-image module methods in timers once jpeg_start_decompress has created
// them (they die with the image at jpeg_abort_decompress). A wrapped method finds this object
// through cinfo->client_data, which nothing else in this project uses.
struct Hooks final : DecodeObserver {
  double clock_cost = 0;  // seconds per clock read
  double start_done = 0;
  double entropy = 0, idct = 0, upsample = 0, color = 0;
  int64_t mcus = 0, total_mcus = 0, calls = 0;
  bool multi_scan = false, merged = false;
  boolean (*decode_mcu)(j_decompress_ptr, JBLOCKROW*) = nullptr;
  int (*decompress_data)(j_decompress_ptr, JSAMPIMAGE) = nullptr;
  void (*post_process)(j_decompress_ptr, JSAMPIMAGE, JDIMENSION*, JDIMENSION, JSAMPARRAY,
                       JDIMENSION*, JDIMENSION) = nullptr;
  void (*color_convert)(j_decompress_ptr, JSAMPIMAGE, JDIMENSION, JSAMPARRAY, int) = nullptr;

  void reset() {
    start_done = entropy = idct = upsample = color = 0;
    mcus = total_mcus = calls = 0;
  }
  // What a wrapped call spent itself: its interval, less about one clock read of its own, less
  // each nested wrapped call's self time plus that call's two reads.
  double self_time(double elapsed, double children_self, int64_t children) const {
    return elapsed - clock_cost - children_self - 2 * clock_cost * children;
  }
  double stages() const { return entropy + idct + upsample + color; }
  void after_start(jpeg_decompress_struct* cinfo) noexcept override;
};

Hooks* hooks_of(j_decompress_ptr cinfo) { return static_cast<Hooks*>(cinfo->client_data); }

// Runs `call` timed; its self time goes to *stage. Nothing with a destructor may live on these
// frames: a libjpeg error longjmps through them.
template <typename Call>
void timed(Hooks* hooks, double* stage, Call call) {
  const double children_before = hooks->stages();
  const int64_t calls_before = hooks->calls;
  const double begin = now();
  call();
  const double elapsed = now() - begin;
  *stage += hooks->self_time(elapsed, hooks->stages() - children_before, hooks->calls - calls_before);
  ++hooks->calls;
}

boolean timed_decode_mcu(j_decompress_ptr cinfo, JBLOCKROW* blocks) {
  Hooks* hooks = hooks_of(cinfo);
  boolean ok = FALSE;
  timed(hooks, &hooks->entropy, [&] { ok = hooks->decode_mcu(cinfo, blocks); });
  ++hooks->mcus;
  return ok;
}

// One iMCU row: entropy decode (single-scan files; nested decode_mcu calls) and dequantise +
// IDCT of the blocks inside the column crop.
int timed_decompress_data(j_decompress_ptr cinfo, JSAMPIMAGE output) {
  Hooks* hooks = hooks_of(cinfo);
  int result = 0;
  timed(hooks, &hooks->idct, [&] { result = hooks->decompress_data(cinfo, output); });
  return result;
}

// The post-processing step is the upsampler itself (libjpeg's post controller passes straight
// through to it when not quantising colours, and keeps its own copy of the pointer, so the
// upsampler's method is wrapped here). The separate upsampler calls the colour converter
// (nested); the merged one converts colour inline and has no converter.
void timed_post_process(j_decompress_ptr cinfo, JSAMPIMAGE input, JDIMENSION* in_row_group,
                        JDIMENSION in_row_groups, JSAMPARRAY output, JDIMENSION* out_row,
                        JDIMENSION out_rows) {
  Hooks* hooks = hooks_of(cinfo);
  timed(hooks, &hooks->upsample, [&] {
    hooks->post_process(cinfo, input, in_row_group, in_row_groups, output, out_row, out_rows);
  });
}

void timed_color_convert(j_decompress_ptr cinfo, JSAMPIMAGE input, JDIMENSION input_row,
                         JSAMPARRAY output, int rows) {
  Hooks* hooks = hooks_of(cinfo);
  timed(hooks, &hooks->color, [&] { hooks->color_convert(cinfo, input, input_row, output, rows); });
}

void Hooks::after_start(jpeg_decompress_struct* cinfo) noexcept {
  start_done = now();
  cinfo->client_data = this;
  // Multi-scan files were entropy-decoded whole inside jpeg_start_decompress; their output pass
  // reads coefficients from memory and never calls decode_mcu.
  multi_scan = cinfo->inputctl->has_multiple_scans || cinfo->buffered_image;
  total_mcus = static_cast<int64_t>(cinfo->MCUs_per_row) * cinfo->MCU_rows_in_scan;
  if (!multi_scan) {
    decode_mcu = cinfo->entropy->decode_mcu;
    cinfo->entropy->decode_mcu = timed_decode_mcu;
  }
  decompress_data = cinfo->coef->decompress_data;
  cinfo->coef->decompress_data = timed_decompress_data;
  post_process = cinfo->post->post_process_data;
  cinfo->post->post_process_data = timed_post_process;
  // jpeg_decode.cc nulls cconvert before every start: still null means the merged upsampler.
  merged = cinfo->cconvert == nullptr;
  if (!merged) {
    color_convert = cinfo->cconvert->color_convert;
    cinfo->cconvert->color_convert = timed_color_convert;
  }
}

struct ReferenceError {
  jpeg_error_mgr pub;  // must be first: libjpeg hands us a pointer to it
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void reference_error_exit(j_common_ptr cinfo) {
  auto* error = reinterpret_cast<ReferenceError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, error->message);
  std::longjmp(error->jump, 1);
}

enum class Reference { kEntropy, kNoColorConversion, kRgb };

// A whole-image decode with libjpeg's defaults plus the reader's IDCT and upsampling options,
// into rows libjpeg allocates (freed by the abort). False with error->message on a libjpeg
// error. Nothing with a destructor on this stack (longjmp).
bool run_reference(jpeg_decompress_struct* cinfo, ReferenceError* error, const uint8_t* data,
                   size_t size, Reference what, const DecoderOptions& options) {
  if (setjmp(error->jump)) {
    jpeg_abort_decompress(cinfo);
    return false;
  }
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(cinfo, TRUE);
  if (what == Reference::kEntropy) {
    jpeg_read_coefficients(cinfo);  // every scan's Huffman decode into coefficient arrays
    jpeg_abort_decompress(cinfo);
    return true;
  }
  // Output in the file's own colour space: libjpeg's null converter (a plain copy) runs instead
  // of YCbCr -> RGB; upsampling still happens.
  cinfo->out_color_space = what == Reference::kRgb
                               ? (cinfo->jpeg_color_space == JCS_CMYK ||
                                          cinfo->jpeg_color_space == JCS_YCCK
                                      ? JCS_CMYK
                                      : JCS_RGB)
                               : cinfo->jpeg_color_space;
  cinfo->dct_method = options.fast_idct ? JDCT_IFAST : JDCT_ISLOW;
  cinfo->do_fancy_upsampling = options.fancy_upsampling ? TRUE : FALSE;
  cinfo->cconvert = nullptr;  // as jpeg_decode.cc: no stale converter from an earlier image
  jpeg_start_decompress(cinfo);
  JSAMPARRAY rows = (*cinfo->mem->alloc_sarray)(
      reinterpret_cast<j_common_ptr>(cinfo), JPOOL_IMAGE,
      cinfo->output_width * static_cast<JDIMENSION>(cinfo->output_components),
      cinfo->output_height);
  while (cinfo->output_scanline < cinfo->output_height) {
    jpeg_read_scanlines(cinfo, rows + cinfo->output_scanline,
                        cinfo->output_height - cinfo->output_scanline);
  }
  jpeg_abort_decompress(cinfo);
  return true;
}

class ReferenceDecoder {
 public:
  explicit ReferenceDecoder(const DecoderOptions& options) : options_(options) {
    cinfo_.err = jpeg_std_error(&error_.pub);
    error_.pub.error_exit = reference_error_exit;
    error_.message[0] = '\0';
    jpeg_create_decompress(&cinfo_);
  }
  ~ReferenceDecoder() { jpeg_destroy_decompress(&cinfo_); }
  ReferenceDecoder(const ReferenceDecoder&) = delete;
  ReferenceDecoder& operator=(const ReferenceDecoder&) = delete;

  // Seconds for one decode of `what`.
  double time(const std::vector<uint8_t>& bytes, Reference what) {
    const double begin = now();
    if (!run_reference(&cinfo_, &error_, bytes.data(), bytes.size(), what, options_))
      throw DecodeError(error_.message);
    return now() - begin;
  }

 private:
  jpeg_decompress_struct cinfo_;
  ReferenceError error_;
  DecoderOptions options_;
};

void keep_min(double* best, double value) { *best = std::min(*best, value); }

}  // namespace

StageProfile profile_crop(const std::string& path, const ImageOptions& options,
                          const DecoderOptions& decoder, uint64_t seed, int64_t epoch,
                          int64_t file_index, int repeats) {
  check_image_options(options);
  if (repeats < 1) throw std::invalid_argument("repeats must be >= 1");
  // The image seed a BatchReader worker uses for this file in this epoch (batch_reader.cc).
  const uint64_t image_seed =
      mix_seed(seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(file_index));
  const size_t out_bytes = static_cast<size_t>(options.image_size) * options.image_size * 3;
  std::vector<uint8_t> reader_pixels(out_bytes), hooked_pixels(out_bytes), other_pixels(out_bytes);
  WorkerContext plain(decoder), hooked(decoder);
  Hooks hooks;
  hooks.clock_cost = clock_read_cost();
  hooked.decoder.set_observer(&hooks);
  ImageOptions full_scale = options;
  full_scale.use_dct_scaling = false;
  ReferenceDecoder reference(decoder);

  constexpr double kNever = std::numeric_limits<double>::infinity();
  StageProfile best;
  for (double* field : {&best.read, &best.header, &best.start, &best.entropy, &best.idct,
                        &best.upsample, &best.color_convert, &best.decode_other, &best.resize,
                        &best.reader_total, &best.full_entropy, &best.full_decode_ycbcr,
                        &best.full_decode_rgb, &best.crop_no_dct_scaling, &best.timer_overhead})
    *field = kNever;
  // Interleaved: every repeat runs each variant once, so a busy moment hits them alike.
  for (int repeat = 0; repeat < repeats; ++repeat) {
    double begin = now();
    read_file(path, &plain.file_bytes);
    augment_image(plain.file_bytes.data(), plain.file_bytes.size(), options, image_seed, &plain,
                  reader_pixels.data());
    keep_min(&best.reader_total, now() - begin);

    // The same steps as augment_image (image_task.cc), split so each can be timed; the pixels
    // are compared with the reader's below.
    hooks.reset();
    const double t0 = now();
    read_file(path, &hooked.file_bytes);
    const double t1 = now();
    const JpegInfo info = hooked.decoder.read_info(hooked.file_bytes.data(), hooked.file_bytes.size());
    SplitMix64 rng(image_seed);
    CropBox box;
    bool flip = false;
    if (options.training) {
      box = random_resized_crop(info.width, info.height, options.crop, &rng);
      flip = options.random_flip && rng.uniform() < 0.5;
    } else {
      box = center_crop(info.width, info.height, options.image_size,
                        std::round(options.image_size * options.eval_resize_ratio));
    }
    const double t2 = now();
    hooked.decoder.decode_region(box, options.image_size, options.image_size,
                                 options.use_dct_scaling, &hooked.region);
    const double t3 = now();
    const DecodedRegion& region = hooked.region;
    resize_rgb(region.data(), region.width, region.height, region.stride, region.box,
               options.image_size, options.image_size, flip, options.layout, hooked_pixels.data(),
               &hooked.scratch);
    const double t4 = now();
    const double start = hooks.start_done - t2;
    keep_min(&best.read, t1 - t0);
    keep_min(&best.header, t2 - t1);
    keep_min(&best.start, start);
    keep_min(&best.entropy, hooks.entropy);
    keep_min(&best.idct, hooks.idct);
    keep_min(&best.upsample, hooks.upsample);
    keep_min(&best.color_convert, hooks.color);
    // The wrapped calls' clock reads: two per call, one of them inside the call's interval.
    const double overhead = 2 * hooks.clock_cost * static_cast<double>(hooks.calls);
    keep_min(&best.decode_other, (t3 - t2) - start - hooks.stages() - overhead);
    keep_min(&best.timer_overhead, overhead);
    keep_min(&best.resize, t4 - t3);
    if (repeat == 0) {
      if (std::memcmp(hooked_pixels.data(), reader_pixels.data(), out_bytes) != 0)
        throw std::runtime_error(path + ": the profiled decode differs from the reader's; "
                                 "profile.cc no longer follows augment_image");
      best.width = info.width;
      best.height = info.height;
      best.scale_num = region.scale_num;
      best.multi_scan = hooks.multi_scan;
      best.merged_upsampler = hooks.merged;
      best.timer_calls = hooks.calls;
      best.entropy_fraction = hooks.multi_scan || hooks.total_mcus == 0
                                  ? 1.0
                                  : static_cast<double>(hooks.mcus) / hooks.total_mcus;
    }

    begin = now();
    read_file(path, &plain.file_bytes);
    augment_image(plain.file_bytes.data(), plain.file_bytes.size(), full_scale, image_seed, &plain,
                  other_pixels.data());
    keep_min(&best.crop_no_dct_scaling, now() - begin);
    keep_min(&best.full_entropy, reference.time(hooked.file_bytes, Reference::kEntropy));
    keep_min(&best.full_decode_ycbcr, reference.time(hooked.file_bytes, Reference::kNoColorConversion));
    keep_min(&best.full_decode_rgb, reference.time(hooked.file_bytes, Reference::kRgb));
  }
  best.hooked_total = best.read + best.header + best.start + best.entropy + best.idct +
                      best.upsample + best.color_convert + best.decode_other + best.resize;
  return best;
}

#else  // no jpegint.h

StageProfile profile_crop(const std::string& path, const ImageOptions&, const DecoderOptions&,
                          uint64_t, int64_t, int64_t, int) {
  throw std::runtime_error(path + ": this build has no per-stage profile: libjpeg's jpegint.h "
                           "was not found at compile time (install libjpeg-turbo's -dev package)");
}

#endif

}  // namespace flowers
