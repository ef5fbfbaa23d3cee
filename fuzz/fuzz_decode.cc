/* libFuzzer target over the reader's C++ core, without Python: arbitrary bytes through the
 * header read, the reader's decode-and-augment step (random-resized-crop or eval centre crop,
 * ROI + DCT-scaled decode, resize), an ROI decode of an arbitrary box, the full decode, and the
 * decoded-image cache's path (the whole image decoded at its capped size, then the same crop
 * resampled from those pixels).
 *
 * Input layout: the first kParamBytes bytes choose the parameters, the rest is the file
 * (tests/test_fuzz_inputs.py::fuzz_params decodes them the same way; see fuzz/README.md):
 *   0  image_size = 1 + b % 64
 *   1  flags: 1 training, 2 use_dct_scaling, 4 random_flip, 8 NCHW, 16 fast_idct,
 *             32 no fancy upsampling, 64 flip the arbitrary-box resize,
 *             128 no skip_rows_below_crop (multi-scan files decode every row)
 *   2  allowed DCT scales, bit M-1 = M/8 (0 means all)
 *   3  area_min = (b + 1) / 256          4  area_max = area_min + (1 - area_min) * b / 255
 *   5  aspect_min = (b + 1) / 64         6  aspect_max = aspect_min * (1 + b / 16)
 *   7  image seed = b; eval_resize_ratio = 1 + (b % 16) / 8
 *   8..11  the arbitrary box: x = W * b8 / 256, y = H * b9 / 256,
 *          width = (W - x) * (b10 + 1) / 256, height = (H - y) * (b11 + 1) / 256
 *   8  also the cache's cap on the shorter side: image_size + b8 % 64
 * Every value stays inside what flowers_tl.reader accepts, so a crash found here is reachable
 * from Python with the same bytes.
 *
 * A DecodeError is the documented answer to a bad file and is swallowed; any other exception,
 * a broken invariant (abort), or a sanitizer report is a bug.
 */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../csrc/image_task.h"

namespace {

using namespace flowers;

constexpr size_t kParamBytes = 12;
// Small enough that a header claiming a big image fails fast instead of decoding for seconds
// under the sanitizers (a few hundred bytes of arithmetic-coded scans describe a whole image:
// 1.9 MP x 10 scans took 3 s), which libFuzzer would call a timeout; the checks themselves are
// still exercised. The reader's defaults are 100 MP and 500 scans.
constexpr uint64_t kMaxPixels = uint64_t{1} << 18;
constexpr int kMaxScans = 64;

void require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz_decode: invariant broken: %s\n", what);
    std::abort();
  }
}

// Reads every byte, so a region that points outside its buffer faults under ASan even when
// resize_rgb() would not have touched the bad part.
uint64_t touch(const uint8_t* data, size_t size) {
  uint64_t sum = 0;
  for (size_t i = 0; i < size; ++i) sum += data[i];
  return sum;
}

