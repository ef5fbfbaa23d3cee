/* Worker threads, scheduling and batch assembly (see batch_reader.h). */
#include "batch_reader.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <stdexcept>

namespace flowers {

// Recycles batch buffers. A buffer handed out returns here when its last shared_ptr dies, which
// may be long after the reader is gone (numpy arrays outlive readers), hence the weak_ptr.
class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  BufferPool(size_t image_bytes, int batch_size, size_t max_free)
      : image_bytes_(image_bytes), batch_size_(batch_size), max_free_(max_free) {}

  std::shared_ptr<BatchBuffer> acquire() {
    std::unique_ptr<BatchBuffer> buffer;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        buffer = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!buffer) {
      buffer = std::make_unique<BatchBuffer>();
      buffer->images.resize(image_bytes_ * batch_size_);
      buffer->labels.resize(batch_size_);
    }
    std::weak_ptr<BufferPool> owner = weak_from_this();
    return std::shared_ptr<BatchBuffer>(buffer.release(), [owner](BatchBuffer* released) {
      if (auto pool = owner.lock()) {
        pool->give_back(released);
      } else {
        delete released;
      }
    });
  }

 private:
  void give_back(BatchBuffer* buffer) {
    std::unique_ptr<BatchBuffer> owned(buffer);
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < max_free_) free_.push_back(std::move(owned));
  }

  const size_t image_bytes_;
  const int batch_size_;
  const size_t max_free_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<BatchBuffer>> free_;
};

struct BatchReader::InFlight {
  int64_t index = 0;
  int64_t epoch = 0;
  int64_t step = 0;
  int size = 0;
  std::shared_ptr<BatchBuffer> buffer;
  std::vector<int32_t> files;   // file index per slot
  std::vector<uint8_t> failed;  // per slot
  int remaining = 0;            // slots not finished yet
  bool ready = false;
  std::string error;            // set when no image of the batch could be decoded
};

namespace {

void check(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

}  // namespace

BatchReader::BatchReader(std::vector<std::string> paths, std::vector<int32_t> labels,
                         ReaderOptions options)
    : paths_(std::move(paths)), labels_(std::move(labels)), options_(std::move(options)) {
  const ReaderOptions& o = options_;
  check(!paths_.empty(), "no files to read");
  check(paths_.size() == labels_.size(), "files and labels differ in length (" +
                                             std::to_string(paths_.size()) + " vs " +
                                             std::to_string(labels_.size()) + ")");
  check(paths_.size() < static_cast<size_t>(INT32_MAX), "too many files");
  check(o.batch_size > 0, "batch_size must be positive");
  check(o.num_threads > 0, "num_threads must be positive");
  check(o.prefetch > 0, "prefetch must be positive");
  check(o.num_shards > 0 && o.shard_index >= 0 && o.shard_index < o.num_shards,
        "shard_index must be in [0, num_shards)");
  check_image_options(o.image);

  const int64_t total = static_cast<int64_t>(paths_.size());
  const int64_t shard_count = (total - o.shard_index + o.num_shards - 1) / o.num_shards;
  if (o.drop_remainder) {
    // Every shard gets the same number of full batches, or multi-worker steps would not line up.
    steps_per_epoch_ = (total / o.num_shards) / o.batch_size;
    images_per_epoch_ = steps_per_epoch_ * o.batch_size;
    check(steps_per_epoch_ > 0, "drop_remainder leaves no batch: " + std::to_string(total) +
                                    " files over " + std::to_string(o.num_shards) +
                                    " shards is less than one batch of " +
                                    std::to_string(o.batch_size));
  } else {
    check(shard_count > 0, "shard " + std::to_string(o.shard_index) + " has no files");
    steps_per_epoch_ = (shard_count + o.batch_size - 1) / o.batch_size;
    images_per_epoch_ = shard_count;
  }
  total_batches_ = o.num_epochs < 0 ? -1 : o.num_epochs * steps_per_epoch_;
  check(o.start_batch >= 0, "start_batch must be >= 0");
  // Batch b depends only on (seed, b): starting at b gives exactly the batches an
  // uninterrupted run would have produced from there.
  next_batch_ = consumed_ = o.start_batch;
  image_bytes_ = static_cast<size_t>(o.image.image_size) * o.image.image_size * 3;
  known_bad_.assign(paths_.size(), 0);
  start_time_ = std::chrono::steady_clock::now();
  if (!o.cache.location.empty()) {
    cache_ = std::make_unique<ImageCache>(paths_, o.cache, o.decoder, o.image.use_dct_scaling,
                                          o.image.training, o.num_threads);
    stats_.cache_message = cache_->message();
    if (cache_->state() == ImageCache::State::kOff) {
      cache_.reset();
      stats_.cache = "streaming";
    } else {
      stats_.cache = cache_->in_file() ? "file" : "memory";
      stats_.cache_bytes = cache_->pixel_bytes();
      stats_.cache_reused = cache_->state() == ImageCache::State::kReady;
      filling_ = !stats_.cache_reused;
      fill_remaining_ = static_cast<int32_t>(paths_.size());
    }
  }
  pool_ = std::make_shared<BufferPool>(image_bytes_, o.batch_size,
                                       static_cast<size_t>(o.prefetch) + 2);
  threads_.reserve(o.num_threads);
  for (int i = 0; i < o.num_threads; ++i) threads_.emplace_back(&BatchReader::worker_loop, this, i);
}

BatchReader::~BatchReader() { close(); }

void BatchReader::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  batch_ready_.notify_all();
  for (std::thread& thread : threads_) {
    if (thread.joinable() && thread.get_id() != std::this_thread::get_id()) thread.join();
  }
}

