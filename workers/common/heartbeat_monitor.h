// Agent-side liveness of one stream, judged by application heartbeats (better than upstream, which
// never checks their ACKs): each tick counts the previous heartbeat as missed if it is still
// unacknowledged; `maxMissed` misses in a row declare the stream dead. Also keeps the round-trip
// time of the latest acknowledged heartbeat. Pure and thread-safe (the transport's heartbeat thread
// ticks, the stream's reader thread reports ACKs). Runs in the transport worker.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace aa {

class HeartbeatMonitor {
 public:
  using Clock = std::chrono::steady_clock;
  explicit HeartbeatMonitor(int maxMissed) : maxMissed_(maxMissed) {}

  // Before sending the next heartbeat: returns true if the stream must be declared dead.
  bool tick();
  void sent(const std::string& id, Clock::time_point now);
  // An ACK arrived for `id`; returns the round trip if it was an outstanding heartbeat.
  std::optional<std::chrono::nanoseconds> acked(const std::string& id, Clock::time_point now);

  int missedInARow() const;
  std::optional<std::chrono::nanoseconds> lastRtt() const;

 private:
  mutable std::mutex mu_;
  int maxMissed_;
  int missed_ = 0;
  std::map<std::string, Clock::time_point> outstanding_;
  std::optional<std::chrono::nanoseconds> lastRtt_;
};

// Recognises a constant stream lifetime (a proxy's idle timeout): true when the last `window`
// lifetimes are all within 15 % of their mean and at least 1 s.
class LifetimePattern {
 public:
  explicit LifetimePattern(size_t window = 3) : window_(window) {}
  void add(std::chrono::milliseconds lived);
  std::optional<std::chrono::milliseconds> constantLifetime() const;

 private:
  size_t window_;
  std::deque<std::chrono::milliseconds> recent_;
};

}  // namespace aa
