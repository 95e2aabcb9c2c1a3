// The operator control socket (ipc/control.capnp) served by the supervisor: a Unix socket created
// mode 0600; each accepted peer must be root or the supervisor's own uid (SO_PEERCRED), and each
// connection is its own RPC session with a small message-size limit, so garbage or a hostile
// peer only ever closes its own connection.
#pragma once

#include <kj/async-io.h>

#include "supervisor/supervisor.h"

namespace aa {

class ControlServer {
 public:
  ControlServer(Supervisor& supervisor, kj::AsyncIoContext& io, kj::AutoCloseFd listenFd);
  ~ControlServer();
  kj::Promise<void> run();  // accept loop; never resolves

 private:
  class Impl;
  kj::Own<Impl> impl_;
};

}  // namespace aa