void check_region(const DecodedRegion& region) {
  require(region.width > 0 && region.height > 0, "region has positive size");
  require(region.stride >= static_cast<size_t>(region.width) * 3, "stride covers a row");
  const size_t end = region.offset + (static_cast<size_t>(region.height) - 1) * region.stride +
                     static_cast<size_t>(region.width) * 3;
  require(end <= region.pixels.size(), "region lies inside its buffer");
  const double slack = 1e-6;
  require(region.box.x >= -slack && region.box.y >= -slack, "crop box starts inside the region");
  require(region.box.x + region.box.width <= region.width + slack &&
              region.box.y + region.box.height <= region.height + slack,
          "crop box ends inside the region");
  for (int y = 0; y < region.height; ++y)
    touch(region.data() + static_cast<size_t>(y) * region.stride,
          static_cast<size_t>(region.width) * 3);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint8_t p[kParamBytes] = {};
  const size_t param_size = size < kParamBytes ? size : kParamBytes;
  std::memcpy(p, data, param_size);
  const uint8_t* file = data + param_size;
  const size_t file_size = size - param_size;

  DecoderOptions decoder;
  decoder.max_pixels = kMaxPixels;
  decoder.max_scans = kMaxScans;
  decoder.allowed_scales = p[2] ? p[2] : 0xFFu;
  decoder.fast_idct = (p[1] & 16) != 0;
  decoder.fancy_upsampling = (p[1] & 32) == 0;
  decoder.skip_rows_below_crop = (p[1] & 128) == 0;

  ImageOptions image;
  image.image_size = 1 + p[0] % 64;
  image.training = (p[1] & 1) != 0;
  image.use_dct_scaling = (p[1] & 2) != 0;
  image.random_flip = (p[1] & 4) != 0;
  image.layout = (p[1] & 8) ? Layout::kCHW : Layout::kHWC;
  image.crop.area_min = (p[3] + 1) / 256.0;
  image.crop.area_max = image.crop.area_min + (1.0 - image.crop.area_min) * p[4] / 255.0;
  image.crop.aspect_min = (p[5] + 1) / 64.0;
  image.crop.aspect_max = image.crop.aspect_min * (1.0 + p[6] / 16.0);
  image.crop.max_attempts = 10;  // flowers_tl.geometry.TRAIN_CROP_MAX_ATTEMPTS
  image.eval_resize_ratio = 1.0 + (p[7] % 16) / 8.0;
  const uint64_t seed = p[7];
  check_image_options(image);  // the options above are always valid; this keeps it so
  const int out_size = image.image_size;

  WorkerContext context(decoder);
  std::vector<uint8_t> out(static_cast<size_t>(out_size) * out_size * 3);

  // 1. The reader's per-image step, exactly as a worker runs it.
  try {
    augment_image(file, file_size, image, seed, &context, out.data());
    touch(out.data(), out.size());
  } catch (const DecodeError&) {
  }

  // 2. ROI decode of an arbitrary box inside the image (decode_crop_resize's path), reusing
  //    the decoder after whatever state step 1 left it in.
  try {
    const JpegInfo info = context.decoder.read_info(file, file_size);
    require(info.width > 0 && info.height > 0, "header has positive size");
    require(static_cast<uint64_t>(info.width) * info.height <= kMaxPixels, "pixel limit holds");
    CropBox box;
    box.x = info.width * (p[8] / 256.0);
    box.y = info.height * (p[9] / 256.0);
    box.width = (info.width - box.x) * ((p[10] + 1) / 256.0);
    box.height = (info.height - box.y) * ((p[11] + 1) / 256.0);
    context.decoder.decode_region(box, out_size, out_size, image.use_dct_scaling,
                                  &context.region);
    check_region(context.region);
    const DecodedRegion& region = context.region;
    resize_rgb(region.data(), region.width, region.height, region.stride, region.box, out_size,
               out_size, (p[1] & 64) != 0, image.layout, out.data(), &context.scratch);
    touch(out.data(), out.size());
  } catch (const DecodeError&) {
  }

  // 3. The decoded-image cache: the fill (whole image, shorter side capped) into a buffer of
  //    exactly the planned size, then the crop augment_image would take, from those pixels.
  try {
    const JpegInfo info = context.decoder.read_info(file, file_size);
    const int short_side = out_size + p[8] % 64;
    int cached_width = 0, cached_height = 0;
    cached_size(info.width, info.height, short_side, &cached_width, &cached_height);
    require(cached_width >= 1 && cached_height >= 1 && cached_width <= info.width &&
                cached_height <= info.height,
            "cached size is positive and no larger than the image");
    require(std::min(cached_width, cached_height) == std::min(short_side, std::min(info.width, info.height)),
            "cached shorter side is the cap, or the image's own");
    std::vector<uint8_t> cached(static_cast<size_t>(cached_width) * cached_height * 3);
    decode_for_cache(info, cached_width, cached_height, image.use_dct_scaling, &context,
                     cached.data());
    touch(cached.data(), cached.size());
    augment_cached(cached.data(), cached_width, cached_height, info.width, info.height, image,
                   seed, &context.scratch, out.data());
    touch(out.data(), out.size());
  } catch (const DecodeError&) {
  }

  // 4. Full decode: packed rows of the header's size.
  try {
    const JpegInfo info = context.decoder.read_info(file, file_size);
    context.decoder.decode(file, file_size, &context.region);
    const DecodedRegion& region = context.region;
    require(region.width == info.width && region.height == info.height, "full size decoded");
    require(region.offset == 0 && region.stride == static_cast<size_t>(region.width) * 3,
            "full decode is packed");
    check_region(region);
  } catch (const DecodeError&) {
  }
  return 0;
}
