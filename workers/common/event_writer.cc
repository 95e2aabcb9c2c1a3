// Acknowledged delivery engine (event_writer.h). Pure; used by the listener and transport workers.
#include "workers/common/event_writer.h"

#include <algorithm>
#include <cmath>

#include "workers/common/cloudevents.h"

namespace aa::delivery {

const char* toString(EnqueueResult r) {
  switch (r) {
    case EnqueueResult::kQueued:
      return "queued";
    case EnqueueResult::kCoalesced:
      return "coalesced";
    case EnqueueResult::kSuperseded:
      return "superseded";
    case EnqueueResult::kFull:
      return "full";
    case EnqueueResult::kInvalid:
      return "invalid";
  }
  return "?";
}

LatencyHistogram& LatencyHistogram::operator=(const LatencyHistogram& other) {
  if (this == &other) return *this;
  count_ = other.count_;
  buckets_.reset();
  if (other.buckets_) {
    buckets_ = std::make_unique<uint64_t[]>(kBuckets);
    std::copy(other.buckets_.get(), other.buckets_.get() + kBuckets, buckets_.get());
  }
  return *this;
}

void LatencyHistogram::record(std::chrono::nanoseconds d) {
  double us = std::max(1.0, static_cast<double>(d.count()) / 1000.0);
  int b = static_cast<int>(std::log(us) / std::log(1.05));
  if (!buckets_) buckets_ = std::make_unique<uint64_t[]>(kBuckets);  // zeroed
  buckets_[std::clamp(b, 0, kBuckets - 1)]++;
  ++count_;
}

std::chrono::microseconds LatencyHistogram::quantile(double q) const {
  if (count_ == 0) return std::chrono::microseconds(0);
  uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets && buckets_; ++b) {
    seen += buckets_[b];
    if (seen >= std::max<uint64_t>(rank, 1)) {
      return std::chrono::microseconds(static_cast<int64_t>(std::pow(1.05, b + 1)));
    }
  }
  return std::chrono::microseconds(static_cast<int64_t>(std::pow(1.05, kBuckets)));
}

EventWriter::EventWriter(WriterOptions options, uint64_t seed)
    : options_(options), rng_(static_cast<std::minstd_rand::result_type>(seed % 2147483646 + 1)) {}

std::chrono::milliseconds EventWriter::resendDelay(int attempts) {
  double base = static_cast<double>(options_.initialResend.count()) *
                std::pow(options_.factor, static_cast<double>(attempts));
  double cap = static_cast<double>(options_.maxResend.count());
  base = std::min(base, cap);
  std::uniform_real_distribution<double> stretch(0.0, options_.jitter);
  return std::chrono::milliseconds(
      static_cast<int64_t>(std::min(cap, base * (1.0 + stretch(rng_)))));
}

void EventWriter::markReady(const std::string& id, Resource& r) {
  if (!r.inReady && !r.inFlight && !r.unsent.empty()) {
    r.inReady = true;
    ready_.push_back(id);
  }
}

void EventWriter::markAheadReady(const std::string& id, Resource& r) {
  if (aheadPerResource_ > 0 && !r.inAheadReady && r.inFlight && r.unsent.size() > r.ahead &&
      r.ahead < aheadPerResource_) {
    r.inAheadReady = true;
    aheadReady_.push_back(id);
  }
}

void EventWriter::clearAhead(Resource& r) {
  aheadTotal_ -= r.ahead;
  r.ahead = 0;
}

void EventWriter::dropIfIdle(const std::string& id) {
  auto it = resources_.find(id);
  if (it != resources_.end() && !it->second.inFlight && it->second.unsent.empty() &&
      !it->second.inReady && !it->second.inAheadReady) {
    resources_.erase(it);
  }
}

std::vector<const Event*> EventWriter::trackedEvents(const std::string& resourceId) const {
  std::vector<const Event*> out;
  auto it = resources_.find(resourceId);
  if (it == resources_.end()) return out;
  if (it->second.inFlight) out.push_back(&it->second.inFlight->event);
  for (const auto& e : it->second.unsent) out.push_back(&e);
  return out;
}

