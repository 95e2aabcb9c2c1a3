// Heartbeat liveness and lifetime pattern (heartbeat_monitor.h). Transport worker.
#include "workers/common/heartbeat_monitor.h"

#include <cmath>

namespace aa {

bool HeartbeatMonitor::tick() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!outstanding_.empty()) {
    ++missed_;
    outstanding_.clear();
  }
  return maxMissed_ > 0 && missed_ >= maxMissed_;
}

void HeartbeatMonitor::sent(const std::string& id, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  outstanding_[id] = now;
}

std::optional<std::chrono::nanoseconds> HeartbeatMonitor::acked(const std::string& id,
                                                                Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = outstanding_.find(id);
  if (it == outstanding_.end()) return std::nullopt;
  auto rtt = now - it->second;
  outstanding_.erase(it);
  missed_ = 0;
  lastRtt_ = rtt;
  return rtt;
}

int HeartbeatMonitor::missedInARow() const {
  std::lock_guard<std::mutex> lock(mu_);
  return missed_;
}

std::optional<std::chrono::nanoseconds> HeartbeatMonitor::lastRtt() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lastRtt_;
}

void LifetimePattern::add(std::chrono::milliseconds lived) {
  recent_.push_back(lived);
  while (recent_.size() > window_) recent_.pop_front();
}

std::optional<std::chrono::milliseconds> LifetimePattern::constantLifetime() const {
  if (recent_.size() < window_) return std::nullopt;
  double sum = 0;
  for (auto d : recent_) sum += static_cast<double>(d.count());
  double mean = sum / static_cast<double>(recent_.size());
  if (mean < 1000) return std::nullopt;
  for (auto d : recent_) {
    if (std::abs(static_cast<double>(d.count()) - mean) > 0.15 * mean) return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<int64_t>(mean));
}

}  // namespace aa
