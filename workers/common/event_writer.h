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
// Leasing ahead (the principal's cache worker, ARCHITECTURE.md decision 17): the next few unsent
// events of a resource with one in flight can be handed out early, so that the edge sending them
// can keep stop-and-wait on the wire by itself (the next one leaves on the ACK, without asking
// here first). They stay tracked and unsent here - coalescing never touches them - until their
// ACK arrives or takeDue promotes them to in flight without handing them out again.
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

// Why an event was handed out (takeDue, takeAhead).
enum class Handed : uint8_t {
  kUntracked,  // an ACK or heartbeat: send it now
  kFirst,      // now the resource's one in flight (any earlier one is gone: superseded)
  kResend,     // the in-flight event again (its re-send time came, or the stream is new)
  kAhead,      // leased ahead: send it once the resource's current in-flight event is ACKed
};
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
  // With `why`, one entry per returned event. An event leased ahead that becomes in flight is
  // not returned again (the edge has it).
  std::vector<Event> takeDue(Clock::time_point now, size_t max = SIZE_MAX,
                             std::vector<Handed>* why = nullptr);

  // Leasing ahead: at most `perResource` events leased ahead per resource, `total` across all
  // (0: never). Set before takeAhead.
  void setLeaseAhead(size_t perResource, size_t total);
  // Up to `max` unsent events leased ahead, in each resource's order (Handed::kAhead).
  std::vector<Event> takeAhead(size_t max = SIZE_MAX);
  size_t leasedAhead() const { return aheadTotal_; }

  // Returns true if it matched the in-flight event of that resource, or (leasing ahead) the
  // first event leased ahead once nothing is in flight. `measured`: the send-to-ACK time seen
  // where the event was sent (0: from here).
  bool ack(const std::string& resourceId, const std::string& eventId,
           Clock::time_point now = Clock::now(),
           std::chrono::nanoseconds measured = std::chrono::nanoseconds(0));

  // The stream was re-established: every in-flight event is re-sent at the next takeDue, and
  // what was leased ahead is unsent again (the old stream's edge took it with it).
  void onReconnect(Clock::time_point now);

  // When takeDue would next return something without new input (nullopt: only input can).
  // With leasing ahead on, events that could be leased ahead count as due now.
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
    std::deque<Event> unsent;  // the first `ahead` of them are leased ahead
    std::optional<InFlight> inFlight;
    uint32_t ahead = 0;
    bool inReady = false, inAheadReady = false;
  };

  std::chrono::milliseconds resendDelay(int attempts);
  void markReady(const std::string& id, Resource& r);
  void markAheadReady(const std::string& id, Resource& r);
  void dropIfIdle(const std::string& id);
  void clearAhead(Resource& r);

  WriterOptions options_;
  std::minstd_rand rng_;  // re-send jitter only; 8 bytes where mt19937_64 takes 2.5 KiB per agent
  std::unordered_map<std::string, Resource> resources_;
  std::deque<std::string> ready_;  // resources with unsent events and nothing in flight
  // Resources that may have events to lease ahead (re-checked when taken).
  std::deque<std::string> aheadReady_;
  size_t aheadPerResource_ = 0, aheadMax_ = 0, aheadTotal_ = 0;
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
