/* The only file that knows about Python: pybind11 bindings of the C++ reader as the private
 * module flowers_tl._reader. The C++ option structs (ReaderOptions, ImageOptions, CropOptions,
 * DecoderOptions) are bound once, as keyword-constructed classes, and every entry point takes
 * them instead of positional flag lists. Blocking calls run without the GIL; batches reach numpy
 * without a copy (the array's base owns a reference to the C++ buffer). */
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <jpeglib.h>

#include "batch_reader.h"
#include "profile.h"

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

// Registers an options struct as a Python class: def_readwrite fields, keyword-only
// construction that refuses a misnamed option or a wrongly typed value (TypeError naming it),
// and __repr__ / __eq__ over the fields. No defaults are written here: a default-constructed
// struct supplies them (see batch_reader.h for where each one lives).
template <typename T>
class OptionsClass {
 public:
  OptionsClass(py::module_& m, const char* name, const char* doc)
      : class_(m, name, doc), name_(name) {}

  template <typename Member>
  OptionsClass& field(const char* name, Member T::*member, const char* doc) {
    class_.def_readwrite(name, member, doc);
    fields_.push_back(name);
    return *this;
  }

  template <typename Getter, typename Setter>
  OptionsClass& property(const char* name, Getter getter, Setter setter, const char* doc) {
    class_.def_property(name, getter, setter, doc);
    fields_.push_back(name);
    return *this;
  }

  py::class_<T>& finish() {
    const std::vector<std::string> fields = fields_;
    const std::string type_name = name_;
    class_.attr("_fields") = py::tuple(py::cast(fields));
    class_.def(py::init([fields, type_name](const py::kwargs& kwargs) {
      T options;
      py::object view = py::cast(&options, py::return_value_policy::reference);
      for (auto item : kwargs) {
        const std::string key = py::str(item.first);
        if (std::find(fields.begin(), fields.end(), key) == fields.end())
          throw py::type_error(type_name + ": unknown option '" + key + "' (options: " +
                               join(fields) + ")");
        try {
          py::setattr(view, item.first, item.second);
        } catch (py::error_already_set& error) {
          if (!error.matches(PyExc_TypeError)) throw;
          const py::handle expected = py::type::handle_of(view.attr(item.first));
          throw py::type_error(type_name + ": " + key + "=" + repr(item.second) +
                               " has the wrong type: expected " +
                               std::string(py::str(expected.attr("__name__"))) + ", got " +
                               std::string(py::str(py::type::handle_of(item.second).attr("__name__"))));
        }
      }
      return options;
    }), "Keyword arguments only, one per field; the others keep their defaults.");
    class_.def("__repr__", [fields, type_name](py::handle self) {
      std::string out = type_name + "(";
      for (size_t i = 0; i < fields.size(); ++i)
        out += (i ? ", " : "") + fields[i] + "=" + repr(self.attr(fields[i].c_str()));
      return out + ")";
    });
    class_.def("__eq__", [fields](py::handle self, py::handle other) {
      if (!py::isinstance<T>(other)) return false;
      for (const std::string& field : fields) {
        py::object a = self.attr(field.c_str()), b = other.attr(field.c_str());
        if (a.equal(b)) continue;
        // Two unset (NaN) values are the same setting.
        const bool both_nan = py::isinstance<py::float_>(a) && py::isinstance<py::float_>(b) &&
                              std::isnan(a.cast<double>()) && std::isnan(b.cast<double>());
        if (!both_nan) return false;
      }
      return true;
    }, py::is_operator());
    class_.attr("__hash__") = py::none();  // mutable
    return class_;
  }

 private:
  static std::string repr(py::handle value) { return py::repr(value); }
  static std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
    return out;
  }

  py::class_<T> class_;
  std::string name_;
  std::vector<std::string> fields_;
};

std::string layout_name(Layout layout) { return layout == Layout::kHWC ? "NHWC" : "NCHW"; }

