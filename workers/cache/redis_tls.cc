// TLS to Redis (redis_tls.h).
#include "workers/cache/redis_tls.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include <kj/debug.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ipc/runtime/log.h"
#include "workers/common/role.h"

namespace aa {

namespace {

// OpenSSL's reason with the Redis flag that usually explains it.
std::string explainRedisTls(const std::string& reason) {
  static const std::pair<const char*, const char*> kHints[] = {
      {"certificate verify failed",
       "Redis's certificate does not verify against --redis-ca-path (the system's CAs without "
       "it); --redis-tls-insecure skips the check"},
      {"wrong version number", "not TLS: is this Redis's tls-port?"},
      {"unexpected eof",
       "Redis closed the connection during the TLS handshake: is this its tls-port, and does it "
       "require a client certificate (tls-auth-clients)? That is not supported here"},
      {"alert certificate required",
       "Redis requires a client certificate (tls-auth-clients): not supported here"},
      {"unsupported protocol", "no TLS version in common with Redis (TLS 1.2 or newer here)"},
  };
  for (const auto& [needle, hint] : kHints) {
    if (reason.find(needle) != std::string::npos) return reason + " (" + hint + ")";
  }
  return reason;
}

// Each address in turn, non-blocking; the first that connects wins.
kj::Promise<kj::AutoCloseFd> connectEach(kj::UnixEventPort& port,
                                         std::shared_ptr<std::vector<tls::Address>> addrs, size_t i,
                                         std::string where, std::string lastError) {
  if (i >= addrs->size()) return tls::failure(lastError);
  const tls::Address& a = (*addrs)[i];
  int fd = socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return connectEach(port, addrs, i + 1, where, std::string("socket: ") + strerror(errno));
  }
  kj::AutoCloseFd owned(fd);
  auto connected = [](kj::AutoCloseFd s) {
    int one = 1;
    setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
  };
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) == 0) {
    return connected(kj::mv(owned));
  }
  if (errno != EINPROGRESS) {
    return connectEach(port, addrs, i + 1, where, "connect to " + where + ": " + strerror(errno));
  }
  auto observer = kj::heap<kj::UnixEventPort::FdObserver>(
      port, fd, kj::UnixEventPort::FdObserver::OBSERVE_WRITE);
  auto writable = observer->whenBecomesWritable();
  // The observer goes before the descriptor: KJ drops a continuation's dependency first.
  return writable.attach(kj::mv(observer))
      .then([&port, addrs, i, where, connected,
             owned = kj::mv(owned)]() mutable -> kj::Promise<kj::AutoCloseFd> {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(owned.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err == 0) return connected(kj::mv(owned));
        return connectEach(port, addrs, i + 1, where, "connect to " + where + ": " + strerror(err));
      });
}

}  // namespace

RedisTlsTunnel::RedisTlsTunnel(kj::UnixEventPort& port, kj::Timer& timer, Options options)
    : port_(port), timer_(timer), options_(std::move(options)) {
  ctx_.reset(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx_) throw ConfigError("Redis TLS: cannot create a context: " + tls::opensslErrors());
  SSL_CTX* c = ctx_.get();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);  // as Go's default client
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
  if (options_.insecure) {
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
  } else {
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    int ok = options_.caPath.empty()
                 ? SSL_CTX_set_default_verify_paths(c)
                 : SSL_CTX_load_verify_locations(c, options_.caPath.c_str(), nullptr);
    if (ok != 1) {
      throw ConfigError("invalid value \"" + options_.caPath +
                        "\" for --redis-ca-path: " + tls::opensslErrors());
    }
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options_.socketPath.size() >= sizeof addr.sun_path) {
    throw ConfigError("Redis TLS: the runtime directory's path is too long for a Unix socket: " +
                      options_.socketPath);
  }
  strcpy(addr.sun_path, options_.socketPath.c_str());
  unlink(addr.sun_path);
  listener_ = kj::AutoCloseFd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (listener_.get() < 0 ||
      bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listener_.get(), 1) != 0) {
    throw ConfigError("Redis TLS: cannot listen on " + options_.socketPath + ": " +
                      strerror(errno));
  }
}

RedisTlsTunnel::~RedisTlsTunnel() {
  close();
  unlink(options_.socketPath.c_str());
}

void RedisTlsTunnel::close() {
  relaying_ = nullptr;
  stream_ = nullptr;
  version_.clear();
}

kj::Promise<kj::AutoCloseFd> RedisTlsTunnel::tcpConnect(const std::string& host, int port) {
  // Resolved here, blocking, as hiredis itself does for a plain connection.
  std::string error;
  auto addrs = std::make_shared<std::vector<tls::Address>>(tls::resolveTcp(host, port, error));
  if (addrs->empty()) return tls::failure(error);
  std::string service = std::to_string(port);
  return connectEach(port_, addrs, 0, host + ":" + service, "no address for " + host);
}

kj::Promise<void> RedisTlsTunnel::open(const std::string& host, int port, kj::Duration timeout) {
  close();
  auto work =
      tcpConnect(host, port).then([this, host, port](kj::AutoCloseFd tcp) -> kj::Promise<void> {
        tls::SslPtr ssl(SSL_new(ctx_.get()));
        if (!ssl) return tls::failure("cannot create a TLS session: " + tls::opensslErrors());
        SSL_set_connect_state(ssl.get());
        if (auto e = tls::expectPeerName(ssl.get(), host, !options_.insecure); !e.empty()) {
          return tls::failure("Redis: " + e);
        }
        stream_ = kj::heap<tls::TlsStream>(port_, kj::mv(tcp), std::move(ssl),
                                           host + ":" + std::to_string(port));
        return stream_->handshake(&explainRedisTls).then([this]() {
          version_ = stream_->sessionInfo().version;
        });
      });
  return work.exclusiveJoin(timer_.afterDelay(timeout).then([]() -> kj::Promise<void> {
    return tls::failure(
        "no TLS connection to Redis within the connect timeout (a plaintext Redis port waits "
        "silently: is this its tls-port?)");
  }));
}

std::string RedisTlsTunnel::attach() {
  if (!stream_) return "no TLS connection to Redis";
  // hiredis' connect to a listening Unix socket completes at once, so its connection waits here.
  int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return std::string("hiredis did not reach the TLS tunnel: ") + strerror(errno);
  kj::AutoCloseFd local(fd);
  ucred peer{};
  socklen_t len = sizeof peer;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.pid != getpid()) {
    return "the TLS tunnel's socket was reached by another process (pid " +
           std::to_string(peer.pid) + "); refused";
  }
  relaying_ = stream_->relay(kj::mv(local), *scratch_)
                  .catch_([](kj::Exception&&) {})
                  .then([this]() {
                    // Either side closed or failed: closing both lets hiredis see end of stream.
                    // (The relay's own promise is already gone when this runs.)
                    stream_ = nullptr;
                    version_.clear();
                  })
                  .eagerlyEvaluate(nullptr);
  return "";
}

}  // namespace aa
