/* The multithreaded batch reader: a pool of worker threads decodes and augments images straight
 * into preallocated batch buffers, and a bounded window of batches (the prefetch depth) waits,
 * in order, for the consumer.
 *
 * Scheduling. The stream is a sequence of batches; batch b is step b % steps_per_epoch of epoch
 * b / steps_per_epoch. Each epoch is a permutation of all files from (seed, epoch), identical in
 * every shard; shard k takes positions k, k + num_shards, ... of it. Work is handed out one image
 * at a time in stream order, so all threads fill the same batch together and batch b may only be
 * started once batch b - prefetch has been taken by the consumer. Crops and flips depend only on
 * (seed, epoch, file index): the output does not depend on the number of threads.
 *
 * Bad files. A file that cannot be read or decoded is, by default, recorded (count, first paths
 * and reasons), and its slot is filled with a copy of the next good image of the same batch, so
 * batches stay full and identical for any thread count (fill_bad_slots off: zeros and label
 * -1 instead, and a batch whose files all failed is still delivered). It is tried again in
 * later epochs (a
 * truncated file fails only for crops that reach the cut). With skip_bad_files off the first
 * failure stops the reader and next() throws "Error in thread N: <path>: <reason>".
 *
 * Cache. With options.cache.location set, the workers first fill an ImageCache (image_cache.h:
 * every file decoded once, in parallel, its shorter side capped) and then serve every batch,
 * the first epoch's included, by resampling the same crop boxes from its pixels: no JPEG is
 * decoded after the fill, and the batches are again the same for any thread count. The first
 * next() waits for the fill. Bad files are counted when they come up in the stream, as above.
 *
 * Buffers. A batch's pixels and labels live in a BatchBuffer from a pool; the consumer holds a
 * shared_ptr and the buffer returns to the pool when the last holder lets go, so the Python side
 * can hand the memory to numpy without a copy and without it being overwritten underneath.
 */
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "image_cache.h"
#include "image_task.h"

namespace flowers {

// Where the defaults live: here, in the C++ structs, for everything but the preprocessing
// geometry (crop ranges, eval resize ratio: flowers_tl/geometry.py, see CropOptions).
// flowers_tl.reader.ReaderConfig reads its defaults from a default-constructed
// _reader.ReaderOptions(), so a default changed here is changed for Python too.
struct ReaderOptions {
  int batch_size = 32;
  int num_threads = 1;
  bool shuffle = true;
  uint64_t seed = 0;
  int prefetch = 2;  // batches decoded ahead of the consumer
  int shard_index = 0;
  int num_shards = 1;
  bool drop_remainder = false;
  int64_t num_epochs = -1;  // < 0: repeat forever
  int64_t start_batch = 0;  // first batch of the stream (resuming: skipped without decoding)
  bool skip_bad_files = true;
  // What a skipped file's slot holds: a copy of the next good image of the batch (training:
  // batches stay full), or, when false, zeros with label -1, so an evaluation counts only the
  // files that decoded and a batch of nothing but bad files is delivered, not an error.
  bool fill_bad_slots = true;
  DecoderOptions decoder;
  ImageOptions image;
  CacheOptions cache;
};

struct BatchBuffer {
  std::vector<uint8_t> images;  // batch_size * image_size^2 * 3
  std::vector<int32_t> labels;  // batch_size
};

struct Batch {
  std::shared_ptr<BatchBuffer> buffer;
  int size = 0;  // images in this batch (smaller than batch_size only for an epoch's last batch)
  int64_t epoch = 0;
  int64_t step = 0;  // index of the batch within its epoch
};

struct BadFile {
  std::string path;
  std::string reason;
};

struct ReaderStats {
  int64_t images_decoded = 0;   // successful JPEG decodes (with a cache: those of the fill)
  int64_t images_from_cache = 0;  // crops served from the decoded-image cache
  int64_t failed_reads = 0;     // slots whose file failed (once per epoch in which it fails)
  int64_t bad_files = 0;        // distinct files that failed
  std::vector<BadFile> first_bad_files;  // the first ones found, with reasons
  int64_t batches_delivered = 0;
  double consumer_wait_seconds = 0;  // time next() spent waiting for a batch
  // "none" (not asked for), "memory", "file", or "streaming" (asked for, but over the budget
  // or without storage: cache_message says why).
  std::string cache = "none";
  bool cache_reused = false;      // a cache file from an earlier run: nothing decoded
  uint64_t cache_bytes = 0;       // its pixels
  double cache_fill_seconds = 0;  // from the reader's start to the end of the fill
  std::string cache_message;      // one line for the user (a rebuild, the fallback), or empty
};

class BufferPool;

class BatchReader {
 public:
  BatchReader(std::vector<std::string> paths, std::vector<int32_t> labels, ReaderOptions options);
  ~BatchReader();
  BatchReader(const BatchReader&) = delete;
  BatchReader& operator=(const BatchReader&) = delete;

  enum class Status { kBatch, kTimeout, kEnd };
  // Waits up to timeout_ms for the next batch in order. Throws std::runtime_error with the
  // worker's message after a fatal error (or on a closed reader).
  Status next(Batch* batch, int timeout_ms);
  // Stops and joins the workers; idempotent, never blocks on the consumer.
  void close();

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t images_per_epoch() const { return images_per_epoch_; }
  const ReaderOptions& options() const { return options_; }
  ReaderStats stats() const;

  static constexpr size_t kMaxReportedBadFiles = 20;

 private:
  struct InFlight;
  void worker_loop(int thread_index);
  bool has_task_locked() const;
  InFlight* start_batch_locked();
  void finish_batch_locked(InFlight* batch);
  const std::vector<int32_t>& epoch_order_locked(int64_t epoch);
  void record_failure_locked(int32_t file, const std::string& reason, int thread_index);
  void fill_one(std::unique_lock<std::mutex>& lock, int thread_index, WorkerContext* context);

  const std::vector<std::string> paths_;
  const std::vector<int32_t> labels_;
  const ReaderOptions options_;
  int64_t images_per_epoch_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t total_batches_ = -1;  // < 0: endless
  size_t image_bytes_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable work_ready_;   // workers wait here for a task
  std::condition_variable batch_ready_;  // the consumer waits here
  std::deque<InFlight> in_flight_;       // batches started and not yet consumed, in order
  int64_t next_batch_ = 0;               // next batch to start
  int next_slot_ = 0;                    // next slot of the newest started batch to hand out
  int64_t consumed_ = 0;                 // batches handed to the consumer
  int64_t order_epoch_ = -1;
  std::vector<int32_t> order_;           // this shard's file indices for order_epoch_
  std::vector<uint8_t> known_bad_;       // per file: failed at least once (counted)
  std::string fatal_error_;
  bool stopping_ = false;
  ReaderStats stats_;

  std::unique_ptr<ImageCache> cache_;  // null: streaming
  bool filling_ = false;               // workers fill the cache before any batch
  int32_t fill_next_ = 0;              // next file to fill
  int32_t fill_remaining_ = 0;         // files not filled yet
  std::chrono::steady_clock::time_point start_time_;

  std::shared_ptr<BufferPool> pool_;
  std::vector<std::thread> threads_;
};

}  // namespace flowers