const std::vector<int32_t>& BatchReader::epoch_order_locked(int64_t epoch) {
  if (epoch == order_epoch_) return order_;
  const int32_t total = static_cast<int32_t>(paths_.size());
  std::vector<int32_t> all(total);
  std::iota(all.begin(), all.end(), 0);
  if (options_.shuffle) {
    // Fisher-Yates with our own generator: std::shuffle's sequence differs between standard
    // libraries, and the order must be reproducible everywhere.
    SplitMix64 rng(mix_seed(options_.seed, static_cast<uint64_t>(epoch), 0x5348554646ull));
    for (int32_t i = total - 1; i > 0; --i) {
      std::swap(all[i], all[static_cast<int32_t>(rng.below(static_cast<uint64_t>(i) + 1))]);
    }
  }
  order_.clear();
  for (int32_t position = options_.shard_index; position < total;
       position += options_.num_shards) {
    order_.push_back(all[position]);
  }
  order_.resize(std::min<size_t>(order_.size(), static_cast<size_t>(images_per_epoch_)));
  order_epoch_ = epoch;
  return order_;
}

bool BatchReader::has_task_locked() const {
  if (filling_) return fill_next_ < static_cast<int32_t>(paths_.size());
  if (!in_flight_.empty() && next_slot_ < in_flight_.back().size) return true;
  const bool window_open = next_batch_ < consumed_ + options_.prefetch;
  const bool stream_left = total_batches_ < 0 || next_batch_ < total_batches_;
  return window_open && stream_left;
}

BatchReader::InFlight* BatchReader::start_batch_locked() {
  InFlight batch;
  batch.index = next_batch_++;
  batch.epoch = batch.index / steps_per_epoch_;
  batch.step = batch.index % steps_per_epoch_;
  const std::vector<int32_t>& order = epoch_order_locked(batch.epoch);
  const int64_t begin = batch.step * options_.batch_size;
  batch.size = static_cast<int>(
      std::min<int64_t>(options_.batch_size, static_cast<int64_t>(order.size()) - begin));
  batch.files.assign(order.begin() + begin, order.begin() + begin + batch.size);
  batch.failed.assign(batch.size, 0);
  batch.remaining = batch.size;
  batch.buffer = pool_->acquire();
  in_flight_.push_back(std::move(batch));
  next_slot_ = 0;
  work_ready_.notify_all();  // the new batch has slots for every idle worker
  return &in_flight_.back();
}