std::vector<int> dct_scales_of(unsigned mask) {
  std::vector<int> scales;
  for (int m = 1; m <= 8; ++m)
    if (mask & (1u << (m - 1))) scales.push_back(m);
  return scales;
}

unsigned dct_scale_mask(const std::vector<int>& scales) {
  unsigned mask = 0;
  for (int m : scales) {
    if (m < 1 || m > 8) mask = 0x100u;  // marks the list as bad
    mask |= 1u << (std::clamp(m, 1, 8) - 1);
  }
  if (scales.empty() || mask > 0xFFu) {
    std::string listed;
    for (int m : scales) listed += (listed.empty() ? "" : ", ") + std::to_string(m);
    throw std::invalid_argument("dct_scales must be a non-empty subset of 1..8, got [" + listed +
                                "]");
  }
  return mask;
}

void bind_options(py::module_& m) {
  OptionsClass<DecoderOptions>(m, "DecoderOptions", "How libjpeg decodes (see jpeg_decode.h).")
      .field("max_pixels", &DecoderOptions::max_pixels,
             "headers claiming more pixels are refused before any allocation")
      .field("max_scans", &DecoderOptions::max_scans, "files with more scans are refused")
      .property("dct_scales",
                [](const DecoderOptions& o) { return dct_scales_of(o.allowed_scales); },
                [](DecoderOptions& o, const std::vector<int>& scales) {
                  o.allowed_scales = dct_scale_mask(scales);
                },
                "allowed M of the DCT scale M/8 (a list of 1..8)")
      .field("fast_idct", &DecoderOptions::fast_idct, "JDCT_IFAST instead of JDCT_ISLOW")
      .field("fancy_upsampling", &DecoderOptions::fancy_upsampling,
             "smooth chroma upsampling; False: libjpeg's merged upsampler")
      .field("skip_rows_below_crop", &DecoderOptions::skip_rows_below_crop,
             "multi-scan files: each scan jumps past the rows below a crop")
      .finish();

  OptionsClass<CropOptions>(m, "CropOptions",
                            "Random-resized-crop ranges (unset: flowers_tl.geometry sets them).")
      .field("area_min", &CropOptions::area_min, "fraction of the image area")
      .field("area_max", &CropOptions::area_max, "fraction of the image area")
      .field("aspect_min", &CropOptions::aspect_min, "width / height")
      .field("aspect_max", &CropOptions::aspect_max, "width / height")
      .field("max_attempts", &CropOptions::max_attempts, "tries before the centre-crop fallback")
      .finish();

  OptionsClass<ImageOptions>(m, "ImageOptions", "One image's crop, resize and layout.")
      .field("image_size", &ImageOptions::image_size, "output side in pixels")
      .field("training", &ImageOptions::training, "random crop and flip; False: centre crop")
      .field("crop", &ImageOptions::crop, "CropOptions (training)")
      .field("random_flip", &ImageOptions::random_flip, "mirror half the training crops")
      .field("eval_resize_ratio", &ImageOptions::eval_resize_ratio,
             "eval: shorter side to round(image_size * this), then the centre crop")
      .field("use_dct_scaling", &ImageOptions::use_dct_scaling,
             "decode at the smallest allowed DCT scale that covers the output")
      .property("layout", [](const ImageOptions& o) { return layout_name(o.layout); },
                [](ImageOptions& o, const std::string& layout) { o.layout = parse_layout(layout); },
                "'NHWC' or 'NCHW'")
      .finish();

  OptionsClass<CacheOptions>(m, "CacheOptions", "The decoded-image cache (image_cache.h).")
      .field("location", &CacheOptions::location,
             "'': no cache; 'memory'; otherwise a folder for the cache file")
      .field("short_side", &CacheOptions::short_side, "cap on each cached image's shorter side")
      .field("max_bytes", &CacheOptions::max_bytes, "a larger cache streams instead")
      .field("version", &CacheOptions::version, "the build's identity, part of a file's key")
      .finish();

  OptionsClass<ReaderOptions>(m, "ReaderOptions", "Everything a BatchReader does (batch_reader.h).")
      .field("batch_size", &ReaderOptions::batch_size, "images per batch")
      .field("num_threads", &ReaderOptions::num_threads, "decode threads")
      .field("shuffle", &ReaderOptions::shuffle, "a new seeded file order every epoch")
      .field("seed", &ReaderOptions::seed, "fixes the order, the crops and the flips")
      .field("prefetch", &ReaderOptions::prefetch, "batches decoded ahead of the consumer")
      .field("shard_index", &ReaderOptions::shard_index, "this worker's shard")
      .field("num_shards", &ReaderOptions::num_shards, "shards the file list is dealt into")
      .field("drop_remainder", &ReaderOptions::drop_remainder, "full batches only")
      .field("num_epochs", &ReaderOptions::num_epochs, "< 0: repeat forever")
      .field("start_batch", &ReaderOptions::start_batch, "first batch of the stream (resume)")
      .field("skip_bad_files", &ReaderOptions::skip_bad_files,
             "record bad files and go on; False: the first one stops the reader")
      .field("fill_bad_slots", &ReaderOptions::fill_bad_slots,
             "a bad file's slot: a copy of a good image; False: zeros and label -1")
      .field("decoder", &ReaderOptions::decoder, "DecoderOptions")
      .field("image", &ReaderOptions::image, "ImageOptions")
      .field("cache", &ReaderOptions::cache, "CacheOptions")
      .finish();
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
  out["images_from_cache"] = stats.images_from_cache;
  out["cache"] = stats.cache;
  out["cache_reused"] = stats.cache_reused;
  out["cache_bytes"] = stats.cache_bytes;
  out["cache_fill_seconds"] = stats.cache_fill_seconds;
  out["cache_message"] = stats.cache_message;
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

  bind_options(m);

  m.def("jpeg_info", [](const py::buffer& data, const DecoderOptions& decoder_options) {
    auto [ptr, size] = view_bytes(data);
    const DecoderOptions options = decoder_options;  // a copy: read without the GIL
    JpegInfo info;
    {
      py::gil_scoped_release release;
      JpegDecoder decoder(options);
      info = decoder.read_info(ptr, size);
    }
    py::dict out;
    out["width"] = info.width;
    out["height"] = info.height;
    out["components"] = info.components;
    out["color_space"] = info.color_space;
    out["progressive"] = info.progressive;
    return out;
  }, py::arg("data"), py::arg("decoder_options") = DecoderOptions());

  m.def("decode_jpeg", [](const py::buffer& data, const DecoderOptions& decoder_options) {
    auto [ptr, size] = view_bytes(data);
    const DecoderOptions options = decoder_options;
    DecodedRegion region;
    {
      py::gil_scoped_release release;
      JpegDecoder decoder(options);
      decoder.decode(ptr, size, &region);
    }
    // A full decode has no crop: the rows are packed (stride == width * 3, offset 0).
    return owning_array(std::move(region.pixels), {region.height, region.width, 3});
  }, py::arg("data"), py::arg("decoder_options") = DecoderOptions());

  // The ROI path on its own, for tests: decode the part of the image that covers `box` (x, y,
  // w, h in source pixels) and resample it to out_width x out_height. image_options supplies
  // use_dct_scaling and layout only; simd=False takes the portable resampling passes.
  m.def("decode_crop_resize", [](const py::buffer& data, std::tuple<double, double, double, double> box,
                                 int out_width, int out_height, bool flip,
                                 const ImageOptions& image_options,
                                 const DecoderOptions& decoder_options, bool simd) {
    if (out_width <= 0 || out_height <= 0) throw std::invalid_argument("output size must be positive");
    auto [ptr, size] = view_bytes(data);
    const ImageOptions image = image_options;
    const DecoderOptions decoder = decoder_options;
    CropBox crop{std::get<0>(box), std::get<1>(box), std::get<2>(box), std::get<3>(box)};
    std::vector<uint8_t> pixels(static_cast<size_t>(out_width) * out_height * 3);
    int scale = 8, scans_cut = 0;
    {
      py::gil_scoped_release release;
      WorkerContext context(decoder);
      const JpegInfo info = context.decoder.read_info(ptr, size);
      if (crop.width <= 0 || crop.height <= 0 || crop.x < 0 || crop.y < 0 ||
          crop.x + crop.width > info.width || crop.y + crop.height > info.height)
        throw std::invalid_argument("box must lie inside the " + std::to_string(info.width) + "x" +
                                    std::to_string(info.height) + " image");
      context.decoder.decode_region(crop, out_width, out_height, image.use_dct_scaling,
                                    &context.region);
      const DecodedRegion& region = context.region;
      scale = region.scale_num;
      scans_cut = region.scans_cut;
      context.scratch.simd = simd;
      resize_rgb(region.data(), region.width, region.height, region.stride, region.box, out_width,
                 out_height, flip, image.layout, pixels.data(), &context.scratch);
    }
    return py::make_tuple(owning_array(std::move(pixels), image_shape(out_height, out_width, image.layout)),
                          scale, scans_cut);
  }, py::arg("data"), py::arg("box"), py::arg("out_width"), py::arg("out_height"),
     py::arg("flip"), py::arg("image_options"), py::arg("decoder_options"),
     py::arg("simd") = true,
     "(pixels, DCT scale M of M/8 used, scans stopped below the box); simd=False resamples "
     "without the AVX2 passes (same bytes)");

  m.def("augment", [](const py::buffer& data, const ImageOptions& image_options,
                      const DecoderOptions& decoder_options, uint64_t seed) {
    const ImageOptions options = image_options;
    const DecoderOptions decoder = decoder_options;
    check_image_options(options);
    auto [ptr, size] = view_bytes(data);
    std::vector<uint8_t> pixels(static_cast<size_t>(options.image_size) * options.image_size * 3);
    {
      py::gil_scoped_release release;
      WorkerContext context(decoder);
      augment_image(ptr, size, options, seed, &context, pixels.data());
    }
    return owning_array(std::move(pixels),
                        image_shape(options.image_size, options.image_size, options.layout));
  }, py::arg("data"), py::arg("image_options"), py::arg("decoder_options"), py::arg("seed"),
     "One image through a reader worker's decode-and-augment step; seed fixes crop and flip");

  m.def("augment_cached", [](const py::buffer& data, const ImageOptions& image_options,
                             const DecoderOptions& decoder_options, uint64_t seed, int short_side) {
    const ImageOptions options = image_options;
    const DecoderOptions decoder = decoder_options;
    check_image_options(options);
    if (short_side <= 0) throw std::invalid_argument("short_side must be positive");
    auto [ptr, size] = view_bytes(data);
    std::vector<uint8_t> pixels(static_cast<size_t>(options.image_size) * options.image_size * 3);
    std::vector<uint8_t> cached;
    int cached_width = 0, cached_height = 0;
    {
      py::gil_scoped_release release;
      WorkerContext context(decoder);
      const JpegInfo info = context.decoder.read_info(ptr, size);
      cached_size(info.width, info.height, short_side, &cached_width, &cached_height);
      cached.resize(static_cast<size_t>(cached_width) * cached_height * 3);
      decode_for_cache(info, cached_width, cached_height, options.use_dct_scaling, &context,
                       cached.data());
      augment_cached(cached.data(), cached_width, cached_height, info.width, info.height, options,
                     seed, &context.scratch, pixels.data());
    }
    return py::make_tuple(
        owning_array(std::move(pixels),
                     image_shape(options.image_size, options.image_size, options.layout)),
        owning_array(std::move(cached), {cached_height, cached_width, 3}));
  }, py::arg("data"), py::arg("image_options"), py::arg("decoder_options"), py::arg("seed"),
     py::arg("short_side"),
     "One image through the cache's path: decoded at its capped size, then the crop `seed` "
     "draws taken from those pixels; (crop, cached pixels)");

  m.def("random_resized_crop", [](int width, int height, uint64_t seed,
                                  const CropOptions& crop_options) {
    ImageOptions image;
    image.crop = crop_options;
    image.eval_resize_ratio = 1.0;  // not used here; only the crop ranges are checked
    check_image_options(image);
    SplitMix64 rng(seed);
    const CropBox box = random_resized_crop(width, height, crop_options, &rng);
    return py::make_tuple(box.x, box.y, box.width, box.height);
  }, py::arg("width"), py::arg("height"), py::arg("seed"), py::arg("crop_options"),
     "The training crop box (x, y, w, h) the reader draws for an image seed (for tests)");

  m.def("choose_dct_scale", [](double box_width, double box_height, int min_width, int min_height,
                               const DecoderOptions& decoder_options) {
    return choose_dct_scale(box_width, box_height, min_width, min_height,
                            decoder_options.allowed_scales);
  }, py::arg("box_width"), py::arg("box_height"), py::arg("min_width"), py::arg("min_height"),
     py::arg("decoder_options") = DecoderOptions());

  // bench.profile: where the time goes in one crop (profile.h). Seconds per stage, min of repeats.
  m.def("profile_crop", [](const std::string& path, const ImageOptions& image_options,
                           const DecoderOptions& decoder_options, uint64_t seed, int64_t epoch,
                           int64_t file_index, int repeats) {
    const ImageOptions image = image_options;
    const DecoderOptions decoder = decoder_options;
    StageProfile profile;
    {
      py::gil_scoped_release release;
      profile = profile_crop(path, image, decoder, seed, epoch, file_index, repeats);
    }
    py::dict out;
    out["read"] = profile.read;
    out["header"] = profile.header;
    out["start"] = profile.start;
    out["entropy"] = profile.entropy;
    out["idct"] = profile.idct;
    out["upsample"] = profile.upsample;
    out["color_convert"] = profile.color_convert;
    out["decode_other"] = profile.decode_other;
    out["resize"] = profile.resize;
    out["hooked_total"] = profile.hooked_total;
    out["timer_overhead"] = profile.timer_overhead;
    out["reader_total"] = profile.reader_total;
    out["full_entropy"] = profile.full_entropy;
    out["full_decode_ycbcr"] = profile.full_decode_ycbcr;
    out["full_decode_rgb"] = profile.full_decode_rgb;
    out["crop_no_dct_scaling"] = profile.crop_no_dct_scaling;
    out["width"] = profile.width;
    out["height"] = profile.height;
    out["scale_num"] = profile.scale_num;
    out["entropy_fraction"] = profile.entropy_fraction;
    out["multi_scan"] = profile.multi_scan;
    out["merged_upsampler"] = profile.merged_upsampler;
    out["timer_calls"] = profile.timer_calls;
    return out;
  }, py::arg("path"), py::arg("image_options"), py::arg("decoder_options"), py::arg("seed"),
     py::arg("epoch"), py::arg("file_index"), py::arg("repeats"),
     "Per-stage seconds of the crop a reader (seed) draws for file_index in epoch (profile.h)");

  py::class_<BatchReader>(m, "BatchReader")
      .def(py::init([](std::vector<std::string> paths, std::vector<int32_t> labels,
                       const ReaderOptions& options) {
             ReaderOptions copy = options;
             py::gil_scoped_release release;  // starting threads
             return std::make_unique<BatchReader>(std::move(paths), std::move(labels),
                                                  std::move(copy));
           }),
           py::arg("paths"), py::arg("labels"), py::arg("options"))
      .def("next", &next_batch, py::arg("slice_ms") = 50,
           "(images, labels, epoch, step) or None at the end of the stream")
      .def("close", &BatchReader::close, py::call_guard<py::gil_scoped_release>())
      .def("stats", [](const BatchReader& reader) { return stats_dict(reader.stats()); })
      .def_property_readonly("steps_per_epoch", &BatchReader::steps_per_epoch)
      .def_property_readonly("images_per_epoch", &BatchReader::images_per_epoch);
}
