/* The only file that knows about Python: pybind11 bindings of the C++ reader as the private
 * module flowers_tl._reader. Blocking calls run without the GIL; batches reach numpy without a
 * copy (the array's base owns a reference to the C++ buffer). */
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <jpeglib.h>

#include "batch_reader.h"

namespace py = pybind11;
using namespace flowers;

namespace {

#define FLOWERS_STRINGIFY_(x) #x
#define FLOWERS_STRINGIFY(x) FLOWERS_STRINGIFY_(x)

Layout parse_layout(const std::string& layout) {
  if (layout == "NHWC" || layout == "HWC") return Layout::kHWC;
  if (layout == "NCHW" || layout == "CHW") return Layout::kCHW;
  throw std::invalid_argument("layout must be 'NHWC' or 'NCHW', got '" + layout + "'");
}

// Moves `pixels` onto the heap and lets the array own it.
py::array_t<uint8_t> owning_array(std::vector<uint8_t>&& pixels, std::vector<py::ssize_t> shape) {
  auto* owner = new std::vector<uint8_t>(std::move(pixels));
  py::capsule base(owner, [](void* p) { delete static_cast<std::vector<uint8_t>*>(p); });
  return py::array_t<uint8_t>(shape, owner->data(), base);
}

std::vector<py::ssize_t> image_shape(int height, int width, Layout layout) {
  if (layout == Layout::kHWC) return {height, width, 3};
  return {3, height, width};
}

// Bytes-like input, viewed without a copy; the caller keeps the object alive.
std::pair<const uint8_t*, size_t> view_bytes(const py::buffer& data) {
  py::buffer_info info = data.request();
  return {static_cast<const uint8_t*>(info.ptr), static_cast<size_t>(info.size * info.itemsize)};
}

DecoderOptions make_decoder_options(uint64_t max_pixels, unsigned allowed_scales, bool fast_idct,
                                    bool fancy_upsampling) {
  DecoderOptions options;
  options.max_pixels = max_pixels;
  options.allowed_scales = allowed_scales;
  options.fast_idct = fast_idct;
  options.fancy_upsampling = fancy_upsampling;
  return options;
}

ImageOptions make_image_options(int image_size, bool training, std::pair<double, double> area_range,
                                std::pair<double, double> aspect_range, bool random_flip,
                                double eval_resize_ratio, bool use_dct_scaling,
                                const std::string& layout) {
  ImageOptions options;
  options.image_size = image_size;
  options.training = training;
  options.crop.area_min = area_range.first;
  options.crop.area_max = area_range.second;
  options.crop.aspect_min = aspect_range.first;
  options.crop.aspect_max = aspect_range.second;
  options.random_flip = random_flip;
  options.eval_resize_ratio = eval_resize_ratio;
  options.use_dct_scaling = use_dct_scaling;
  options.layout = parse_layout(layout);
  return options;
}

py::dict stats_dict(const ReaderStats& stats) {
  py::list bad;
  for (const BadFile& file : stats.first_bad_files) bad.append(py::make_tuple(file.path, file.reason));
  py::dict out;
  out["images_decoded"] = stats.images_decoded;
  out["failed_reads"] = stats.failed_reads;
  out["bad_files"] = stats.bad_files;
  out["first_bad_files"] = bad;
  out["batches_delivered"] = stats.batches_delivered;
  out["consumer_wait_seconds"] = stats.consumer_wait_seconds;
  return out;
}

// Waits for the next batch without the GIL, in short slices so Ctrl-C (or any pending signal
// handler that raises) interrupts the wait. Returns None at the end of the stream.
py::object next_batch(BatchReader& reader, int slice_ms) {
  Batch batch;
  while (true) {
    BatchReader::Status status;
    {
      py::gil_scoped_release release;
      status = reader.next(&batch, slice_ms);
    }
    if (status == BatchReader::Status::kEnd) return py::none();
    if (status == BatchReader::Status::kBatch) break;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
  const ReaderOptions& options = reader.options();
  const int size = options.image.image_size;
  std::vector<py::ssize_t> shape = {batch.size};
  for (py::ssize_t dim : image_shape(size, size, options.image.layout)) shape.push_back(dim);
  // Both arrays keep the buffer alive; it goes back to the pool when both are gone.
  auto* images_owner = new std::shared_ptr<BatchBuffer>(batch.buffer);
  py::capsule images_base(images_owner, [](void* p) {
    delete static_cast<std::shared_ptr<BatchBuffer>*>(p);
  });
  auto* labels_owner = new std::shared_ptr<BatchBuffer>(batch.buffer);
  py::capsule labels_base(labels_owner, [](void* p) {
    delete static_cast<std::shared_ptr<BatchBuffer>*>(p);
  });
  py::array_t<uint8_t> images(shape, batch.buffer->images.data(), images_base);
  py::array_t<int32_t> labels({static_cast<py::ssize_t>(batch.size)}, batch.buffer->labels.data(),
                              labels_base);
  return py::make_tuple(images, labels, batch.epoch, batch.step);
}

}  // namespace

PYBIND11_MODULE(_reader, m) {
  m.doc() = "C++ JPEG decode-and-augment reader (private: use flowers_tl.reader)";
  py::register_exception<DecodeError>(m, "DecodeError", PyExc_ValueError);

  m.def("build_info", [] {
    py::dict info;
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#else
    info["compiler"] = "unknown";
#endif
#ifdef LIBJPEG_TURBO_VERSION
    info["libjpeg_turbo_version"] = FLOWERS_STRINGIFY(LIBJPEG_TURBO_VERSION);
#else
    info["libjpeg_turbo_version"] = py::none();
#endif
    info["jpeg_lib_version"] = JPEG_LIB_VERSION;
    info["cplusplus"] = static_cast<long>(__cplusplus);
    return info;
  });

  m.def("jpeg_info", [](const py::buffer& data, uint64_t max_pixels) {
    auto [ptr, size] = view_bytes(data);
    JpegInfo info;
    {
      py::gil_scoped_release release;
      JpegDecoder decoder(make_decoder_options(max_pixels, 0xFFu, false, true));
      info = decoder.read_info(ptr, size);
    }
    py::dict out;
    out["width"] = info.width;
    out["height"] = info.height;
    out["components"] = info.components;
    out["color_space"] = info.color_space;
    out["progressive"] = info.progressive;
    return out;
  }, py::arg("data"), py::arg("max_pixels") = 100000000ull);

  m.def("decode_jpeg", [](const py::buffer& data, uint64_t max_pixels, bool fast_idct,
                          bool fancy_upsampling) {
    auto [ptr, size] = view_bytes(data);
    DecodedRegion region;
    {
      py::gil_scoped_release release;
      JpegDecoder decoder(make_decoder_options(max_pixels, 0xFFu, fast_idct, fancy_upsampling));
      decoder.decode(ptr, size, &region);
    }
    // A full decode has no crop: the rows are packed (stride == width * 3, offset 0).
    return owning_array(std::move(region.pixels), {region.height, region.width, 3});
  }, py::arg("data"), py::arg("max_pixels") = 100000000ull, py::arg("fast_idct") = false,
     py::arg("fancy_upsampling") = true);

  m.def("decode_crop_resize", [](const py::buffer& data, std::tuple<double, double, double, double> box,
                                 int out_width, int out_height, bool flip, bool use_dct_scaling,
                                 const std::string& layout, unsigned allowed_scales,
                                 uint64_t max_pixels, bool fast_idct, bool fancy_upsampling) {
    if (out_width <= 0 || out_height <= 0) throw std::invalid_argument("output size must be positive");
    auto [ptr, size] = view_bytes(data);
    const Layout out_layout = parse_layout(layout);
    CropBox crop{std::get<0>(box), std::get<1>(box), std::get<2>(box), std::get<3>(box)};
    std::vector<uint8_t> pixels(static_cast<size_t>(out_width) * out_height * 3);
    int scale = 8;
    {
      py::gil_scoped_release release;
      WorkerContext context(
          make_decoder_options(max_pixels, allowed_scales, fast_idct, fancy_upsampling));
      const JpegInfo info = context.decoder.read_info(ptr, size);
      if (crop.width <= 0 || crop.height <= 0 || crop.x < 0 || crop.y < 0 ||
          crop.x + crop.width > info.width || crop.y + crop.height > info.height)
        throw std::invalid_argument("box must lie inside the " + std::to_string(info.width) + "x" +
                                    std::to_string(info.height) + " image");
      context.decoder.decode_region(crop, out_width, out_height, use_dct_scaling, &context.region);
      const DecodedRegion& region = context.region;
      scale = region.scale_num;
      resize_rgb(region.data(), region.width, region.height, region.stride, region.box, out_width,
                 out_height, flip, out_layout, pixels.data(), &context.scratch);
    }
    return py::make_tuple(owning_array(std::move(pixels), image_shape(out_height, out_width, out_layout)),
                          scale);
  }, py::arg("data"), py::arg("box"), py::arg("out_width"), py::arg("out_height"),
     py::arg("flip") = false, py::arg("use_dct_scaling") = true, py::arg("layout") = "NHWC",
     py::arg("allowed_scales") = 0xFFu, py::arg("max_pixels") = 100000000ull,
     py::arg("fast_idct") = false, py::arg("fancy_upsampling") = true);

  m.def("augment", [](const py::buffer& data, int image_size, bool training, uint64_t seed,
                      std::pair<double, double> area_range, std::pair<double, double> aspect_range,
                      bool random_flip, double eval_resize_ratio, bool use_dct_scaling,
                      const std::string& layout, unsigned allowed_scales, uint64_t max_pixels,
                      bool fast_idct, bool fancy_upsampling) {
    if (image_size <= 0) throw std::invalid_argument("image_size must be positive");
    auto [ptr, size] = view_bytes(data);
    const ImageOptions options = make_image_options(image_size, training, area_range, aspect_range,
                                                    random_flip, eval_resize_ratio,
                                                    use_dct_scaling, layout);
    std::vector<uint8_t> pixels(static_cast<size_t>(image_size) * image_size * 3);
    {
      py::gil_scoped_release release;
      WorkerContext context(
          make_decoder_options(max_pixels, allowed_scales, fast_idct, fancy_upsampling));
      augment_image(ptr, size, options, seed, &context, pixels.data());
    }
    return owning_array(std::move(pixels), image_shape(image_size, image_size, options.layout));
  }, py::arg("data"), py::arg("image_size"), py::arg("training") = true, py::arg("seed") = 0,
     py::arg("area_range") = std::make_pair(0.08, 1.0),
     py::arg("aspect_range") = std::make_pair(3.0 / 4, 4.0 / 3), py::arg("random_flip") = true,
     py::arg("eval_resize_ratio") = 256.0 / 224.0, py::arg("use_dct_scaling") = true,
     py::arg("layout") = "NHWC", py::arg("allowed_scales") = 0xFFu,
     py::arg("max_pixels") = 100000000ull, py::arg("fast_idct") = false,
     py::arg("fancy_upsampling") = true);

  m.def("random_resized_crop", [](int width, int height, uint64_t seed,
                                  std::pair<double, double> area_range,
                                  std::pair<double, double> aspect_range) {
    CropOptions options;
    options.area_min = area_range.first;
    options.area_max = area_range.second;
    options.aspect_min = aspect_range.first;
    options.aspect_max = aspect_range.second;
    SplitMix64 rng(seed);
    const CropBox box = random_resized_crop(width, height, options, &rng);
    return py::make_tuple(box.x, box.y, box.width, box.height);
  }, py::arg("width"), py::arg("height"), py::arg("seed"),
     py::arg("area_range") = std::make_pair(0.08, 1.0),
     py::arg("aspect_range") = std::make_pair(3.0 / 4, 4.0 / 3),
     "The training crop box (x, y, w, h) the reader draws for an image seed (for tests)");

  m.def("choose_dct_scale", &choose_dct_scale, py::arg("box_width"), py::arg("box_height"),
        py::arg("min_width"), py::arg("min_height"), py::arg("allowed_scales") = 0xFFu);

  py::class_<BatchReader>(m, "BatchReader")
      .def(py::init([](std::vector<std::string> paths, std::vector<int32_t> labels, int batch_size,
                       int image_size, bool training, bool shuffle, int num_threads,
                       const std::string& layout, uint64_t seed, int prefetch, int shard_index,
                       int num_shards, bool drop_remainder, int64_t num_epochs, int64_t start_batch,
                       std::pair<double, double> area_range, std::pair<double, double> aspect_range,
                       bool random_flip, double eval_resize_ratio, bool use_dct_scaling,
                       unsigned allowed_scales, uint64_t max_pixels, bool fast_idct,
                       bool fancy_upsampling, bool skip_bad_files) {
             ReaderOptions options;
             options.batch_size = batch_size;
             options.num_threads = num_threads;
             options.shuffle = shuffle;
             options.seed = seed;
             options.prefetch = prefetch;
             options.shard_index = shard_index;
             options.num_shards = num_shards;
             options.drop_remainder = drop_remainder;
             options.num_epochs = num_epochs;
             options.start_batch = start_batch;
             options.skip_bad_files = skip_bad_files;
             options.decoder =
                 make_decoder_options(max_pixels, allowed_scales, fast_idct, fancy_upsampling);
             options.image = make_image_options(image_size, training, area_range, aspect_range,
                                                random_flip, eval_resize_ratio, use_dct_scaling,
                                                layout);
             py::gil_scoped_release release;  // starting threads
             return std::make_unique<BatchReader>(std::move(paths), std::move(labels), options);
           }),
           py::arg("paths"), py::arg("labels"), py::arg("batch_size"), py::arg("image_size"),
           py::arg("training"), py::arg("shuffle"), py::arg("num_threads"), py::arg("layout"),
           py::arg("seed"), py::arg("prefetch"), py::arg("shard_index"), py::arg("num_shards"),
           py::arg("drop_remainder"), py::arg("num_epochs"), py::arg("start_batch"),
           py::arg("area_range"),
           py::arg("aspect_range"), py::arg("random_flip"), py::arg("eval_resize_ratio"),
           py::arg("use_dct_scaling"), py::arg("allowed_scales"), py::arg("max_pixels"),
           py::arg("fast_idct"), py::arg("fancy_upsampling"), py::arg("skip_bad_files"))
      .def("next", &next_batch, py::arg("slice_ms") = 50,
           "(images, labels, epoch, step) or None at the end of the stream")
      .def("close", &BatchReader::close, py::call_guard<py::gil_scoped_release>())
      .def("stats", [](const BatchReader& reader) { return stats_dict(reader.stats()); })
      .def_property_readonly("steps_per_epoch", &BatchReader::steps_per_epoch)
      .def_property_readonly("images_per_epoch", &BatchReader::images_per_epoch);
}