std::vector<std::string> EventWriter::trackedResources() const {
  std::vector<std::string> out;
  for (const auto& [id, r] : resources_) {
    if (r.inFlight || !r.unsent.empty()) out.push_back(id);
  }
  return out;
}

EnqueueResult EventWriter::enqueue(Event event) {
  std::string id = ce::stringAttr(event, "resourceid");
  if (id.empty() || ce::stringAttr(event, "eventid").empty()) return EnqueueResult::kInvalid;
  const std::string& type = event.type();
  Resource& r = resources_[id];

  if (type == std::string(ce::kTypePrefix) + "delete") {
    size_t dropped = r.unsent.size() + (r.inFlight ? 1 : 0);
    tracked_ -= dropped;
    stats_.superseded += dropped;
    r.unsent.clear();
    clearAhead(r);  // the edge's copies leave before the delete, which supersedes them
    if (r.inFlight) resends_.erase(r.inFlight->resendAt);
    r.inFlight.reset();  // its ACK, if it comes, will not match anything
    r.unsent.push_back(std::move(event));
    ++tracked_;
    markReady(id, r);
    return dropped > 0 ? EnqueueResult::kSuperseded : EnqueueResult::kQueued;
  }
  if (type == std::string(ce::kTypePrefix) + "spec-update" ||
      type == std::string(ce::kTypePrefix) + "status-update") {
    // Not into what was leased ahead: the edge has those already.
    for (size_t i = r.ahead; i < r.unsent.size(); ++i) {
      auto& pending = r.unsent[i];
      if (pending.type() == type) {
        pending = std::move(event);
        ++stats_.coalesced;
        return EnqueueResult::kCoalesced;
      }
    }
  }
  if (tracked_ >= options_.capacity) {
    ++stats_.rejectedFull;
    dropIfIdle(id);
    return EnqueueResult::kFull;
  }
  r.unsent.push_back(std::move(event));
  ++tracked_;
  markReady(id, r);
  markAheadReady(id, r);
  return EnqueueResult::kQueued;
}

void EventWriter::enqueueUntracked(Event event) { untracked_.push_back(std::move(event)); }

