// Connection admission at the principal's front door (issue "overload and abuse resistance"):
// which new connection is accepted, before any work is spent on it. Pure bookkeeping, no I/O and
// no clock (the caller passes the coin for random early drop), so every rule is table-tested
// (admission_test.cc). Thread-safe: every front-door loop of a listener shares one.
//
// A connection is *unauthenticated* from accept until a Subscribe on it presented a valid token
// (the TLS handshake, Authenticate and Version all happen in that state); limits:
//   - all connections: `maxConnections`, below the descriptor limit (a TLS connection costs three
//     descriptors: the socket and both ends of the relay's socketpair), so that accept never
//     fails with EMFILE and a refused client learns it at once instead of waiting in the backlog;
//   - unauthenticated connections: `maxUnauthenticated`; above `earlyDropStart` a new one is
//     refused with a probability rising linearly from 30 % to 100 % (OpenSSH MaxStartups), so
//     a flood thins out before it fills the table;
//   - unauthenticated connections per source address: `maxPerSource` (0: off), so that one
//     source cannot take the handshake slots of everyone else;
//   - TLS handshakes in progress: `maxHandshakes`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace aa {

struct AdmissionLimits {
  size_t maxConnections = 0;      // 0: no cap
  size_t maxUnauthenticated = 0;  // 0: no cap
  size_t earlyDropStart = 0;      // 0: no early drop
  size_t maxPerSource = 0;        // 0: no per-source cap
  size_t maxHandshakes = 0;       // 0: no cap
};

enum class Refusal {
  kNone,
  kConnections,      // too many connections
  kUnauthenticated,  // too many unauthenticated connections
  kEarlyDrop,        // dropped early: unauthenticated connections near their cap
  kSource,           // too many unauthenticated connections from this source
  kHandshakes,       // too many TLS handshakes in progress
};
constexpr int kRefusals = static_cast<int>(Refusal::kHandshakes) + 1;  // kNone included
const char* describe(Refusal r);

class Admission {
 public:
  explicit Admission(AdmissionLimits limits) : limits_(limits) {}

  // A new connection from `source` (an address without port; "" when the per-source cap does not
  // apply). `tls`: it will handshake. `coin` in [0, 1): the early-drop draw. On kNone the
  // connection is counted (unauthenticated, and handshaking if `tls`) until released.
  Refusal admit(const std::string& source, bool tls, double coin);
  void handshakeEnded();                          // once per admitted TLS connection
  void authenticated(const std::string& source);  // at most once per admitted connection
  void closed(const std::string& source, bool wasAuthenticated);

  struct Counts {
    size_t connections = 0, unauthenticated = 0, handshakes = 0, sources = 0;
  };
  Counts counts() const;
  const AdmissionLimits& limits() const { return limits_; }

 private:
  void dropSource(const std::string& source);

  const AdmissionLimits limits_;
  mutable std::mutex mu_;
  size_t connections_ = 0, unauthenticated_ = 0, handshakes_ = 0;
  std::unordered_map<std::string, size_t> perSource_;  // unauthenticated, by source
};

}  // namespace aa
