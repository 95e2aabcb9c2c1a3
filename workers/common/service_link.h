// Both ends of a service worker's Unix socket (runtime-dir/<role>.sock, bound once by the
// supervisor and inherited by every generation of that worker at fd 4, runtime/fd_contract.h).
//  * serveServiceSocket: the worker's side; every connection gets `bootstrap` (one object shared
//    by all clients, so listener workers see the same state).
//  * ServiceLink: a client's side, on its KJ thread; it connects on first use and again after
//    the link broke (a DISCONNECTED exception is the only signal that the worker restarted).
#pragma once

#include <string>

#include <capnp/capability.h>
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

namespace aa {

// Accepts on the inherited socket until the returned promise is dropped.
kj::Promise<void> serveServiceSocket(kj::AsyncIoContext& io, capnp::Capability::Client bootstrap);

class ServiceLink final : private kj::TaskSet::ErrorHandler {
 public:
  ServiceLink(kj::AsyncIoContext& io, std::string socketPath, std::string name);

  // The service's bootstrap capability, connecting first if there is no healthy link.
  kj::Promise<capnp::Capability::Client> get();
  // Resolves when the current link (if any) breaks; never for a link not yet made. The link
  // forgets a broken link by itself: the next get() reconnects.
  kj::Promise<void> onDisconnect();
  bool connected() const { return link_ != nullptr; }
  // Drop the current link (a test's fault switch, or a call that found it unusable).
  void reset();
  const std::string& name() const { return name_; }

 private:
  struct Link {
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> rpc;
    capnp::Capability::Client cap = nullptr;
    kj::ForkedPromise<void> disconnected = nullptr;
  };
  kj::AsyncIoContext& io_;
  std::string path_, name_;
  kj::Own<Link> link_;
  kj::Maybe<kj::ForkedPromise<void>> connecting_;
  uint64_t epoch_ = 0;  // bumped by reset(): a connect started before it is discarded
  kj::TaskSet tasks_{*this};
  void taskFailed(kj::Exception&&) override {}
};

}  // namespace aa
