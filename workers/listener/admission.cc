// Connection admission at the front door (admission.h).
#include "workers/listener/admission.h"

namespace aa {

const char* describe(Refusal r) {
  switch (r) {
    case Refusal::kNone:
      return "admitted";
    case Refusal::kConnections:
      return "too many connections";
    case Refusal::kUnauthenticated:
      return "too many unauthenticated connections";
    case Refusal::kEarlyDrop:
      return "dropped early: unauthenticated connections near their limit";
    case Refusal::kSource:
      return "too many unauthenticated connections from this source";
    case Refusal::kHandshakes:
      return "too many TLS handshakes in progress";
  }
  return "?";
}

Refusal Admission::admit(const std::string& source, bool tls, double coin) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto& l = limits_;
  if (l.maxConnections > 0 && connections_ >= l.maxConnections) return Refusal::kConnections;
  if (l.maxUnauthenticated > 0 && unauthenticated_ >= l.maxUnauthenticated) {
    return Refusal::kUnauthenticated;
  }
  if (l.maxPerSource > 0 && !source.empty()) {
    auto it = perSource_.find(source);
    if (it != perSource_.end() && it->second >= l.maxPerSource) return Refusal::kSource;
  }
  if (tls && l.maxHandshakes > 0 && handshakes_ >= l.maxHandshakes) return Refusal::kHandshakes;
  if (l.earlyDropStart > 0 && l.maxUnauthenticated > l.earlyDropStart &&
      unauthenticated_ >= l.earlyDropStart) {
    // 30 % at the start of the band, 100 % at its end.
    double span = static_cast<double>(l.maxUnauthenticated - l.earlyDropStart);
    double p = 0.3 + 0.7 * static_cast<double>(unauthenticated_ - l.earlyDropStart) / span;
    if (coin < p) return Refusal::kEarlyDrop;
  }
  ++connections_;
  ++unauthenticated_;
  if (tls) ++handshakes_;
  if (l.maxPerSource > 0 && !source.empty()) ++perSource_[source];
  return Refusal::kNone;
}

void Admission::handshakeEnded() {
  std::lock_guard<std::mutex> lock(mu_);
  if (handshakes_ > 0) --handshakes_;
}

void Admission::dropSource(const std::string& source) {
  if (limits_.maxPerSource == 0 || source.empty()) return;
  auto it = perSource_.find(source);
  if (it == perSource_.end()) return;
  if (--it->second == 0) perSource_.erase(it);
}

void Admission::authenticated(const std::string& source) {
  std::lock_guard<std::mutex> lock(mu_);
  if (unauthenticated_ > 0) --unauthenticated_;
  dropSource(source);
}

void Admission::closed(const std::string& source, bool wasAuthenticated) {
  std::lock_guard<std::mutex> lock(mu_);
  if (connections_ > 0) --connections_;
  if (!wasAuthenticated) {
    if (unauthenticated_ > 0) --unauthenticated_;
    dropSource(source);
  }
}

Admission::Counts Admission::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {connections_, unauthenticated_, handshakes_, perSource_.size()};
}

}  // namespace aa
