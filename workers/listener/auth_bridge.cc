// grpc++ threads -> KJ loop -> auth worker (auth_bridge.h). Runs in the listener worker.
#include "workers/listener/auth_bridge.h"

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include "ipc/runtime/log.h"

namespace aa {

struct AuthBridge::State {
  struct Conn {
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> rpc;
    ipc::Auth::Client auth = nullptr;
  };
  kj::Maybe<kj::Own<Conn>> conn;
  // A connection attempt in progress, shared by every call that arrives meanwhile (one link, not
  // one per concurrent caller: a later link replacing an earlier one would cut its requests).
  kj::Maybe<kj::ForkedPromise<ipc::Auth::Client>> connecting;
  unsigned epoch = 0;  // bumped whenever the connection is dropped
};

AuthBridge::AuthBridge(kj::AsyncIoContext& io, kj::Timer& timer, std::string socketPath,
                       kj::Duration deadline)
    : io_(io),
      timer_(timer),
      socketPath_(std::move(socketPath)),
      deadline_(deadline),
      executor_(kj::getCurrentThreadExecutor()),
      state_(kj::heap<State>()) {}

AuthBridge::~AuthBridge() = default;

kj::Promise<ipc::Auth::Client> AuthBridge::connection() {
  KJ_IF_MAYBE (c, state_->conn) {
    return (*c)->auth;
  }
  KJ_IF_MAYBE (pending, state_->connecting) {
    return pending->addBranch();
  }
  auto forked = io_.provider->getNetwork()
                    .parseAddress(kj::str("unix:", socketPath_.c_str()))
                    .then([](kj::Own<kj::NetworkAddress> addr) { return addr->connect(); })
                    .then([this](kj::Own<kj::AsyncIoStream> stream) -> ipc::Auth::Client {
                      auto conn = kj::heap<State::Conn>();
                      conn->stream = kj::mv(stream);
                      conn->rpc = kj::heap<capnp::TwoPartyClient>(*conn->stream);
                      conn->auth = conn->rpc->bootstrap().castAs<ipc::Auth>();
                      ipc::Auth::Client cap = conn->auth;
                      state_->conn = kj::mv(conn);
                      spdlog::debug("connected to the auth worker");
                      return cap;
                    })
                    .fork();
  auto branch = forked.addBranch();
  state_->connecting = kj::mv(forked);
  return branch;
}

kj::Promise<AuthOutcome> AuthBridge::call(
    kj::Function<kj::Promise<AuthOutcome>(ipc::Auth::Client)> fn) {
  unsigned epoch = state_->epoch;
  auto attempt = connection().then(
      [fn = kj::mv(fn)](ipc::Auth::Client auth) mutable { return fn(kj::mv(auth)); });
  return timer_.timeoutAfter(deadline_, kj::mv(attempt)).catch_([this, epoch](kj::Exception&& e) {
    // Broken, hung or restarted auth worker: drop the link so the next call reconnects (to
    // the next generation, which inherits the same socket), and refuse this request.
    if (state_->epoch == epoch) {
      state_->conn = nullptr;
      state_->connecting = nullptr;
      ++state_->epoch;
    }
    AuthOutcome out;
    out.kind = AuthOutcome::Kind::kUnavailable;
    out.reason = e.getDescription().cStr();
    return out;
  });
}

namespace {
AuthOutcome fromResult(ipc::AuthResult::Reader r) {
  AuthOutcome out;
  if (r.isGranted()) {
    auto g = r.getGranted();
    out.kind = AuthOutcome::Kind::kGranted;
    out.agentId = g.getAgentId();
    out.mode = g.getMode();
    out.accessToken = g.getAccessToken();
    out.refreshToken = g.getRefreshToken();
    if (out.agentId.empty() || out.accessToken.empty()) {
      out.kind = AuthOutcome::Kind::kUnavailable;  // a grant without identity is garbage
      out.reason = "auth worker returned an incomplete grant";
    }
  } else if (r.isDenied()) {
    out.kind = AuthOutcome::Kind::kDenied;
    out.code = r.getDenied().getCode();
    out.reason = r.getDenied().getReason();
  } else {
    out.reason = "auth worker returned an unknown result";
  }
  return out;
}
}  // namespace

AuthOutcome AuthBridge::authenticate(const AuthInput& in) {
  try {
    return executor_.executeSync([this, &in]() {
      return call([&in](ipc::Auth::Client auth) {
        auto req = auth.authenticateRequest();
        auto r = req.initRequest();
        r.setMethod(in.method);
        r.setMode(in.mode);
        r.setVersion(in.version);
        r.setAgentNamespace(in.agentNamespace);
        auto headers = r.initHeaders(in.headers.size());
        for (size_t i = 0; i < in.headers.size(); ++i) {
          headers[i].setKey(in.headers[i].first);
          headers[i].setValue(in.headers[i].second);
        }
        if (!in.peerCertificate.empty()) {
          r.setPeerCertificate(
              kj::arrayPtr(reinterpret_cast<const capnp::byte*>(in.peerCertificate.data()),
                           in.peerCertificate.size()));
        }
        auto creds = r.initCredentials(in.credentials.size());
        for (size_t i = 0; i < in.credentials.size(); ++i) {
          creds[i].setKey(in.credentials[i].first);
          creds[i].setValue(in.credentials[i].second);
        }
        return req.send().then([](auto resp) { return fromResult(resp.getResult()); });
      });
    });
  } catch (const kj::Exception& e) {
    AuthOutcome out;
    out.reason = e.getDescription().cStr();
    return out;
  }
}

AuthOutcome AuthBridge::refresh(const std::string& token) {
  try {
    return executor_.executeSync([this, &token]() {
      return call([&token](ipc::Auth::Client auth) {
        auto req = auth.refreshTokenRequest();
        req.setRefreshToken(token);
        return req.send().then([](auto resp) { return fromResult(resp.getResult()); });
      });
    });
  } catch (const kj::Exception& e) {
    AuthOutcome out;
    out.reason = e.getDescription().cStr();
    return out;
  }
}

}  // namespace aa
