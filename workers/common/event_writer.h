// Acknowledged delivery of CloudEvents to one peer (wire spec §1.6), used by the principal for
// each agent and by the agent for its principal. Pure: no threads, no I/O, time is a parameter,
// so every rule is unit-tested (event_writer_test.cc). The caller (outbox.h) adds locking.
//
// Rules, as upstream: per-resource stop-and-wait (at most one sent-but-unacknowledged event per
// `resourceid`; different resources never wait for each other); an ACK removes the in-flight
// event only if resourceid and eventid both match; re-send 5 s ×4 with jitter, capped at 2 min,
// until acknowledged; pending spec-/status-updates coalesce (newest of each type wins, in place);
// a delete supersedes everything pending for its resource; after a reconnect every in-flight
// event is due at once. ACKs and heartbeats are untracked and always leave before business events.
// Better than upstream: the writer is bounded and says so (kFull: the producer must wait), it
// never drops the oldest event.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "cloudevent.pb.h"

namespace aa::delivery {

using Event = io::cloudevents::v1::CloudEvent;
using Clock = std::chrono::steady_clock;

struct WriterOptions {
  size_t capacity = 10'000;  // tracked events (unsent + in flight) across all resources
  std::chrono::milliseconds initialResend{5'000};
  double factor = 4.0;
  double jitter = 1.0;  // each delay is stretched by a random 0..jitter fraction
  std::chrono::milliseconds maxResend{120'000};
};

enum class EnqueueResult { kQueued, kCoalesced, kSuperseded, kFull, kInvalid };
const char* toString(EnqueueResult r);

// Bounded latency histogram: log-scale buckets 5 % wide from 1 µs to ~1 h.
// The buckets (3.7 KiB) are allocated by the first record: the principal keeps one writer per
// agent, and an idle agent's writer records nothing.
class LatencyHistogram {
 public:
  LatencyHistogram() = default;
  LatencyHistogram(const LatencyHistogram& other) { *this = other; }
  LatencyHistogram& operator=(const LatencyHistogram& other);
  LatencyHistogram(LatencyHistogram&&) = default;
  LatencyHistogram& operator=(LatencyHistogram&&) = default;
  void record(std::chrono::nanoseconds d);
  // q in [0,1]; the upper edge of the bucket holding that quantile; 0 when empty.
  std::chrono::microseconds quantile(double q) const;
  uint64_t count() const { return count_; }

 private:
  static constexpr int kBuckets = 460;
  std::unique_ptr<uint64_t[]> buckets_;
  uint64_t count_ = 0;
};

struct WriterStats {
  uint64_t sent = 0, resent = 0, acked = 0, coalesced = 0, superseded = 0, rejectedFull = 0;
  LatencyHistogram ackLatency;  // first send -> matching ACK
};

class EventWriter {
 public:
  explicit EventWriter(WriterOptions options = {}, uint64_t seed = std::random_device{}());

  // A business event; needs ce_string extensions resourceid and eventid (else kInvalid).
  EnqueueResult enqueue(Event event);
  // ACKs and heartbeats: fire-and-forget, sent before any business event.
  void enqueueUntracked(Event event);

  // Everything that should go on the wire at `now`, in order: untracked first, then resources in
  // the order they became ready, then due re-sends. Marks returned business events in flight.
  std::vector<Event> takeDue(Clock::time_point now, size_t max = SIZE_MAX);

  // Returns true if it matched the in-flight event of that resource.
  bool ack(const std::string& resourceId, const std::string& eventId,
           Clock::time_point now = Clock::now());

  // The stream was re-established: every in-flight event is re-sent at the next takeDue.
  void onReconnect(Clock::time_point now);

  // When takeDue would next return something without new input (nullopt: only input can).
  std::optional<Clock::time_point> nextDeadline(Clock::time_point now) const;
  bool hasUntracked() const { return !untracked_.empty(); }
  size_t tracked() const { return tracked_; }
  // The events tracked for one resource, in flight first, then unsent in order (for keeping the
  // writer's state elsewhere: enqueueing them again in this order rebuilds it).
  std::vector<const Event*> trackedEvents(const std::string& resourceId) const;
  // The resources with tracked events.
  std::vector<std::string> trackedResources() const;
  bool full() const { return tracked_ >= options_.capacity; }
  const WriterStats& stats() const { return stats_; }

 private:
  // Re-send deadlines, earliest first; an in-flight event owns exactly one entry, erased when it
  // is acknowledged or superseded (no stale entries: an idle writer has no deadline at all).
  using Resends = std::multimap<Clock::time_point, std::string>;
  struct InFlight {
    Event event;
    std::string eventId;
    Clock::time_point due;
    Clock::time_point firstSent;
    int attempts = 0;
    Resends::iterator resendAt;
  };
  struct Resource {
    std::deque<Event> unsent;
    std::optional<InFlight> inFlight;
    bool inReady = false;
  };

  std::chrono::milliseconds resendDelay(int attempts);
  void markReady(const std::string& id, Resource& r);
  void dropIfIdle(const std::string& id);

  WriterOptions options_;
  std::minstd_rand rng_;  // re-send jitter only; 8 bytes where mt19937_64 takes 2.5 KiB per agent
  std::unordered_map<std::string, Resource> resources_;
  std::deque<std::string> ready_;  // resources with unsent events and nothing in flight
  Resends resends_;
  std::deque<Event> untracked_;
  size_t tracked_ = 0;
  WriterStats stats_;
};

// Receive-side duplicate detection: a re-sent event (same resourceid and eventid) is acknowledged
// again but applied once. Remembers the last `perResource` event ids of each resource.
class ReceiveLedger {
 public:
  explicit ReceiveLedger(size_t perResource = 32) : perResource_(perResource) {}
  // True if this event was applied before.
  bool seen(const std::string& resourceId, const std::string& eventId) const;
  void record(const std::string& resourceId, const std::string& eventId);
  // Every resource's recently applied IDs, oldest first.
  template <class F>
  void forEach(F f) const {
    for (const auto& [resource, ids] : recent_) f(resource, ids);
  }
  // The recently applied IDs of a resource, oldest first (nullptr: none).
  const std::deque<std::string>* recent(const std::string& resourceId) const {
    auto it = recent_.find(resourceId);
    return it == recent_.end() ? nullptr : &it->second;
  }

 private:
  size_t perResource_;
  std::unordered_map<std::string, std::deque<std::string>> recent_;
};

}  // namespace aa::delivery
