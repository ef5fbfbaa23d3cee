/* The decoded-image cache: planning, the header pass, reuse or rebuild of a cache file, fill
 * and publication (see image_cache.h; the file's records are in cache_file.h). */
#include "image_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "cache_file.h"

namespace flowers {
using namespace cache_file;
namespace {

// Enough for the header of almost every JPEG; a file whose header runs past it (60 KB EXIF or
// ICC segments) is read whole.
constexpr size_t kHeaderPrefixBytes = 64 * 1024;

std::string format_bytes(uint64_t bytes) {
  char text[32];
  if (bytes >= (uint64_t{1} << 30)) {
    std::snprintf(text, sizeof(text), "%.2f GiB", bytes / double(uint64_t{1} << 30));
  } else {
    std::snprintf(text, sizeof(text), "%.1f MiB", bytes / double(1 << 20));
  }
  return text;
}

}  // namespace

ImageCache::ImageCache(const std::vector<std::string>& paths, const CacheOptions& options,
                       const DecoderOptions& decoder, bool use_dct_scaling, bool training,
                       int num_threads)
    : paths_(paths), options_(options), use_dct_scaling_(use_dct_scaling) {
  if (options_.short_side <= 0)
    throw std::invalid_argument("cache short_side must be positive (flowers_tl.geometry has the default)");
  images_.resize(paths_.size());
  identities_.resize(paths_.size());
  Hash settings;
  settings.add(kFormat);
  settings.add(options_.version);
  settings.add(options_.short_side);
  settings.add(decoder.max_pixels);
  settings.add(decoder.max_scans);
  settings.add(decoder.allowed_scales);
  settings.add(decoder.fast_idct);
  settings.add(decoder.fancy_upsampling);
  settings.add(use_dct_scaling);
  settings_ = settings.value;
  Hash key;
  key.add(settings_);
  key.add(static_cast<uint64_t>(paths_.size()));
  for (size_t i = 0; i < paths_.size(); ++i) {
    struct stat status;
    if (::stat(paths_[i].c_str(), &status) == 0) {
      identities_[i].size = static_cast<int64_t>(status.st_size);
      identities_[i].mtime_ns =
          static_cast<int64_t>(status.st_mtim.tv_sec) * 1000000000 + status.st_mtim.tv_nsec;
    }
    key.add(paths_[i]);
    key.add(identities_[i].size);
    key.add(identities_[i].mtime_ns);
  }
  key_ = key.value;

  std::string rebuild_reason;
  if (options_.location != "memory") {
    file_path_ = cache_file::path_for(options_.location, paths_, training);
    if (open_existing(&rebuild_reason)) {
      state_ = State::kReady;
      return;
    }
  }
  read_headers(decoder, num_threads);
  uint64_t offset = 0;
  int good = 0;
  for (CachedImage& image : images_) {
    if (!image.ok) continue;
    cached_size(image.width, image.height, options_.short_side, &image.cached_width,
                &image.cached_height);
    image.offset = offset;
    offset += static_cast<uint64_t>(image.cached_width) * image.cached_height * 3;
    good++;
  }
  pixel_bytes_ = offset;
  const std::string what = "the decoded-image cache of " + std::to_string(good) + " images " +
                           "(shorter side at most " + std::to_string(options_.short_side) +
                           " px, " + format_bytes(pixel_bytes_) + ")";
  if (pixel_bytes_ > options_.max_bytes) {
    message_ = what + " is over its budget of " + format_bytes(options_.max_bytes) +
               " (cache_max_bytes): streaming instead";
    file_path_.clear();
    return;
  }
  std::string why_not;
  if (in_file()) {
    if (!create_file(&why_not)) {
      message_ = "cannot write " + what + " in " + options_.location + ": " + why_not +
                 "; streaming instead";
      file_path_.clear();
      return;
    }
    message_ = (rebuild_reason.empty() ? "building " : "rebuilding ") + what + " in " +
               file_path_ + (rebuild_reason.empty() ? "" : ": " + rebuild_reason);
  } else if (pixel_bytes_ > 0) {
    void* memory = ::mmap(nullptr, pixel_bytes_, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) {
      message_ = "cannot allocate " + what + ": " + std::strerror(errno) + "; streaming instead";
      return;
    }
    pixels_ = static_cast<uint8_t*>(memory);
    mapped_bytes_ = pixel_bytes_;
  }
  state_ = State::kFill;
}

ImageCache::~ImageCache() {
  unmap();
  if (fd_ >= 0) ::close(fd_);
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());  // a fill that did not finish
}

void ImageCache::unmap() {
  if (pixels_ != nullptr && mapped_bytes_ > 0) ::munmap(pixels_, mapped_bytes_);
  pixels_ = nullptr;
  mapped_bytes_ = 0;
}

