// The TLS session-ticket keys of the principal (ipc/supervisor.capnp, Supervisor.ticketKeys). The
// supervisor keeps them because it outlives every listener worker: a ticket issued by any listener
// worker, or by an earlier generation of one, resumes on every other. A key encrypts new tickets
// for one rotation interval and still decrypts for one more, so a ticket (whose lifetime is set to
// the interval) always finds its key. Keys never leave memory: no file, no log line.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <vector>

namespace aa {

class TicketKeys {
 public:
  static constexpr size_t kKeySize = 80;  // 16 name, 32 HMAC-SHA256, 32 AES-256 (RAND_bytes)
  using Key = std::array<uint8_t, kKeySize>;
  using Clock = std::chrono::steady_clock;

  // `rotation` 0: tickets are off (no keys).
  explicit TicketKeys(std::chrono::nanoseconds rotation) : rotation_(rotation) {}

  struct Answer {
    std::vector<Key> keys;                   // newest first; empty when tickets are off
    std::chrono::milliseconds refreshIn{0};  // until the next rotation
  };
  // Rotates first if an interval (or more) passed since the last rotation.
  Answer current(Clock::time_point now);

 private:
  static Key fresh();
  std::chrono::nanoseconds rotation_;
  std::vector<Key> keys_;  // newest first, at most 2
  Clock::time_point rotatedAt_{};
};

}  // namespace aa
