// The one seam between the listener and the auth worker, on the listener's KJ thread. Calls are
// asynchronous (a slow or hung auth worker holds up only the calls waiting for it, never a serving
// thread) and always resolve within the deadline. Fail closed: anything but an explicit grant from
// the auth worker - a crash, a hang, a broken link, garbage - is a refusal.
//
// Calls are spread round-robin over a few links: the auth worker serves each connection on one of
// its threads (bcrypt and RSA are CPU work), so one link would serialise them.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include <kj/async-io.h>

#include "ipc/auth.capnp.h"
#include "workers/common/service_link.h"

namespace aa {

struct AuthInput {
  std::string method;
  std::vector<std::pair<std::string, std::string>> credentials;
  std::string mode;
  std::string version;
  std::string agentNamespace;
  std::vector<std::pair<std::string, std::string>> headers;  // identity header values, capped
  std::string peerCertificate;                               // verified client leaf (PEM), capped
  std::string source;  // the listener's per-source key (auth_limiter.h); not sent to the worker
  // The caller's deadline (steady clock; max: none). The worker drops the call unchecked once it,
  // or the bridge's own deadline, has passed: nobody would read the answer.
  std::chrono::steady_clock::time_point notAfter = std::chrono::steady_clock::time_point::max();
};

struct AuthOutcome {
  // kLimited: refused by the listener's own limits before the auth worker saw it.
  enum class Kind { kGranted, kDenied, kUnavailable, kLimited } kind = Kind::kUnavailable;
  ipc::DenialCode code = ipc::DenialCode::AUTHENTICATION_FAILED;
  std::string reason;  // denial or failure reason, for logs
  std::string agentId, mode, accessToken, refreshToken;
};

class AuthBridge {
 public:
  // `socketPath` is the auth worker's service socket.
  AuthBridge(kj::AsyncIoContext& io, kj::Timer& timer, const std::string& socketPath,
             kj::Duration deadline, size_t links = 4);

  // KJ thread only. Never throw: failures resolve as kUnavailable.
  kj::Promise<AuthOutcome> authenticate(const AuthInput& input);
  kj::Promise<AuthOutcome> refresh(const std::string& refreshToken,
                                   std::chrono::steady_clock::time_point notAfter =
                                       std::chrono::steady_clock::time_point::max());

 private:
  kj::Promise<AuthOutcome> call(kj::Function<kj::Promise<AuthOutcome>(ipc::Auth::Client)> fn);
  // The earlier of `notAfter` and this bridge's own deadline, as CLOCK_MONOTONIC nanoseconds.
  uint64_t notAfterMonoNs(std::chrono::steady_clock::time_point notAfter) const;

  kj::Timer& timer_;
  kj::Duration deadline_;
  std::vector<kj::Own<ServiceLink>> links_;
  size_t next_ = 0;
};

}  // namespace aa
