// Outbox, event validation and the receive path of a stream (stream_pump.h). Runs in the
// listener and transport workers, on grpc threads.
#include "workers/common/stream_pump.h"

#include "ipc/runtime/log.h"
#include "workers/common/cloudevents.h"
#include "workers/common/json_syntax.h"

namespace aa::delivery {

EnqueueResult Outbox::enqueue(Event e, std::chrono::milliseconds maxWait) {
  std::unique_lock<std::mutex> lock(mu_);
  auto deadline = Clock::now() + maxWait;
  while (true) {
    // Copy only when we might have to retry: coalescing and deletes are accepted even when full.
    EnqueueResult r = writer_.enqueue(e);
    if (r != EnqueueResult::kFull) {
      cv_.notify_one();
      return r;
    }
    backpressureWaits_++;
    if (space_.wait_until(lock, deadline) == std::cv_status::timeout) return EnqueueResult::kFull;
  }
}

void Outbox::enqueueUntracked(Event e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    writer_.enqueueUntracked(std::move(e));
  }
  cv_.notify_one();
}

bool Outbox::ack(const std::string& resourceId, const std::string& eventId) {
  bool matched;
  {
    std::lock_guard<std::mutex> lock(mu_);
    matched = writer_.ack(resourceId, eventId);
  }
  if (matched) {
    cv_.notify_one();  // the resource's next event may now go
    space_.notify_all();
  }
  return matched;
}

void Outbox::onReconnect() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    writer_.onReconnect(Clock::now());
  }
  cv_.notify_one();
}

void Outbox::wake() {
  // Taking the lock orders this after a waiter's check of its stop condition, so the
  // notification cannot fall between that check and its wait.
  { std::lock_guard<std::mutex> lock(mu_); }
  cv_.notify_all();
}

std::vector<Event> Outbox::waitDue(const std::function<bool()>& stopped) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopped()) {
    auto now = Clock::now();
    auto out = writer_.takeDue(now, 256);
    if (!out.empty()) return out;
    // Sleep until the next re-send is due or a producer, an ACK or wake() notifies; the 5 s cap
    // is only a safety net (idle streams must not wake their thread several times a second).
    auto next = writer_.nextDeadline(now);
    auto limit = now + std::chrono::seconds(5);
    cv_.wait_until(lock, next && *next < limit ? *next : limit);
  }
  return {};
}

WriterStats Outbox::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return writer_.stats();
}

size_t Outbox::tracked() {
  std::lock_guard<std::mutex> lock(mu_);
  return writer_.tracked();
}

std::optional<std::string> validateEvent(const Event& e) {
  if (e.spec_version() != ce::kSpecVersion) {
    return "spec_version is '" + e.spec_version().substr(0, 16) + "', must be '1.0'";
  }
  auto ds = e.attributes().find("dataschema");
  if (ds == e.attributes().end()) return "dataschema attribute is missing";
  if (!ds->second.has_ce_uri()) return "dataschema must be a ce_uri attribute";
  for (const char* ext : {"resourceid", "eventid"}) {
    auto it = e.attributes().find(ext);
    if (it == e.attributes().end()) return std::string(ext) + " extension is missing";
    if (!it->second.has_ce_string()) return std::string(ext) + " extension must be ce_string";
  }
  if (e.has_text_data()) return "data must be binary_data (text_data is not accepted)";
  switch (ce::classify(e.type())) {
    case ce::Kind::kUnknown:
      return "unknown type '" + e.type().substr(0, 64) + "'";
    case ce::Kind::kObject:
      if (!json::isValid(e.binary_data())) return "payload is not valid JSON";
      break;
    default:
      break;
  }
  return std::nullopt;
}

const char* toString(Processed p) {
  switch (p) {
    case Processed::kSuccess:
      return "success";
    case Processed::kFailure:
      return "failure";
    case Processed::kDiscarded:
      return "discarded";
  }
  return "failure";
}