namespace {
int64_t wallNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

std::vector<Event> EventWriter::takeDue(Clock::time_point now, size_t max,
                                        std::vector<Handed>* why) {
  std::vector<Event> out;
  auto hand = [&](Event e, Handed h) {
    out.push_back(std::move(e));
    if (why != nullptr) why->push_back(h);
  };
  while (!untracked_.empty() && out.size() < max) {
    hand(std::move(untracked_.front()), Handed::kUntracked);
    untracked_.pop_front();
  }
  while (!ready_.empty() && out.size() < max) {
    std::string id = std::move(ready_.front());
    ready_.pop_front();
    auto it = resources_.find(id);
    if (it == resources_.end()) continue;
    Resource& r = it->second;
    r.inReady = false;
    if (r.inFlight || r.unsent.empty()) continue;
    InFlight f;
    f.event = std::move(r.unsent.front());
    r.unsent.pop_front();
    f.eventId = ce::stringAttr(f.event, "eventid");
    f.due = now + resendDelay(0);
    f.firstSent = now;
    f.resendAt = resends_.emplace(f.due, id);
    if (r.ahead > 0) {
      // Leased ahead: the edge sent it on the previous one's ACK (or will); not handed again.
      --r.ahead;
      --aheadTotal_;
      r.inFlight = std::move(f);
    } else {
      hand(f.event, Handed::kFirst);
      ce::stampSentAt(out.back(), wallNanos());
      r.inFlight = std::move(f);
      ++stats_.sent;
    }
    markAheadReady(id, r);
  }
  while (!resends_.empty() && resends_.begin()->first <= now && out.size() < max) {
    std::string id = std::move(resends_.begin()->second);
    resends_.erase(resends_.begin());
    auto it = resources_.find(id);
    if (it == resources_.end() || !it->second.inFlight) continue;  // cannot happen: erased with it
    InFlight& f = *it->second.inFlight;
    ++f.attempts;
    f.due = now + resendDelay(f.attempts);
    f.resendAt = resends_.emplace(f.due, id);
    hand(f.event, Handed::kResend);
    ce::stampSentAt(out.back(), wallNanos());
    ++stats_.resent;
  }
  return out;
}

void EventWriter::setLeaseAhead(size_t perResource, size_t total) {
  bool more = perResource > aheadPerResource_ || total > aheadMax_;
  aheadPerResource_ = perResource;
  aheadMax_ = total;
  if (more) {
    for (auto& [id, r] : resources_) markAheadReady(id, r);
  }
}

std::vector<Event> EventWriter::takeAhead(size_t max) {
  std::vector<Event> out;
  while (!aheadReady_.empty() && out.size() < max && aheadTotal_ < aheadMax_) {
    auto it = resources_.find(aheadReady_.front());
    if (it == resources_.end()) {
      aheadReady_.pop_front();  // cannot happen: kept while queued here
      continue;
    }
    Resource& r = it->second;
    while (r.inFlight && r.ahead < r.unsent.size() && r.ahead < aheadPerResource_ &&
           out.size() < max && aheadTotal_ < aheadMax_) {
      out.push_back(r.unsent[r.ahead++]);
      ++aheadTotal_;
      ce::stampSentAt(out.back(), wallNanos());
      ++stats_.sent;
    }
    if (r.inFlight && r.ahead < r.unsent.size() && r.ahead < aheadPerResource_) break;  // max
    r.inAheadReady = false;
    std::string id = std::move(aheadReady_.front());
    aheadReady_.pop_front();
    dropIfIdle(id);
  }
  return out;
}

bool EventWriter::ack(const std::string& resourceId, const std::string& eventId,
                      Clock::time_point now, std::chrono::nanoseconds measured) {
  auto it = resources_.find(resourceId);
  if (it == resources_.end()) return false;
  Resource& r = it->second;
  if (r.inFlight && r.inFlight->eventId == eventId) {
    stats_.ackLatency.record(measured.count() > 0 ? measured : now - r.inFlight->firstSent);
    resends_.erase(r.inFlight->resendAt);
    r.inFlight.reset();
  } else if (!r.inFlight && r.ahead > 0 && ce::stringAttr(r.unsent.front(), "eventid") == eventId) {
    // Leased ahead, sent by the edge on the previous ACK, and ACKed before takeDue promoted it.
    if (measured.count() > 0) stats_.ackLatency.record(measured);
    r.unsent.pop_front();
    --r.ahead;
    --aheadTotal_;
  } else {
    return false;
  }
  --tracked_;
  ++stats_.acked;
  markReady(resourceId, r);
  dropIfIdle(resourceId);
  return true;
}

void EventWriter::onReconnect(Clock::time_point now) {
  for (auto& [id, r] : resources_) {
    clearAhead(r);
    markAheadReady(id, r);
    if (!r.inFlight) continue;
    resends_.erase(r.inFlight->resendAt);
    r.inFlight->due = now;
    r.inFlight->resendAt = resends_.emplace(now, id);
  }
}

std::optional<Clock::time_point> EventWriter::nextDeadline(Clock::time_point now) const {
  if (!untracked_.empty() || !ready_.empty()) return now;
  if (!aheadReady_.empty() && aheadTotal_ < aheadMax_) return now;
  if (resends_.empty()) return std::nullopt;
  return resends_.begin()->first;
}

bool ReceiveLedger::seen(const std::string& resourceId, const std::string& eventId) const {
  auto it = recent_.find(resourceId);
  if (it == recent_.end()) return false;
  return std::find(it->second.begin(), it->second.end(), eventId) != it->second.end();
}

void ReceiveLedger::record(const std::string& resourceId, const std::string& eventId) {
  auto& q = recent_[resourceId];
  q.push_back(eventId);
  while (q.size() > perResource_) q.pop_front();
}

}  // namespace aa::delivery
