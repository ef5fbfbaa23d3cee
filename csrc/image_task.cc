/* File reading and the per-image decode-and-augment step (see image_task.h). */
#include "image_task.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace flowers {

void read_file(const std::string& path, std::vector<uint8_t>* bytes) {
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
  bytes->resize(static_cast<size_t>(status.st_size));
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

void augment_image(const uint8_t* data, size_t size, const ImageOptions& options,
                   uint64_t image_seed, WorkerContext* context, uint8_t* out) {
  const JpegInfo info = context->decoder.read_info(data, size);
  SplitMix64 rng(image_seed);
  CropBox box;
  bool flip = false;
  if (options.training) {
    box = random_resized_crop(info.width, info.height, options.crop, &rng);
    flip = options.random_flip && rng.uniform() < 0.5;
  } else {
    const double resize_size = std::round(options.image_size * options.eval_resize_ratio);
    box = center_crop(info.width, info.height, options.image_size, resize_size);
  }
  context->decoder.decode_region(box, options.image_size, options.image_size,
                                 options.use_dct_scaling, &context->region);
  const DecodedRegion& region = context->region;
  resize_rgb(region.data(), region.width, region.height, region.stride, region.box, options.image_size,
             options.image_size, flip, options.layout, out, &context->scratch);
}

}  // namespace flowers
