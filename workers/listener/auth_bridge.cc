// Listener -> auth worker (auth_bridge.h). Runs in the listener worker, on its KJ thread.
#include "workers/listener/auth_bridge.h"

#include <kj/debug.h>

namespace aa {

namespace {

AuthOutcome unavailable(kj::StringPtr why) {
  AuthOutcome out;
  out.kind = AuthOutcome::Kind::kUnavailable;
  out.reason = why.cStr();
  return out;
}

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

AuthBridge::AuthBridge(kj::AsyncIoContext& io, kj::Timer& timer, const std::string& socketPath,
                       kj::Duration deadline, size_t links)
    : timer_(timer), deadline_(deadline) {
  for (size_t i = 0; i < std::max<size_t>(1, links); ++i) {
    links_.push_back(kj::heap<ServiceLink>(io, socketPath, "auth"));
  }
}

kj::Promise<AuthOutcome> AuthBridge::call(
    kj::Function<kj::Promise<AuthOutcome>(ipc::Auth::Client)> fn) {
  ServiceLink& link = *links_[next_++ % links_.size()];
  auto work = link.get().then([fn = kj::mv(fn)](capnp::Capability::Client cap) mutable {
    return fn(cap.castAs<ipc::Auth>());
  });
  return timer_.timeoutAfter(deadline_, kj::mv(work)).catch_([&link](kj::Exception&& e) {
    // Broken, hung, garbled or restarted auth worker: the next call on this link reconnects
    // (to the next generation, which inherits the same socket); this one is refused.
    if (e.getType() != kj::Exception::Type::OVERLOADED) link.reset();
    return unavailable(e.getDescription());
  });
}

uint64_t AuthBridge::notAfterMonoNs(std::chrono::steady_clock::time_point notAfter) const {
  // steady_clock is CLOCK_MONOTONIC on Linux, one clock for every process of the machine.
  auto own =
      std::chrono::steady_clock::now() + std::chrono::nanoseconds(deadline_ / kj::NANOSECONDS);
  auto t = std::min(notAfter, own);
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

kj::Promise<AuthOutcome> AuthBridge::authenticate(const AuthInput& in) {
  return call([in, notAfter = notAfterMonoNs(in.notAfter)](ipc::Auth::Client auth) {
    auto req = auth.authenticateRequest();
    auto r = req.initRequest();
    r.setNotAfterMonoNs(notAfter);
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
}

kj::Promise<AuthOutcome> AuthBridge::refresh(const std::string& token,
                                             std::chrono::steady_clock::time_point notAfter) {
  return call([token, notAfter = notAfterMonoNs(notAfter)](ipc::Auth::Client auth) {
    auto req = auth.refreshTokenRequest();
    req.setRefreshToken(token);
    req.setNotAfterMonoNs(notAfter);
    return req.send().then([](auto resp) { return fromResult(resp.getResult()); });
  });
}

}  // namespace aa
