/* The decoded-image cache's file format (see image_cache.h for the layout and why it is safe
 * against a killed fill): the header and footer records, the validity key's hash, the per-file
 * index entries, bounds-checked reading, whole-buffer pread/pwrite, the cache file's name, and
 * the removal of temporary files that killed fills left behind. No policy: ImageCache decides. */
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "image_cache.h"

namespace flowers {
namespace cache_file {

constexpr uint32_t kFormat = 1;  // bump when the layout below or the pixels' meaning changes
constexpr char kHeaderMagic[8] = {'F', 'L', 'T', 'L', 'C', 'A', 'C', 'H'};
constexpr char kFooterMagic[8] = {'F', 'L', 'T', 'L', 'D', 'O', 'N', 'E'};

struct Header {
  char magic[8];
  uint32_t format;
  int32_t short_side;
  uint64_t key;
  uint64_t settings;
  uint64_t num_files;
  uint64_t pixel_bytes;
  uint64_t index_offset;
  uint64_t index_bytes;
  uint64_t file_bytes;
  char version[256];  // NUL-terminated, for the rebuild message
};
static_assert(sizeof(Header) <= ImageCache::kHeaderBytes, "header fits its page");

struct Footer {
  char magic[8];
  uint64_t key;
  uint64_t file_bytes;
};

// FNV-1a: a validity key against accidents (a changed file, another build), not an adversary.
struct Hash {
  uint64_t value = 0xcbf29ce484222325ull;
  void bytes(const void* data, size_t size) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < size; ++i) value = (value ^ p[i]) * 0x100000001b3ull;
  }
  template <typename T>
  void add(const T& word) { bytes(&word, sizeof(word)); }
  void add(const std::string& text) {
    add(static_cast<uint64_t>(text.size()));
    bytes(text.data(), text.size());
  }
};

// One file's line of the index: its identity when the cache was written, and its pixels.
struct IndexEntry {
  int64_t size = 0, mtime_ns = 0;
  CachedImage image;
  std::string path;
};

// Bounds-checked reading of the index: a damaged file is refused, never read past its end.
struct Cursor {
  const uint8_t* p;
  size_t left;
  bool ok = true;
  template <typename T>
  T get() {
    T value{};
    if (left < sizeof(T)) {
      ok = false;
      return value;
    }
    std::memcpy(&value, p, sizeof(T));
    p += sizeof(T);
    left -= sizeof(T);
    return value;
  }
  std::string text();
};

IndexEntry read_entry(Cursor* cursor);
void write_entry(const IndexEntry& entry, std::vector<uint8_t>* out);

// pwrite / pread of a whole buffer at an offset (EINTR retried); false on any failure.
bool write_all(int fd, const void* data, size_t size, uint64_t offset);
bool read_all(int fd, void* data, size_t size, uint64_t offset);

// <folder>/<dataset folder>-<train|eval>-<hash of the common folder>.flcache: one slot per
// dataset and role (a train split and a held-out split of the same folder do not evict each
// other), which a changed file list or cap rebuilds in place instead of adding a file.
std::string path_for(const std::string& folder, const std::vector<std::string>& paths,
                     bool training);

// Temporary files of this cache left by fills that were killed: <name>.tmp-<pid>-<n>, removed
// once process <pid> is gone (a fill still running in another process keeps its own).
void remove_stale_temporaries(const std::string& path);

}  // namespace cache_file
}  // namespace flowers
