// grpc++ threads -> auth worker (auth_bridge.h). Runs in the listener worker.
//
// Why the calling thread talks to the auth worker itself: the first version hopped every call
// onto the listener's KJ thread (kj::Executor::executeSync) and back, so a sequential Authenticate
// woke four threads or processes (grpc thread -> KJ thread -> auth worker -> KJ thread -> grpc
// thread), and every call depended on one shared link that concurrent first calls had to
// (re)establish together. Now the grpc thread writes the request and waits for the answer on its
// own event loop: two wake-ups, the minimum for a separate process, and no shared state but the
// pool. (Measured on the benchmark VM, docs/benchmarks.md section 2, the latency is the same as
// with the hop: the round trip's cost there is CPU in grpc and Cap'n Proto, not wake-ups.)
//
// Why a pool of channels rather than one link per grpc thread: grpc's sync server creates and
// retires handler threads as load changes, and a thread that once authenticated may then serve a
// Subscribe stream for hours. Links owned by threads would churn with the threads and grow with
// the number of streams (four descriptors each); pooled links are bounded by the peak number of
// concurrent Authenticate calls and kept warm (at most kMaxIdle of them).
//
// Why our own stream class: KJ's wrapper for socket fds comes only with setupAsyncIo(), whose
// WaitScope pins the event loop to the thread that made it. A pooled channel is used by whichever
// grpc thread borrows it, entering its loop with a WaitScope for the duration of one call (one
// thread at a time; the pool's mutex orders the hand-over).
//
// Concurrent first calls no longer share anything: each borrows a different channel and makes its
// own link, so none replaces (and cuts) another's link, which was the bug the old shared-link
// ForkedPromise fixed.
#include "workers/listener/auth_bridge.h"

#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include <capnp/rpc-twoparty.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include "ipc/runtime/log.h"

namespace aa {

namespace {

// Healthy links kept for reuse. More than the cores the auth worker can use buys nothing; fewer
// than the usual number of concurrent handshakes makes some of them reconnect.
constexpr size_t kMaxIdle = 8;

// A connected, nonblocking Unix stream socket as a kj::AsyncIoStream on `port`.
class SocketStream final : public kj::AsyncIoStream {
 public:
  SocketStream(kj::UnixEventPort& port, kj::AutoCloseFd fd)
      : fd_(kj::mv(fd)), observer_(port, fd_, kj::UnixEventPort::FdObserver::OBSERVE_READ_WRITE) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    return readSome(static_cast<kj::byte*>(buffer), minBytes, maxBytes, 0);
  }

  kj::Promise<void> write(const void* buffer, size_t size) override {
    auto* bytes = static_cast<const kj::byte*>(buffer);
    ssize_t n;
    KJ_NONBLOCKING_SYSCALL(n = ::write(fd_, bytes, size));
    if (n < 0) {
      return observer_.whenBecomesWritable().then(
          [this, bytes, size]() { return write(bytes, size); });
    }
    if (static_cast<size_t>(n) == size) return kj::READY_NOW;
    return write(bytes + n, size - n);
  }

  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    while (pieces.size() > 0 && pieces[0].size() == 0) pieces = pieces.slice(1, pieces.size());
    if (pieces.size() == 0) return kj::READY_NOW;
    size_t count = kj::min(pieces.size(), size_t(IOV_MAX));
    KJ_STACK_ARRAY(struct iovec, iov, count, 16, 128);
    for (size_t i = 0; i < count; ++i) {
      iov[i].iov_base = const_cast<kj::byte*>(pieces[i].begin());
      iov[i].iov_len = pieces[i].size();
    }
    ssize_t n;
    KJ_NONBLOCKING_SYSCALL(n = ::writev(fd_, iov.begin(), count));
    if (n < 0) {
      return observer_.whenBecomesWritable().then([this, pieces]() { return write(pieces); });
    }
    size_t left = n;
    while (pieces.size() > 0 && left >= pieces[0].size()) {
      left -= pieces[0].size();
      pieces = pieces.slice(1, pieces.size());
    }
    if (pieces.size() == 0) return kj::READY_NOW;
    // Part of pieces[0] went out: finish it, then the rest (the caller keeps pieces alive).
    auto first = pieces[0].slice(left, pieces[0].size());
    auto rest = pieces.slice(1, pieces.size());
    return write(first.begin(), first.size()).then([this, rest]() { return write(rest); });
  }

  kj::Promise<void> whenWriteDisconnected() override { return observer_.whenWriteDisconnected(); }
  void shutdownWrite() override { KJ_SYSCALL(::shutdown(fd_, SHUT_WR)); }
  void abortRead() override { ::shutdown(fd_, SHUT_RD); }

 private:
  kj::Promise<size_t> readSome(kj::byte* buffer, size_t minBytes, size_t maxBytes, size_t done) {
    ssize_t n;
    KJ_NONBLOCKING_SYSCALL(n = ::read(fd_, buffer, maxBytes));
    if (n < 0) {
      return observer_.whenBecomesReadable().then([this, buffer, minBytes, maxBytes, done]() {
        return readSome(buffer, minBytes, maxBytes, done);
      });
    }
    if (n == 0) return done;  // EOF
    done += n;
    if (static_cast<size_t>(n) >= minBytes) return done;
    return readSome(buffer + n, minBytes - n, maxBytes - n, done);
  }

  kj::AutoCloseFd fd_;
  kj::UnixEventPort::FdObserver observer_;
};