void BatchReader::record_failure_locked(int32_t file, const std::string& reason,
                                        int thread_index) {
  stats_.failed_reads++;
  if (!known_bad_[file]) {
    known_bad_[file] = 1;
    stats_.bad_files++;
    if (stats_.first_bad_files.size() < kMaxReportedBadFiles)
      stats_.first_bad_files.push_back(BadFile{paths_[file], reason});
  }
  if (!options_.skip_bad_files && fatal_error_.empty()) {
    fatal_error_ = "Error in thread " + std::to_string(thread_index) + ": " + paths_[file] +
                   ": " + reason;
  }
}

void BatchReader::finish_batch_locked(InFlight* batch) {
  BatchBuffer& buffer = *batch->buffer;
  if (!options_.fill_bad_slots) {
    // Failed slots: zeros and label -1 (the consumer counts only the others).
    for (int slot = 0; slot < batch->size; ++slot) {
      if (!batch->failed[slot]) continue;
      std::memset(buffer.images.data() + slot * image_bytes_, 0, image_bytes_);
      buffer.labels[slot] = -1;
    }
    batch->ready = true;
    batch_ready_.notify_all();
    return;
  }
  // Fill each failed slot with the next good image of the batch (cyclically): deterministic,
  // and the batch stays full.
  int good = -1;
  for (int slot = 0; slot < batch->size; ++slot) {
    if (!batch->failed[slot]) {
      good = slot;
      break;
    }
  }
  if (good < 0) {
    // Reported when the consumer reaches this batch, so earlier batches are still delivered
    // and the error names the same batch whatever the thread timing.
    batch->error = "every image of batch " + std::to_string(batch->step) + " of epoch " +
                   std::to_string(batch->epoch) + " failed to decode, e.g. " +
                   paths_[batch->files[0]] + "; see the reader's bad-file summary";
    batch->ready = true;
    batch_ready_.notify_all();
    return;
  }
  for (int slot = 0; slot < batch->size; ++slot) {
    if (!batch->failed[slot]) continue;
    int source = (slot + 1) % batch->size;
    while (batch->failed[source]) source = (source + 1) % batch->size;
    std::memcpy(buffer.images.data() + slot * image_bytes_,
                buffer.images.data() + source * image_bytes_, image_bytes_);
    buffer.labels[slot] = buffer.labels[source];
  }
  batch->ready = true;
  batch_ready_.notify_all();
}

// One file into the cache. A bad file is counted later, when the stream reaches it (as
// streaming counts it), unless skip_bad_files is off: then it stops the reader now.
void BatchReader::fill_one(std::unique_lock<std::mutex>& lock, int thread_index,
                           WorkerContext* context) {
  const int32_t file = fill_next_++;
  lock.unlock();
  std::string failure;
  bool fatal = false;
  try {
    cache_->fill(file, context);
  } catch (const DecodeError& error) {
    failure = error.what();
  } catch (const std::exception& error) {
    failure = std::string("unexpected error: ") + error.what();
    fatal = true;
  } catch (...) {
    failure = "unknown error";
    fatal = true;
  }
  lock.lock();
  if (failure.empty()) {
    stats_.images_decoded++;
  } else {
    cache_->mark_bad(file, failure);
    if (!options_.skip_bad_files) record_failure_locked(file, failure, thread_index);
    if (fatal && fatal_error_.empty())
      fatal_error_ = "Error in thread " + std::to_string(thread_index) + ": " + paths_[file] +
                     ": " + failure;
  }
  if (--fill_remaining_ == 0 && fatal_error_.empty()) {
    // The last one publishes the cache. No other worker has anything to do until filling_
    // drops, so the lock is not needed for the (fsync'ing) write.
    lock.unlock();
    cache_->finish_fill();
    lock.lock();
    if (!cache_->message().empty()) stats_.cache_message = cache_->message();
    stats_.cache_fill_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time_).count();
    filling_ = false;
    work_ready_.notify_all();
  }
  if (!fatal_error_.empty()) {
    work_ready_.notify_all();
    batch_ready_.notify_all();
  }
}

