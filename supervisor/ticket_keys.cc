// TLS session-ticket keys kept by the supervisor (ticket_keys.h).
#include "supervisor/ticket_keys.h"

#include <openssl/rand.h>

#include <stdexcept>

namespace aa {

TicketKeys::Key TicketKeys::fresh() {
  Key k;
  if (RAND_bytes(k.data(), static_cast<int>(k.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed: no session-ticket key");
  }
  return k;
}

TicketKeys::Answer TicketKeys::current(Clock::time_point now) {
  Answer a;
  if (rotation_.count() <= 0) return a;
  if (keys_.empty()) {
    keys_.push_back(fresh());
    rotatedAt_ = now;
  }
  // One new key per interval that passed; after two, none of the old ones is left.
  for (int i = 0; i < 2 && now - rotatedAt_ >= rotation_; ++i) {
    keys_.insert(keys_.begin(), fresh());
    if (keys_.size() > 2) keys_.pop_back();
    rotatedAt_ += rotation_;
  }
  if (now - rotatedAt_ >= rotation_) {  // slept through many intervals: start anew
    keys_ = {fresh()};
    rotatedAt_ = now;
  }
  a.keys = keys_;
  a.refreshIn = std::chrono::ceil<std::chrono::milliseconds>(rotatedAt_ + rotation_ - now);
  return a;
}

}  // namespace aa
