/* The decoded-image cache: every file of a reader decoded once, with its shorter side capped at
 * CacheOptions::short_side, kept as packed RGB pixels that later epochs' crops are resampled
 * from (augment_cached in image_task.h), so no JPEG is decoded after the fill.
 *
 * Where: in memory (an anonymous mapping), or in a file of a cache folder that later runs map
 * again instead of decoding. The file is
 *     [header, 4 KiB][pixels][index: per file its path, size, mtime, sizes, offset, status][footer]
 * (the records: cache_file.h), written under a temporary name, fsync'ed, and renamed into
 * place; the header and the footer both carry the key and the file's length, and both are
 * written last. A fill that is killed therefore leaves only a temporary file (removed by the
 * next fill once its process is gone), never one that passes the checks on open. The key covers the file list and each file's size
 * and mtime, the cap, every decoder setting that changes pixels or which files fail, and the
 * build's version string: anything else is rebuilt, with one line saying why.
 *
 * Sizing: before anything is allocated every header is read (in parallel) and the pixels'
 * size summed; above max_bytes the reader streams instead and message() says so in one line.
 *
 * Bad files: a file whose header or decode fails keeps its reason in the index; the reader
 * counts it each time the file comes up, as streaming does. A truncated file fails in every
 * epoch here (the full decode reaches the cut), where streaming fails only for crops that do.
 */
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "image_task.h"

namespace flowers {

// No defaults for the cap and the budget: the Python side derives them (flowers_tl.geometry's
// cache_short_side, half the available memory), and a cache asked for without them is refused.
struct CacheOptions {
  std::string location;    // "": no cache; "memory"; anything else: a folder for the cache file
  int short_side = 0;      // each image's shorter side is capped at this many pixels
  uint64_t max_bytes = 0;  // a cache whose pixels would take more: stream instead
  std::string version;     // the build's identity (part of a cache file's key)
};

struct CachedImage {
  int32_t width = 0, height = 0;                // the JPEG's own size: crops are drawn in it
  int32_t cached_width = 0, cached_height = 0;  // the pixels kept
  uint64_t offset = 0;                          // of its pixels in the pixel area
  bool ok = false;
  std::string reason;  // why not ok
};

class ImageCache {
 public:
  enum class State { kFill, kReady, kOff };

  // Plans the cache of `paths`: a valid cache file is mapped (kReady); otherwise every header
  // is read on num_threads threads and the storage reserved (kFill), or, over the budget or
  // when the storage cannot be had, nothing is kept (kOff) and message() says why.
  ImageCache(const std::vector<std::string>& paths, const CacheOptions& options,
             const DecoderOptions& decoder, bool use_dct_scaling, bool training, int num_threads);
  ~ImageCache();
  ImageCache(const ImageCache&) = delete;
  ImageCache& operator=(const ImageCache&) = delete;

  State state() const { return state_; }
  bool in_file() const { return !file_path_.empty(); }
  const std::string& file_path() const { return file_path_; }
  const std::string& message() const { return message_; }  // one line for the user, or empty
  uint64_t pixel_bytes() const { return pixel_bytes_; }

  // Decodes file `index` into its slot; DecodeError (the header pass's own, for a file whose
  // header already failed) when it cannot. Safe from several threads for distinct indices.
  void fill(int32_t index, WorkerContext* context);
  void mark_bad(int32_t index, const std::string& reason);
  // Once every index was filled or marked: publishes the file (index, footer, fsync, rename)
  // and becomes kReady. Never throws; a file that cannot be written becomes message(), and
  // this run goes on from the pixels already decoded.
  void finish_fill();

  const CachedImage& image(int32_t index) const { return images_[index]; }
  const uint8_t* pixels(int32_t index) const { return pixels_ + images_[index].offset; }

  static constexpr size_t kHeaderBytes = 4096;  // page-aligned pixels, room to grow

 private:
  struct FileIdentity {
    int64_t size = -1;  // -1: could not stat
    int64_t mtime_ns = 0;
  };
  void read_headers(const DecoderOptions& decoder, int num_threads);
  bool open_existing(std::string* why_not);
  std::string compare_with(const std::vector<uint8_t>& index, uint64_t num_files,
                           const std::string& version, int short_side, uint64_t settings) const;
  bool create_file(std::string* why_not);
  std::vector<uint8_t> serialise_index() const;
  void unmap();

  const std::vector<std::string> paths_;
  CacheOptions options_;
  std::vector<CachedImage> images_;
  std::vector<FileIdentity> identities_;
  uint64_t settings_ = 0;  // hash of the version and every setting that changes the pixels
  uint64_t key_ = 0;       // settings_ and every file's path, size and mtime
  bool use_dct_scaling_ = true;
  State state_ = State::kOff;
  std::string message_;
  std::string file_path_;  // the cache file (empty: in memory)
  std::string temp_path_;  // while filling into a file
  int fd_ = -1;
  uint8_t* pixels_ = nullptr;
  uint64_t pixel_bytes_ = 0;
  size_t mapped_bytes_ = 0;
};

}  // namespace flowers