void BatchReader::worker_loop(int thread_index) {
  WorkerContext context(options_.decoder);
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    work_ready_.wait(lock, [this] {
      return stopping_ || !fatal_error_.empty() || has_task_locked();
    });
    if (stopping_ || !fatal_error_.empty()) return;
    if (filling_) {
      fill_one(lock, thread_index, &context);
      continue;
    }
    InFlight* batch = (!in_flight_.empty() && next_slot_ < in_flight_.back().size)
                          ? &in_flight_.back()
                          : start_batch_locked();
    // std::deque keeps element addresses stable under push_back/pop_front, and this batch
    // cannot be consumed (popped) before this slot is finished.
    const int slot = next_slot_++;
    const int32_t file = batch->files[slot];
    batch->buffer->labels[slot] = labels_[file];
    std::string failure;
    bool fatal = false;
    // A file that failed before is tried again: whether it fails can depend on the crop (a
    // truncated file decodes when the crop ends above the cut), and skipping it on the strength
    // of another epoch's failure made batches depend on which thread got there first.
    uint8_t* out = batch->buffer->images.data() + slot * image_bytes_;
    const uint64_t image_seed =
        mix_seed(options_.seed, static_cast<uint64_t>(batch->epoch), static_cast<uint64_t>(file));
    const ImageCache* cache = cache_.get();  // filled: read-only from here on
    lock.unlock();
    try {
      if (cache != nullptr) {
        const CachedImage& image = cache->image(file);
        if (!image.ok) throw DecodeError(image.reason);  // counted as streaming counts it
        augment_cached(cache->pixels(file), image.cached_width, image.cached_height, image.width,
                       image.height, options_.image, image_seed, &context.scratch, out);
      } else {
        read_file(paths_[file], &context.file_bytes);
        augment_image(context.file_bytes.data(), context.file_bytes.size(), options_.image,
                      image_seed, &context, out);
      }
    } catch (const DecodeError& error) {
      failure = error.what();
    } catch (const std::exception& error) {
      failure = std::string("unexpected error: ") + error.what();
      fatal = true;
    } catch (...) {
      failure = "unknown error";
      fatal = true;
    }
    lock.lock();
    if (failure.empty()) {
      (cache != nullptr ? stats_.images_from_cache : stats_.images_decoded)++;
    } else {
      batch->failed[slot] = 1;
      record_failure_locked(file, failure, thread_index);
      if (fatal && fatal_error_.empty()) {
        fatal_error_ = "Error in thread " + std::to_string(thread_index) + ": " + paths_[file] +
                       ": " + failure;
      }
    }
    if (--batch->remaining == 0) finish_batch_locked(batch);
    if (!fatal_error_.empty()) {
      work_ready_.notify_all();
      batch_ready_.notify_all();
      return;
    }
  }
}

BatchReader::Status BatchReader::next(Batch* out, int timeout_ms) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::milliseconds(timeout_ms);
  std::unique_lock<std::mutex> lock(mutex_);
  Status status = Status::kTimeout;
  while (true) {
    if (!fatal_error_.empty()) throw std::runtime_error(fatal_error_);
    if (stopping_) throw std::runtime_error("the reader is closed");
    if (total_batches_ >= 0 && consumed_ >= total_batches_) {
      status = Status::kEnd;
      break;
    }
    if (!in_flight_.empty() && in_flight_.front().ready) {
      InFlight& front = in_flight_.front();
      if (!front.error.empty()) {
        fatal_error_ = front.error;
        work_ready_.notify_all();  // stop the workers
        throw std::runtime_error(fatal_error_);
      }
      out->buffer = std::move(front.buffer);
      out->size = front.size;
      out->epoch = front.epoch;
      out->step = front.step;
      in_flight_.pop_front();
      consumed_++;
      stats_.batches_delivered++;
      status = Status::kBatch;
      work_ready_.notify_all();  // the prefetch window moved on
      break;
    }
    if (batch_ready_.wait_until(lock, deadline) == std::cv_status::timeout &&
        !(!in_flight_.empty() && in_flight_.front().ready) && fatal_error_.empty()) {
      break;
    }
  }
  stats_.consumer_wait_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return status;
}

ReaderStats BatchReader::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace flowers