// Nonblocking connect: with the auth worker gone or frozen the supervisor still holds the socket,
// so a connect lands in the backlog (and the call's deadline decides); a full backlog (EAGAIN) is
// an immediate refusal instead of blocking a grpc thread past the deadline.
kj::AutoCloseFd connectNonBlocking(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  KJ_REQUIRE(path.size() < sizeof(addr.sun_path), "auth socket path too long", path);
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int raw;
  KJ_SYSCALL(raw = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  kj::AutoCloseFd fd(raw);
  KJ_SYSCALL(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), path);
  return fd;
}

AuthOutcome unavailable(kj::StringPtr reason) {
  AuthOutcome out;
  out.kind = AuthOutcome::Kind::kUnavailable;
  out.reason = reason.cStr();
  return out;
}

}  // namespace

// One event loop and (when connected) one Cap'n Proto link. Used by one thread at a time, inside
// a kj::WaitScope on its loop; destroyed only on a thread that runs no other loop.
struct AuthBridge::Channel {
  struct Link {
    kj::Own<SocketStream> stream;
    kj::Own<capnp::TwoPartyClient> rpc;
    ipc::Auth::Client auth = nullptr;
    kj::Promise<void> watch = nullptr;
  };

  kj::UnixEventPort port;
  kj::EventLoop loop{port};
  kj::Maybe<kj::Own<Link>> link;
  bool hungUp = false;  // the auth worker closed the link while the channel sat in the pool

  ~Channel() noexcept(false) {
    kj::WaitScope scope(loop);
    link = nullptr;
    scope.poll();  // let capnp finish its disconnect work before the loop goes
  }

  ipc::Auth::Client connect(const std::string& path) {
    auto l = kj::heap<Link>();
    l->stream = kj::heap<SocketStream>(port, connectNonBlocking(path));
    l->rpc = kj::heap<capnp::TwoPartyClient>(*l->stream);
    l->auth = l->rpc->bootstrap().castAs<ipc::Auth>();
    l->watch = l->rpc->onDisconnect()
                   .then([this]() { hungUp = true; }, [this](kj::Exception&&) { hungUp = true; })
                   .eagerlyEvaluate(nullptr);
    ipc::Auth::Client cap = l->auth;
    link = kj::mv(l);
    hungUp = false;
    spdlog::debug("connected to the auth worker");
    return cap;
  }
};

AuthBridge::AuthBridge(kj::AsyncIoContext&, kj::Timer&, std::string socketPath,
                       kj::Duration deadline)
    : socketPath_(std::move(socketPath)), deadline_(deadline) {}

AuthBridge::~AuthBridge() {
  // Runs on the listener's KJ thread, whose own loop is current: a channel's loop can only be
  // entered (to tear its link down) on a thread without one.
  kj::Vector<kj::Own<Channel>> idle = kj::mv(*idle_.lockExclusive());
  if (idle.empty()) return;
  std::thread([&idle]() { idle.clear(); }).join();
}

AuthOutcome AuthBridge::call(kj::Function<kj::Promise<AuthOutcome>(ipc::Auth::Client)> fn) {
  kj::Own<Channel> ch;
  {
    auto idle = idle_.lockExclusive();
    if (!idle->empty()) {
      ch = kj::mv(idle->back());
      idle->removeLast();
    }
  }
  if (ch.get() == nullptr) ch = kj::heap<Channel>();
  AuthOutcome out;
  try {
    kj::WaitScope scope(ch->loop);
    try {
      // Runs what the previous call left queued (capnp's Finish for its answer) and notices an
      // auth worker that went away while the channel was idle, so that the first call after a
      // restart goes to the new generation instead of failing on the dead link.
      scope.poll();
      if (ch->hungUp) ch->link = nullptr;
      ipc::Auth::Client auth = nullptr;
      KJ_IF_MAYBE (l, ch->link) {
        auth = (*l)->auth;
      } else {
        auth = ch->connect(socketPath_);
      }
      out = ch->port.getTimer().timeoutAfter(deadline_, fn(kj::mv(auth))).wait(scope);
    } catch (const kj::Exception& e) {
      // Broken, hung, garbled or restarted auth worker: drop this link (the next call on this
      // channel reconnects, to the next generation, which inherits the same socket) and refuse.
      ch->link = nullptr;
      out = unavailable(e.getDescription());
    }
  } catch (const kj::Exception& e) {
    // Only the WaitScope gets here: the calling thread runs an event loop of its own (misuse).
    // The channel is untouched; keep it, as it cannot be closed on this thread either.
    idle_.lockExclusive()->add(kj::mv(ch));
    return unavailable(e.getDescription());
  }
  if (ch->link != nullptr && !ch->hungUp) {
    auto idle = idle_.lockExclusive();
    if (idle->size() < kMaxIdle) idle->add(kj::mv(ch));
  }
  return out;  // a channel not returned to the pool is closed here, on this thread
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
  } catch (const kj::Exception& e) {
    return unavailable(e.getDescription());
  }
}

AuthOutcome AuthBridge::refresh(const std::string& token) {
  try {
    return call([&token](ipc::Auth::Client auth) {
      auto req = auth.refreshTokenRequest();
      req.setRefreshToken(token);
      return req.send().then([](auto resp) { return fromResult(resp.getResult()); });
    });
  } catch (const kj::Exception& e) {
    return unavailable(e.getDescription());
  }
}

}  // namespace aa
