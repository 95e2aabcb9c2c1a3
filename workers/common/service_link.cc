// Service sockets (service_link.h). Runs in the principal's workers, on their KJ threads.
#include "workers/common/service_link.h"

#include <kj/debug.h>

#include "ipc/runtime/fd_contract.h"
#include "ipc/runtime/log.h"

namespace aa {

namespace {
struct Acceptor {
  kj::Own<kj::ConnectionReceiver> receiver;
  capnp::TwoPartyServer server;
  explicit Acceptor(capnp::Capability::Client b) : server(kj::mv(b)) {}
};
}  // namespace

kj::Promise<void> serveServiceSocket(kj::AsyncIoContext& io, capnp::Capability::Client bootstrap) {
  auto a = kj::heap<Acceptor>(kj::mv(bootstrap));
  a->receiver = io.lowLevelProvider->wrapListenSocketFd(
      fds::kServiceSocket, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
  auto done = a->server.listen(*a->receiver);
  return done.attach(kj::mv(a));
}

ServiceLink::ServiceLink(kj::AsyncIoContext& io, std::string socketPath, std::string name)
    : io_(io), path_(std::move(socketPath)), name_(std::move(name)) {}

kj::Promise<capnp::Capability::Client> ServiceLink::get() {
  if (link_) return capnp::Capability::Client(link_->cap);
  KJ_IF_MAYBE (c, connecting_) {
    return c->addBranch().then([this]() { return get(); });
  }
  uint64_t epoch = epoch_;
  auto connect =
      io_.provider->getNetwork()
          .parseAddress(kj::str("unix:", path_.c_str()))
          .then(
              [](kj::Own<kj::NetworkAddress> addr) { return addr->connect().attach(kj::mv(addr)); })
          .then(
              [this, epoch](kj::Own<kj::AsyncIoStream> stream) {
                connecting_ = nullptr;
                if (epoch != epoch_) return;  // reset() meanwhile: drop this one
                auto l = kj::heap<Link>();
                l->stream = kj::mv(stream);
                l->rpc = kj::heap<capnp::TwoPartyClient>(*l->stream);
                l->cap = l->rpc->bootstrap();
                l->disconnected = l->rpc->onDisconnect().fork();
                tasks_.add(l->disconnected.addBranch().then([this, epoch]() {
                  // A later turn: the link is not destroyed inside its own disconnect event.
                  return kj::evalLater([this, epoch]() {
                    if (epoch != epoch_) return;
                    spdlog::warn("link to the {} worker broke; reconnecting on next use", name_);
                    reset();
                  });
                }));
                link_ = kj::mv(l);
                spdlog::debug("connected to the {} worker", name_);
              },
              [this, epoch](kj::Exception&& e) {
                if (epoch == epoch_) connecting_ = nullptr;
                kj::throwFatalException(kj::mv(e));
              })
          .fork();
  auto branch = connect.addBranch();
  connecting_ = kj::mv(connect);
  return branch.then([this]() { return get(); });
}

kj::Promise<void> ServiceLink::onDisconnect() {
  if (!link_) return kj::NEVER_DONE;
  return link_->disconnected.addBranch();
}

void ServiceLink::reset() {
  epoch_++;
  connecting_ = nullptr;
  link_ = nullptr;
}

}  // namespace aa