void ImageCache::read_headers(const DecoderOptions& decoder, int num_threads) {
  std::atomic<size_t> next{0};
  auto work = [&]() {
    JpegDecoder jpeg(decoder);
    std::vector<uint8_t> bytes;
    for (size_t i = next++; i < paths_.size(); i = next++) {
      CachedImage& image = images_[i];
      try {
        read_file(paths_[i], &bytes, kHeaderPrefixBytes);
        JpegInfo info;
        try {
          info = jpeg.read_info(bytes.data(), bytes.size());
        } catch (const DecodeError&) {
          if (bytes.size() < kHeaderPrefixBytes) throw;  // that was the whole file
          read_file(paths_[i], &bytes);                  // a header longer than the prefix
          info = jpeg.read_info(bytes.data(), bytes.size());
        }
        image.width = info.width;
        image.height = info.height;
        image.ok = true;
      } catch (const DecodeError& error) {
        image.reason = error.what();
      } catch (const std::exception& error) {
        image.reason = std::string("unexpected error: ") + error.what();
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < std::min<int>(num_threads, static_cast<int>(paths_.size())); ++i)
    threads.emplace_back(work);
  work();
  for (std::thread& thread : threads) thread.join();
}

bool ImageCache::open_existing(std::string* why_not) {
  const int fd = ::open(file_path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) *why_not = std::string("cannot open it: ") + std::strerror(errno);
    return false;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat status;
  Header header{};
  Footer footer{};
  if (::fstat(fd, &status) != 0 ||
      static_cast<uint64_t>(status.st_size) < kHeaderBytes + sizeof(Footer) ||
      !read_all(fd, &header, sizeof(header), 0) ||
      std::memcmp(header.magic, kHeaderMagic, sizeof(kHeaderMagic)) != 0) {
    *why_not = "it is not a complete cache file";
    return false;
  }
  if (header.format != kFormat) {
    *why_not = "it has format " + std::to_string(header.format) + ", this build writes " +
               std::to_string(kFormat);
    return false;
  }
  const uint64_t size = static_cast<uint64_t>(status.st_size);
  if (header.file_bytes != size || !read_all(fd, &footer, sizeof(footer), size - sizeof(footer)) ||
      std::memcmp(footer.magic, kFooterMagic, sizeof(kFooterMagic)) != 0 ||
      footer.key != header.key || footer.file_bytes != size ||
      header.index_offset != kHeaderBytes + header.pixel_bytes ||
      header.index_offset + header.index_bytes + sizeof(Footer) != size) {
    *why_not = "it is incomplete or damaged (no matching end marker)";
    return false;
  }
  std::vector<uint8_t> index(header.index_bytes);
  if (!read_all(fd, index.data(), index.size(), header.index_offset)) {
    *why_not = "its index cannot be read";
    return false;
  }
  header.version[sizeof(header.version) - 1] = '\0';
  if (header.key != key_) {
    *why_not = compare_with(index, header.num_files, header.version, header.short_side,
                            header.settings);
    return false;
  }
  // The key matches: read the index, checking every entry against the pixels it points at.
  Cursor cursor{index.data(), index.size()};
  bool valid = header.num_files == paths_.size();
  for (size_t i = 0; valid && i < paths_.size(); ++i) {
    IndexEntry entry = read_entry(&cursor);
    const CachedImage& image = entry.image;
    valid = cursor.ok && entry.path == paths_[i];
    if (valid && image.ok) {
      valid = image.width > 0 && image.height > 0 && image.cached_width > 0 &&
              image.cached_height > 0 && image.offset <= header.pixel_bytes &&
              static_cast<uint64_t>(image.cached_width) * image.cached_height * 3 <=
                  header.pixel_bytes - image.offset;
    }
    images_[i] = std::move(entry.image);
  }
  if (!valid) {
    *why_not = "its index is damaged";
    return false;
  }
  pixel_bytes_ = header.pixel_bytes;
  if (pixel_bytes_ > 0) {
    void* memory = ::mmap(nullptr, pixel_bytes_, PROT_READ, MAP_SHARED, fd, kHeaderBytes);
    if (memory == MAP_FAILED) {
      *why_not = std::string("cannot map it: ") + std::strerror(errno);
      return false;
    }
    pixels_ = static_cast<uint8_t*>(memory);
    mapped_bytes_ = pixel_bytes_;
  }
  return true;
}

std::string ImageCache::compare_with(const std::vector<uint8_t>& index, uint64_t num_files,
                                     const std::string& version, int short_side,
                                     uint64_t settings) const {
  if (settings != settings_) {
    if (version != options_.version)
      return "it was written by " + version + " (this is " + options_.version + ")";
    if (short_side != options_.short_side)
      return "its shorter-side cap is " + std::to_string(short_side) + " px, now " +
             std::to_string(options_.short_side);
    return "the decoder settings changed (max_pixels, dct_scales, fast_idct, fancy_upsampling "
           "or use_dct_scaling)";
  }
  std::unordered_map<std::string, std::pair<int64_t, int64_t>> old;
  Cursor cursor{index.data(), index.size()};
  for (uint64_t i = 0; i < num_files && cursor.ok; ++i) {
    IndexEntry entry = read_entry(&cursor);
    if (cursor.ok) old[entry.path] = {entry.size, entry.mtime_ns};
  }
  if (!cursor.ok) return "its index is damaged";
  size_t changed = 0, added = 0, kept = 0;
  for (size_t i = 0; i < paths_.size(); ++i) {
    auto found = old.find(paths_[i]);
    if (found == old.end()) {
      added++;
      continue;
    }
    kept++;
    if (found->second != std::make_pair(identities_[i].size, identities_[i].mtime_ns)) changed++;
  }
  const size_t removed = old.size() - kept;
  if (changed + added + removed == 0) return "the files are listed in another order";
  return std::to_string(changed) + " file(s) changed (size or mtime), " + std::to_string(added) +
         " added, " + std::to_string(removed) + " removed since it was written";
}

bool ImageCache::create_file(std::string* why_not) {
  remove_stale_temporaries(file_path_);
  static std::atomic<int> counter{0};
  temp_path_ = file_path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  fd_ = ::open(temp_path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    *why_not = std::strerror(errno);
    temp_path_.clear();
    return false;
  }
  if (pixel_bytes_ == 0) return true;
  // Reserve the blocks now: a disk that fills up under a writable mapping is a SIGBUS later.
  const int error = ::posix_fallocate(fd_, 0, static_cast<off_t>(kHeaderBytes + pixel_bytes_));
  void* memory = MAP_FAILED;
  if (error == 0)
    memory = ::mmap(nullptr, pixel_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, kHeaderBytes);
  if (error != 0 || memory == MAP_FAILED) {
    *why_not = std::strerror(error != 0 ? error : errno);
    return false;  // the destructor removes the temporary file
  }
  pixels_ = static_cast<uint8_t*>(memory);
  mapped_bytes_ = pixel_bytes_;
  return true;
}

void ImageCache::fill(int32_t index, WorkerContext* context) {
  CachedImage& image = images_[index];
  if (!image.ok) throw DecodeError(image.reason);
  read_file(paths_[index], &context->file_bytes);
  const JpegInfo info =
      context->decoder.read_info(context->file_bytes.data(), context->file_bytes.size());
  if (info.width != image.width || info.height != image.height)
    throw DecodeError("changed while the cache was filled (" + std::to_string(image.width) + "x" +
                      std::to_string(image.height) + ", now " + std::to_string(info.width) + "x" +
                      std::to_string(info.height) + ")");
  decode_for_cache(info, image.cached_width, image.cached_height, use_dct_scaling_, context,
                   pixels_ + image.offset);
}

void ImageCache::mark_bad(int32_t index, const std::string& reason) {
  images_[index].ok = false;
  images_[index].reason = reason;
}

std::vector<uint8_t> ImageCache::serialise_index() const {
  std::vector<uint8_t> out;
  for (size_t i = 0; i < images_.size(); ++i) {
    write_entry(IndexEntry{identities_[i].size, identities_[i].mtime_ns, images_[i], paths_[i]},
                &out);
  }
  return out;
}

void ImageCache::finish_fill() {
  state_ = State::kReady;
  if (!in_file()) return;
  const std::vector<uint8_t> index = serialise_index();
  Header header{};
  std::memcpy(header.magic, kHeaderMagic, sizeof(kHeaderMagic));
  header.format = kFormat;
  header.short_side = options_.short_side;
  header.key = key_;
  header.settings = settings_;
  header.num_files = paths_.size();
  header.pixel_bytes = pixel_bytes_;
  header.index_offset = kHeaderBytes + pixel_bytes_;
  header.index_bytes = index.size();
  header.file_bytes = header.index_offset + index.size() + sizeof(Footer);
  std::snprintf(header.version, sizeof(header.version), "%s", options_.version.c_str());
  Footer footer{};
  std::memcpy(footer.magic, kFooterMagic, sizeof(kFooterMagic));
  footer.key = key_;
  footer.file_bytes = header.file_bytes;
  // Pixels and index first, then the header and the footer that make it valid, all on disk
  // before the rename that makes it visible.
  const std::string folder = file_path_.substr(0, file_path_.rfind('/'));
  bool ok = (pixel_bytes_ == 0 || ::msync(pixels_, pixel_bytes_, MS_SYNC) == 0) &&
            write_all(fd_, index.data(), index.size(), header.index_offset) &&
            write_all(fd_, &footer, sizeof(footer), header.index_offset + index.size()) &&
            write_all(fd_, &header, sizeof(header), 0) && ::fsync(fd_) == 0 &&
            ::rename(temp_path_.c_str(), file_path_.c_str()) == 0;
  if (ok) {
    temp_path_.clear();
    const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      ::fsync(dir);  // the rename itself
      ::close(dir);
    }
    if (pixel_bytes_ > 0) ::mprotect(pixels_, pixel_bytes_, PROT_READ);
  } else {
    message_ = "cannot write the decoded-image cache " + file_path_ + ": " + std::strerror(errno) +
               "; this run keeps the pixels it decoded";
  }
  ::close(fd_);
  fd_ = -1;
}

}  // namespace flowers
