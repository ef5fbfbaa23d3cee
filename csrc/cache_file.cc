/* The decoded-image cache's file format (see cache_file.h). */
#include "cache_file.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace flowers {
namespace cache_file {
namespace {

template <typename T>
void put(std::vector<uint8_t>* out, const T& value) {
  const auto* p = reinterpret_cast<const uint8_t*>(&value);
  out->insert(out->end(), p, p + sizeof(T));
}

void put_text(std::vector<uint8_t>* out, const std::string& text) {
  put(out, static_cast<uint32_t>(text.size()));
  out->insert(out->end(), text.begin(), text.end());
}

}  // namespace

std::string Cursor::text() {
  const uint32_t size = get<uint32_t>();
  if (!ok || left < size) {
    ok = false;
    return {};
  }
  std::string value(reinterpret_cast<const char*>(p), size);
  p += size;
  left -= size;
  return value;
}

IndexEntry read_entry(Cursor* cursor) {
  IndexEntry entry;
  entry.size = cursor->get<int64_t>();
  entry.mtime_ns = cursor->get<int64_t>();
  entry.image.offset = cursor->get<uint64_t>();
  entry.image.width = cursor->get<int32_t>();
  entry.image.height = cursor->get<int32_t>();
  entry.image.cached_width = cursor->get<int32_t>();
  entry.image.cached_height = cursor->get<int32_t>();
  entry.image.ok = cursor->get<uint8_t>() != 0;
  entry.path = cursor->text();
  entry.image.reason = cursor->text();
  return entry;
}

void write_entry(const IndexEntry& entry, std::vector<uint8_t>* out) {
  put(out, entry.size);
  put(out, entry.mtime_ns);
  put(out, entry.image.offset);
  put(out, entry.image.width);
  put(out, entry.image.height);
  put(out, entry.image.cached_width);
  put(out, entry.image.cached_height);
  put(out, static_cast<uint8_t>(entry.image.ok));
  put_text(out, entry.path);
  put_text(out, entry.image.reason);
}

bool write_all(int fd, const void* data, size_t size, uint64_t offset) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t done = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (done < 0 && errno == EINTR) continue;
    if (done <= 0) return false;
    p += done;
    size -= static_cast<size_t>(done);
    offset += static_cast<uint64_t>(done);
  }
  return true;
}

bool read_all(int fd, void* data, size_t size, uint64_t offset) {
  auto* p = static_cast<uint8_t*>(data);
  while (size > 0) {
    const ssize_t done = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (done < 0 && errno == EINTR) continue;
    if (done <= 0) return false;
    p += done;
    size -= static_cast<size_t>(done);
    offset += static_cast<uint64_t>(done);
  }
  return true;
}

std::string path_for(const std::string& folder, const std::vector<std::string>& paths,
                     bool training) {
  std::string common = paths[0].substr(0, paths[0].rfind('/') + 1);
  for (const std::string& path : paths) {
    while (!common.empty() && path.compare(0, common.size(), common) != 0) {
      common.pop_back();
      common = common.substr(0, common.rfind('/') + 1);
    }
  }
  std::string name = common;
  while (!name.empty() && name.back() == '/') name.pop_back();
  name = name.substr(name.rfind('/') + 1);
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  }
  if (name.empty() || name[0] == '.') name = "images" + name;
  Hash hash;
  hash.add(common);
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "-%08x.flcache", static_cast<uint32_t>(hash.value));
  return folder + "/" + name + (training ? "-train" : "-eval") + suffix;
}

void remove_stale_temporaries(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string folder = path.substr(0, slash);
  const std::string prefix = path.substr(slash + 1) + ".tmp-";
  DIR* dir = ::opendir(folder.c_str());
  if (dir == nullptr) return;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
      ::unlink((folder + "/" + name).c_str());
  }
  ::closedir(dir);
}

}  // namespace cache_file
}  // namespace flowers
