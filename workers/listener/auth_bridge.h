// The one seam between grpc++'s handler threads and the auth worker. Calls block the calling grpc
// thread and always return within the deadline. Fail closed: anything but an explicit grant from
// the auth worker - a crash, a hang, a broken link, garbage - is a refusal.
//
// Each call runs on the calling grpc thread itself, on a "channel" borrowed from a small pool: a
// private KJ event loop plus its own Cap'n Proto link to the auth socket. No other thread is woken
// on the listener's side (the listener's KJ thread is not involved), so a call costs one round
// trip to the auth worker and nothing else. See auth_bridge.cc for why a pool and not one link or
// one link per thread.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <kj/async-io.h>
#include <kj/mutex.h>
#include <kj/vector.h>

#include "ipc/auth.capnp.h"

namespace aa {

struct AuthInput {
  std::string method;
  std::vector<std::pair<std::string, std::string>> credentials;
  std::string mode;
  std::string version;
  std::string agentNamespace;
  std::vector<std::pair<std::string, std::string>> headers;  // identity header values, capped
  std::string peerCertificate;                               // verified client leaf (PEM), capped
};

struct AuthOutcome {
  enum class Kind { kGranted, kDenied, kUnavailable } kind = Kind::kUnavailable;
  ipc::DenialCode code = ipc::DenialCode::AUTHENTICATION_FAILED;
  std::string reason;  // denial or failure reason, for logs
  std::string agentId, mode, accessToken, refreshToken;
};

class AuthBridge {
 public:
  // `socketPath` is the auth worker's service socket. `io` and `timer` (the listener's KJ loop)
  // are not used by calls any more; the parameters stay so that the listener constructs the
  // bridge as before.
  AuthBridge(kj::AsyncIoContext& io, kj::Timer& timer, std::string socketPath,
             kj::Duration deadline);
  ~AuthBridge();

  // Thread-safe; call from grpc threads only (never from a thread that runs a KJ event loop: the
  // call runs its own loop on the calling thread, and such a call is refused).
  AuthOutcome authenticate(const AuthInput& input);
  AuthOutcome refresh(const std::string& refreshToken);

  struct Channel;

 private:
  AuthOutcome call(kj::Function<kj::Promise<AuthOutcome>(ipc::Auth::Client)> fn);

  std::string socketPath_;
  kj::Duration deadline_;
  kj::MutexGuarded<kj::Vector<kj::Own<Channel>>> idle_;  // healthy links nobody is using
};

}  // namespace aa
