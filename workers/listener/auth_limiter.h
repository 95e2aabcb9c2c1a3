// Admission of Authenticate and RefreshToken calls before any credential work (bcrypt, RSA) is
// spent on them (issue "overload and abuse resistance", authentication flood). Pure: time is a
// parameter, so every rule is table-tested (auth_limiter_test.cc). One per listener, used on its
// KJ thread only.
//
//   - per source address, calls waiting for the auth worker at once: `maxPendingPerSource`, so
//     one source cannot fill the auth worker's queue however many connections it opens;
//   - per source address, a bucket of failures (OpenSSH PerSourcePenalties in spirit): every
//     refused credential takes a token, `failureBurst` of them refill at `failureRate` per
//     second, and a source with no token left is refused before any work. Successful calls cost
//     nothing, so many agents behind one NAT address are held back only by the pending cap;
//   - all sources together: at most `maxPending` calls waiting; above that a call is answered
//     RESOURCE_EXHAUSTED at once instead of queueing behind the others.
//
// Behind a service-mesh sidecar every connection comes from loopback, so the per-source rules
// step aside there (the caller passes source "") and only `maxPending` applies.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <unordered_map>

namespace aa {

struct AuthLimits {
  size_t maxPendingPerSource = 8;  // 0: no per-source cap
  double failureBurst = 20;        // failed calls a source may make at once (0: no penalty)
  double failureRate = 1;          // ... refilled per second
  size_t maxPending = 64;          // calls at the auth worker at once, all sources (0: no cap)
  size_t maxSources = 65536;       // per-source entries kept; idle and forgiven ones go first
};

class AuthLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Verdict { kAdmit, kSourcePending, kSourceFailures, kBusy };

  explicit AuthLimiter(AuthLimits limits) : limits_(limits) {}

  // A call from `source` ("" = no per-source rules). kAdmit takes a pending slot, which done()
  // gives back.
  Verdict admit(const std::string& source, Clock::time_point now);
  // The admitted call from `source` ended; `failed`: its credentials were refused.
  void done(const std::string& source, bool failed, Clock::time_point now);

  size_t pending() const { return pending_; }
  size_t sources() const { return sources_.size(); }

 private:
  struct Source {
    size_t pending = 0;
    double tokens = 0;
    Clock::time_point at;
  };
  Source& source(const std::string& key, Clock::time_point now);
  void forget(Clock::time_point now);

  AuthLimits limits_;
  size_t pending_ = 0;
  std::unordered_map<std::string, Source> sources_;
};

const char* describe(AuthLimiter::Verdict v);

}  // namespace aa
