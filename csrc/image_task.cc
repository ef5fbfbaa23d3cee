/* File reading and the per-image decode-and-augment step (see image_task.h). */
#include "image_task.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

namespace flowers {

void read_file(const std::string& path, std::vector<uint8_t>* bytes) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                       &std::fclose);
  if (!file) throw DecodeError(std::string("cannot open: ") + std::strerror(errno));
  if (std::fseek(file.get(), 0, SEEK_END) != 0)
    throw DecodeError(std::string("cannot seek: ") + std::strerror(errno));
  const long length = std::ftell(file.get());
  if (length < 0) throw DecodeError(std::string("cannot tell size: ") + std::strerror(errno));
  std::rewind(file.get());
  bytes->resize(static_cast<size_t>(length));
  if (length > 0 && std::fread(bytes->data(), 1, bytes->size(), file.get()) != bytes->size())
    throw DecodeError(std::string("short read: ") + std::strerror(errno));
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
