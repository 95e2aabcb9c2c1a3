// One Subscribe stream's traffic, the same on both sides: the calling thread reads (ACKs go to the
// Outbox, business events are validated, de-duplicated, applied through the Sink and ACKed), a
// writer thread drains the Outbox (ACKs and heartbeats first). Used by the listener (principal,
// one pump per agent stream) and the transport (agent). The Outbox outlives streams, so what is
// not acknowledged when a stream dies is re-sent on the next one.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <grpcpp/impl/codegen/call_op_set.h>
#include <grpcpp/support/config.h>

#include "eventstream.pb.h"
#include "workers/common/cloudevents.h"
#include "workers/common/event_writer.h"

namespace aa::delivery {

// Thread-safe wrapper of EventWriter with waiting for producers (back-pressure) and the writer.
class Outbox {
 public:
  explicit Outbox(WriterOptions options = {}) : writer_(options) {}

  // Waits while the writer is full, up to `maxWait` (then kFull). Never drops an event.
  EnqueueResult enqueue(Event e, std::chrono::milliseconds maxWait);
  void enqueueUntracked(Event e);
  bool ack(const std::string& resourceId, const std::string& eventId);
  void onReconnect();
  // Blocks until something is due or `stopped()` returns true; whoever makes `stopped()` true
  // must then call wake().
  std::vector<Event> waitDue(const std::function<bool()>& stopped);
  void wake();
  WriterStats stats();
  size_t tracked();
  uint64_t backpressureWaits() const { return backpressureWaits_.load(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;     // writer: something to send
  std::condition_variable space_;  // producers: room freed
  EventWriter writer_;
  std::atomic<uint64_t> backpressureWaits_{0};
};

// Where received business events go (a later issue plugs real stores in).
class Sink {
 public:
  enum class Result { kApplied, kDuplicate, kRetry, kRejected };
  virtual ~Sink() noexcept(false) = default;  // a sink may own KJ objects (state_link.h)
  // `problem` is set for kRejected (logged with the resource).
  virtual Result apply(const Event& event, std::string& problem) = 0;
  // A deferred sink keeps its own receive ledger elsewhere (the agent's cache worker) and
  // answers later, on another thread: applyLater instead of the pump's ledger and apply. `done`
  // may run after the stream that received the event ended; it must not need the stream.
  virtual bool deferred() const { return false; }
  using Done = std::function<void(Result)>;
  virtual void applyLater(const Event& /*event*/, Done done) { done(Result::kRetry); }
};

// Checks the §1.4 rules for a received event. Returns the problem, or nullopt if acceptable.
std::optional<std::string> validateEvent(const Event& event);

struct PumpStats {
  uint64_t received = 0, applied = 0, duplicates = 0, rejected = 0, acksReceived = 0;
  uint64_t deferred = 0;                   // handed to a deferred sink (answered later)
  uint64_t unsupported = 0;                // recognised upstream types ACKed without action
  std::set<std::string> unsupportedTypes;  // those already logged on this stream
};

// Optional observer of every event received, before it is handled (ACKs and heartbeats included).
using EventObserver = std::function<void(const Event& event)>;

// How a received event other than an ACK was handled, as upstream's event_processing_time
// labels it: success (applied, or a heartbeat), failure (malformed, refused by the sink, or to
// be retried) or discarded (a duplicate, or a type this implementation does not act on).
enum class Processed { kSuccess, kFailure, kDiscarded };
const char* toString(Processed p);
// Optional observer told of each such event after it was handled: its target (dataschema), the
// outcome and the time it took.
using ProcessedObserver = std::function<void(const std::string& target, Processed outcome,
                                             std::chrono::nanoseconds took)>;

// Runs until the stream ends (Read fails) or a Write fails. `Stream` is a grpc++ sync
// ReaderWriter (client or server side). `peer` names the other side in logs. `sent`, if given,
// counts every event written (ACKs and heartbeats included), for metrics. `processed`, if given,
// is told how each received event other than an ACK was handled and how long it took.
// Messages smaller than this are never compressed (ACKs and heartbeats are ~100 bytes; gzip
// makes them larger, and grpc would deflate each one only to send it as it is).
inline constexpr size_t kCompressMinBytes = 512;

template <class Stream>
PumpStats pumpStream(Stream& stream, Outbox& outbox, Sink& sink, ReceiveLedger& ledger,
                     std::mutex& ledgerMu, std::string_view source, const std::string& peer,
                     const EventObserver& observer = nullptr, std::atomic<uint64_t>* sent = nullptr,
                     const ProcessedObserver& processed = nullptr);

// --- implementation helpers (stream_pump.cc) ---
namespace detail {
// Handles one received event; returns an ACK to send (or nullopt). `outcome` is set for every
// event the caller reports now; `reportedElsewhere` is set for an ACK (never reported) and for
// an event handed to a deferred sink (reported when the sink answers, through `processed`).
std::optional<Event> onReceived(const Event& e, Outbox& outbox, Sink& sink, ReceiveLedger& ledger,
                                std::mutex& ledgerMu, std::string_view source,
                                const std::string& peer, PumpStats& stats,
                                const EventObserver& observer, Processed& outcome,
                                bool& reportedElsewhere, const ProcessedObserver& processed);
}  // namespace detail

template <class Stream>
PumpStats pumpStream(Stream& stream, Outbox& outbox, Sink& sink, ReceiveLedger& ledger,
                     std::mutex& ledgerMu, std::string_view source, const std::string& peer,
                     const EventObserver& observer, std::atomic<uint64_t>* sent,
                     const ProcessedObserver& processed) {
  std::atomic<bool> done{false};
  outbox.onReconnect();
  std::thread writer([&] {
    eventstreamapi::Event msg;
    while (!done.load()) {
      auto due = outbox.waitDue([&] { return done.load(); });
      for (size_t i = 0; i < due.size(); ++i) {
        *msg.mutable_event() = std::move(due[i]);
        // Let grpc coalesce a burst into few frames and syscalls; the last one flushes.
        grpc::WriteOptions options;
        if (i + 1 < due.size()) options.set_buffer_hint();
        // With compression on (the agent's --enable-compression), ACKs, heartbeats and small
        // events still go as they are: deflating them costs more than it saves.
        if (msg.ByteSizeLong() < kCompressMinBytes) options.set_no_compression();
        if (!stream.Write(msg, options)) {
          done = true;
          return;
        }
        if (sent) sent->fetch_add(1, std::memory_order_relaxed);
      }
    }
  });
  PumpStats stats;
  eventstreamapi::Event in;
  while (!done.load() && stream.Read(&in)) {
    auto began =
        processed ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    Processed outcome = Processed::kSuccess;
    bool reportedElsewhere = false;
    auto ack = detail::onReceived(in.event(), outbox, sink, ledger, ledgerMu, source, peer, stats,
                                  observer, outcome, reportedElsewhere, processed);
    if (processed && !reportedElsewhere) {
      processed(ce::target(in.event()), outcome, std::chrono::steady_clock::now() - began);
    }
    if (ack) outbox.enqueueUntracked(std::move(*ack));
  }
  done = true;
  outbox.wake();
  writer.join();
  return stats;
}

}  // namespace aa::delivery
