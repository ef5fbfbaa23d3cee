/* File reading and the per-image decode-and-augment step (see image_task.h). */
#include "image_task.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <stdexcept>

namespace flowers {

void read_file(const std::string& path, std::vector<uint8_t>* bytes, size_t max_bytes) {
  // open(2) rather than fopen: O_NONBLOCK so that a FIFO named *.jpg cannot block the worker
  // (and close(), which joins it) forever, and fstat so that only regular files are read (a
  // directory's "size" on ext4 is 2^63 - 1, which made the buffer allocation throw).
  struct FileDescriptor {
    int fd;
    ~FileDescriptor() { if (fd >= 0) ::close(fd); }
  } file{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  const int fd = file.fd;
  if (fd < 0) throw DecodeError(std::string("cannot open: ") + std::strerror(errno));
  struct stat status;
  if (::fstat(fd, &status) != 0) throw DecodeError(std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(status.st_mode)) {
    const char* kind = S_ISDIR(status.st_mode)    ? "a directory"
                       : S_ISFIFO(status.st_mode) ? "a FIFO"
                       : S_ISSOCK(status.st_mode) ? "a socket"
                                                  : "a device";
    throw DecodeError(std::string("not a regular file (") + kind + ")");
  }
  if (static_cast<uint64_t>(status.st_size) > kMaxFileBytes)
    throw DecodeError("file is " + std::to_string(status.st_size) + " bytes, over the " +
                      std::to_string(kMaxFileBytes >> 20) + " MiB limit for one image");
  bytes->resize(std::min(static_cast<size_t>(status.st_size), max_bytes));
  size_t done = 0;
  while (done < bytes->size()) {
    const ssize_t got = ::read(fd, bytes->data() + done, bytes->size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw DecodeError(std::string("cannot read: ") + std::strerror(errno));
    if (got == 0) break;  // the file shrank since fstat: decode what is there
    done += static_cast<size_t>(got);
  }
  bytes->resize(done);
}

void check_image_options(const ImageOptions& options) {
  auto check = [](bool condition, const std::string& message) {
    if (!condition) throw std::invalid_argument(message);
  };
  const CropOptions& crop = options.crop;
  check(options.image_size > 0, "image_size must be positive");
  check(crop.area_min > 0 && crop.area_min <= crop.area_max && crop.area_max <= 1.0,
        "area range must satisfy 0 < min <= max <= 1 (got " + std::to_string(crop.area_min) +
            ".." + std::to_string(crop.area_max) + "; flowers_tl.geometry has the recipe's)");
  check(crop.aspect_min > 0 && crop.aspect_min <= crop.aspect_max,
        "aspect range must satisfy 0 < min <= max (got " + std::to_string(crop.aspect_min) +
            ".." + std::to_string(crop.aspect_max) + "; flowers_tl.geometry has the recipe's)");
  check(crop.max_attempts >= 1, "crop max_attempts must be >= 1");
  check(options.eval_resize_ratio >= 1.0,
        "eval_resize_ratio must be >= 1 (got " + std::to_string(options.eval_resize_ratio) +
            "; flowers_tl.geometry has the recipe's)");
}

void choose_crop(int width, int height, const ImageOptions& options, uint64_t image_seed,
                 CropBox* box, bool* flip) {
  SplitMix64 rng(image_seed);
  *flip = false;
  if (options.training) {
    *box = random_resized_crop(width, height, options.crop, &rng);
    *flip = options.random_flip && rng.uniform() < 0.5;
  } else {
    const double resize_size = std::round(options.image_size * options.eval_resize_ratio);
    *box = center_crop(width, height, options.image_size, resize_size);
  }
}

void augment_image(const uint8_t* data, size_t size, const ImageOptions& options,
                   uint64_t image_seed, WorkerContext* context, uint8_t* out) {
  const JpegInfo info = context->decoder.read_info(data, size);
  CropBox box;
  bool flip = false;
  choose_crop(info.width, info.height, options, image_seed, &box, &flip);
  context->decoder.decode_region(box, options.image_size, options.image_size,
                                 options.use_dct_scaling, &context->region);
  const DecodedRegion& region = context->region;
  resize_rgb(region.data(), region.width, region.height, region.stride, region.box, options.image_size,
             options.image_size, flip, options.layout, out, &context->scratch);
}

}  // namespace flowers

namespace flowers {

void cached_size(int width, int height, int short_side, int* cached_width, int* cached_height) {
  *cached_width = width;
  *cached_height = height;
  if (std::min(width, height) <= short_side) return;
  // The shorter side becomes exactly short_side, the longer one keeps the aspect ratio.
  if (width <= height) {
    *cached_width = short_side;
    *cached_height = std::max(1, static_cast<int>(std::lround(height * (double(short_side) / width))));
  } else {
    *cached_height = short_side;
    *cached_width = std::max(1, static_cast<int>(std::lround(width * (double(short_side) / height))));
  }
}

void decode_for_cache(const JpegInfo& info, int cached_width, int cached_height,
                      bool use_dct_scaling, WorkerContext* context, uint8_t* out) {
  const CropBox whole{0, 0, static_cast<double>(info.width), static_cast<double>(info.height)};
  context->decoder.decode_region(whole, cached_width, cached_height, use_dct_scaling,
                                 &context->region);
  const DecodedRegion& region = context->region;
  const size_t row_bytes = static_cast<size_t>(cached_width) * 3;
  if (region.width == cached_width && region.height == cached_height) {
    // Kept at the decoded size (a small image, or a DCT scale that lands exactly on it): the
    // pixels as they are; a 1:1 resample would be the identity at extra cost.
    for (int y = 0; y < cached_height; ++y)
      std::memcpy(out + y * row_bytes, region.data() + y * region.stride, row_bytes);
    return;
  }
  resize_rgb(region.data(), region.width, region.height, region.stride, region.box, cached_width,
             cached_height, false, Layout::kHWC, out, &context->scratch);
}

void augment_cached(const uint8_t* pixels, int cached_width, int cached_height, int width,
                    int height, const ImageOptions& options, uint64_t image_seed,
                    ResizeScratch* scratch, uint8_t* out) {
  CropBox box;
  bool flip = false;
  choose_crop(width, height, options, image_seed, &box, &flip);
  const double scale_x = static_cast<double>(cached_width) / width;
  const double scale_y = static_cast<double>(cached_height) / height;
  const CropBox mapped{box.x * scale_x, box.y * scale_y, box.width * scale_x,
                       box.height * scale_y};
  resize_rgb(pixels, cached_width, cached_height, static_cast<size_t>(cached_width) * 3, mapped,
             options.image_size, options.image_size, flip, options.layout, out, scratch);
}

}  // namespace flowers
