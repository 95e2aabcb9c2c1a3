// The one seam between grpc++'s handler threads and the listener's KJ event loop, which owns the
// Cap'n Proto link to the auth worker. Calls block the calling grpc thread (never the KJ thread)
// and always return within the deadline. Fail closed: anything but an explicit grant from the
// auth worker - a crash, a hang, a broken link, garbage - is a refusal.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <kj/async-io.h>

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
  // Construct on the KJ thread. `socketPath` is the auth worker's service socket.
  AuthBridge(kj::AsyncIoContext& io, kj::Timer& timer, std::string socketPath,
             kj::Duration deadline);
  ~AuthBridge();

  // Thread-safe; call from grpc threads only (never from the KJ thread: it would deadlock).
  AuthOutcome authenticate(const AuthInput& input);
  AuthOutcome refresh(const std::string& refreshToken);

 private:
  struct State;
  kj::Promise<AuthOutcome> call(kj::Function<kj::Promise<AuthOutcome>(ipc::Auth::Client)> fn);
  kj::Promise<ipc::Auth::Client> connection();

  kj::AsyncIoContext& io_;
  kj::Timer& timer_;
  std::string socketPath_;
  kj::Duration deadline_;
  const kj::Executor& executor_;
  kj::Own<State> state_;  // touched only on the KJ thread
};

}  // namespace aa
