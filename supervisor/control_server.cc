// Control socket server (control_server.h). Runs in the supervisor's KJ event loop.
#include "supervisor/control_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include "ipc/runtime/log.h"

namespace aa {
namespace {

class OperateImpl final : public ipc::Operate::Server {
 public:
  explicit OperateImpl(Supervisor& s) : sup_(s) {}

  kj::Promise<void> restart(RestartContext context) override {
    std::string err = sup_.restart(context.getParams().getRole());
    auto r = context.getResults();
    r.setOk(err.empty());
    r.setMessage(err);
    return kj::READY_NOW;
  }

  kj::Promise<void> setLogLevel(SetLogLevelContext context) override {
    auto p = context.getParams();
    return sup_.setLogLevel(p.getRole(), p.getLevel()).then([context](std::string err) mutable {
      auto r = context.getResults();
      r.setOk(err.empty());
      r.setMessage(err);
    });
  }

 private:
  Supervisor& sup_;
};

class ControlImpl final : public ipc::Control::Server {
 public:
  explicit ControlImpl(Supervisor& s)
      : observe_(s.observer()), operate_(kj::heap<OperateImpl>(s)) {}

  kj::Promise<void> observe(ObserveContext context) override {
    context.getResults().setObserve(observe_);
    return kj::READY_NOW;
  }

  kj::Promise<void> operate(OperateContext context) override {
    context.getResults().setOperate(operate_);
    return kj::READY_NOW;
  }

 private:
  ipc::Observe::Client observe_;
  ipc::Operate::Client operate_;
};

// One accepted connection: the stream, its network and RPC system live together.
struct Session {
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyVatNetwork> network;
  kj::Own<capnp::RpcSystem<capnp::rpc::twoparty::VatId>> rpc;
};

}  // namespace

class ControlServer::Impl final : private kj::TaskSet::ErrorHandler {
 public:
  Impl(Supervisor& s, kj::AsyncIoContext& io, kj::AutoCloseFd fd)
      : sup_(s),
        receiver_(io.lowLevelProvider->wrapListenSocketFd(
            fd.release(), kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP)),
        tasks_(*this) {}

  kj::Promise<void> acceptLoop() {
    return receiver_->accept().then([this](kj::Own<kj::AsyncIoStream> stream) {
      serve(kj::mv(stream));
      return acceptLoop();
    });
  }

 private:
  void serve(kj::Own<kj::AsyncIoStream> stream) {
    ucred cred{};
    uint len = sizeof(cred);
    stream->getsockopt(SOL_SOCKET, SO_PEERCRED, &cred, &len);
    if (cred.uid != 0 && cred.uid != getuid()) {
      spdlog::warn("control socket: refused peer pid {} uid {} (only root or uid {} may connect)",
                   cred.pid, cred.uid, getuid());
      return;  // dropping the stream closes it
    }
    spdlog::debug("control socket: peer pid {} uid {}", cred.pid, cred.uid);
    auto session = kj::heap<Session>();
    session->stream = kj::mv(stream);
    capnp::ReaderOptions limits;
    // Requests are tiny, but the limit also caps what this side sends: `agents` for 10,000 agents
    // is ~1.5 MB. 64 MiB (Cap'n Proto's default) bounds a uid-checked peer's garbage well enough.
    limits.traversalLimitInWords = 64 * 1024 * 1024 / 8;
    limits.nestingLimit = 16;
    session->network = kj::heap<capnp::TwoPartyVatNetwork>(
        *session->stream, capnp::rpc::twoparty::Side::SERVER, limits);
    session->rpc = kj::heap(capnp::makeRpcServer(*session->network, kj::heap<ControlImpl>(sup_)));
    auto disconnected = session->network->onDisconnect();
    tasks_.add(disconnected.attach(kj::mv(session)));
  }

  void taskFailed(kj::Exception&& e) override {
    spdlog::warn("control socket: connection closed: {}", e.getDescription().cStr());
  }

  Supervisor& sup_;
  kj::Own<kj::ConnectionReceiver> receiver_;
  kj::TaskSet tasks_;
};

ControlServer::ControlServer(Supervisor& s, kj::AsyncIoContext& io, kj::AutoCloseFd fd)
    : impl_(kj::heap<Impl>(s, io, kj::mv(fd))) {}
ControlServer::~ControlServer() = default;
kj::Promise<void> ControlServer::run() { return impl_->acceptLoop(); }

}  // namespace aa