namespace detail {

std::optional<Event> onReceived(const Event& e, Outbox& outbox, Sink& sink, ReceiveLedger& ledger,
                                std::mutex& ledgerMu, std::string_view source,
                                const std::string& peer, PumpStats& stats,
                                const EventObserver& observer, Processed& outcome,
                                bool& reportedElsewhere, const ProcessedObserver& processed) {
  ++stats.received;
  if (observer) observer(e);
  outcome = Processed::kFailure;
  if (e.type() == ce::kProcessed) {
    reportedElsewhere = true;
    ++stats.acksReceived;
    outbox.ack(ce::stringAttr(e, "resourceid"), ce::stringAttr(e, "eventid"));
    return std::nullopt;
  }
  std::string resource = ce::stringAttr(e, "resourceid");
  if (auto problem = validateEvent(e)) {
    ++stats.rejected;
    spdlog::error("{}: rejected event type '{}' for resource '{}': {}", peer,
                  e.type().substr(0, 64), resource.empty() ? "(none)" : resource.substr(0, 128),
                  *problem);
    // Acknowledge it anyway: re-sending a malformed event cannot make it valid.
    return ce::makeAck(e, source);
  }
  switch (ce::classify(e.type())) {
    case ce::Kind::kHeartbeat:
      spdlog::debug("{}: received heartbeat", peer);
      outcome = Processed::kSuccess;
      return ce::makeAck(e, source);
    case ce::Kind::kUnsupported:
      outcome = Processed::kDiscarded;
      ++stats.unsupported;
      if (stats.unsupportedTypes.insert(e.type()).second) {
        spdlog::debug(
            "{}: received event type '{}' (target '{}'): not supported by this implementation, "
            "acknowledged without action (logged once per stream)",
            peer, e.type(), ce::target(e).substr(0, 64));
      }
      return ce::makeAck(e, source);
    default:
      break;
  }
  if (sink.deferred()) {
    // Applied (or found a duplicate) by the sink's owner; ACKed once it answered. The ACK goes
    // to the Outbox, which outlives streams: an answer after this stream ended is sent on the
    // next one (the sender may still track the event: it re-sent it meanwhile).
    reportedElsewhere = true;
    ++stats.deferred;
    auto began = std::chrono::steady_clock::now();
    // (A rejection is logged, with its reason, by the sink's owner.)
    sink.applyLater(e, [&outbox, ack = ce::makeAck(e, source), target = ce::target(e), began,
                        processed](Sink::Result r) mutable {
      Processed outcome = r == Sink::Result::kApplied     ? Processed::kSuccess
                          : r == Sink::Result::kDuplicate ? Processed::kDiscarded
                                                          : Processed::kFailure;
      if (processed) processed(target, outcome, std::chrono::steady_clock::now() - began);
      if (r != Sink::Result::kRetry) outbox.enqueueUntracked(std::move(ack));
    });
    return std::nullopt;
  }
  std::string eventId = ce::stringAttr(e, "eventid");
  {
    std::lock_guard<std::mutex> lock(ledgerMu);
    if (ledger.seen(resource, eventId)) {
      ++stats.duplicates;
      outcome = Processed::kDiscarded;
      return ce::makeAck(e, source);
    }
  }
  std::string problem;
  switch (sink.apply(e, problem)) {
    case Sink::Result::kApplied: {
      std::lock_guard<std::mutex> lock(ledgerMu);
      ledger.record(resource, eventId);
      ++stats.applied;
      outcome = Processed::kSuccess;
      return ce::makeAck(e, source);
    }
    case Sink::Result::kDuplicate:  // only a deferred sink knows of duplicates
    case Sink::Result::kRetry:
      return std::nullopt;  // no ACK: the sender re-sends later
    case Sink::Result::kRejected:
      ++stats.rejected;
      spdlog::error("{}: event type '{}' for resource '{}' not applied: {}", peer, e.type(),
                    resource.substr(0, 128), problem);
      return ce::makeAck(e, source);
  }
  return std::nullopt;
}

}  // namespace detail
}  // namespace aa::delivery
