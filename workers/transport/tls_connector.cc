// The agent's TLS client (tls_connector.h).
#include "workers/transport/tls_connector.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <optional>
#include <sstream>

#include <kj/async-io.h>
#include <kj/debug.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ipc/runtime/log.h"
#include "workers/common/role.h"
#include "workers/common/tls_stream.h"
#include "workers/transport/https_proxy.h"

namespace aa {

namespace {

using Clock = std::chrono::steady_clock;

// Non-blocking TCP connect to each address of host:port in turn, all within `deadline`.
constexpr auto kCancelCheck = std::chrono::milliseconds(100);

int tcpConnect(const std::string& host, int port, Clock::time_point deadline,
               const std::function<bool()>& cancelled, std::string& error) {
  std::vector<tls::Address> addrs = tls::resolveTcp(host, port, error);
  std::string service = std::to_string(port);
  for (const tls::Address& a : addrs) {
    int fd = socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::string("socket: ") + strerror(errno);
      continue;
    }
    int err = 0;
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        int n = 0;
        while (n == 0 && !cancelled()) {
          auto left =
              std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
          if (left.count() <= 0) break;
          pollfd p{fd, POLLOUT, 0};
          n = poll(&p, 1, static_cast<int>(std::min(left, kCancelCheck).count()));
          if (n < 0 && errno == EINTR) n = 0;
        }
        socklen_t len = sizeof err;
        if (n <= 0) {
          err = cancelled() ? ECANCELED : ETIMEDOUT;
        } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err == 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      return fd;
    }
    close(fd);
    error = "connect to " + host + ":" + service + " failed: " + strerror(err);
  }
  return -1;
}

}  // namespace

namespace {

// Asks the proxy for a tunnel to host:port on `fd` (blocking with poll, within `deadline`).
bool connectTunnel(int fd, const proxy::Proxy& proxy, const std::string& host, int port,
                   Clock::time_point deadline, const std::function<bool()>& cancelled,
                   std::string& error) {
  std::string target =
      (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  std::string req = "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n";
  if (!proxy.authorization.empty()) req += "Proxy-Authorization: " + proxy.authorization + "\r\n";
  req += "User-Agent: argocd-agent\r\n\r\n";
  auto waitFor = [&](short events) {
    while (!cancelled()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd, events, 0};
      int n = poll(&p, 1, static_cast<int>(std::min(left, kCancelCheck).count()));
      if (n > 0) return true;
    }
    return false;
  };
  for (size_t off = 0; off < req.size();) {
    if (!waitFor(POLLOUT)) {
      error = "HTTPS proxy " + proxy.shown + " did not take the CONNECT request in time";
      return false;
    }
    ssize_t n = send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      error = "HTTPS proxy " + proxy.shown + ": " + strerror(errno);
      return false;
    }
    if (n > 0) off += static_cast<size_t>(n);
  }
  // Read the reply one byte at a time up to the blank line, so that nothing of the tunnel
  // (the principal's TLS bytes) is consumed here. Replies are small; 8 KiB is the cap.
  std::string reply;
  while (reply.size() < 8192 && reply.find("\r\n\r\n") == std::string::npos) {
    if (!waitFor(POLLIN)) {
      error = "HTTPS proxy " + proxy.shown + " did not answer the CONNECT request in time";
      return false;
    }
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    if (n == 0) {
      error = "HTTPS proxy " + proxy.shown + " closed the connection during CONNECT";
      return false;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      error = "HTTPS proxy " + proxy.shown + ": " + strerror(errno);
      return false;
    }
    reply += c;
  }
  std::string status = reply.substr(0, reply.find("\r\n"));
  // "HTTP/1.1 200 Connection established"
  if (status.size() < 12 || status.rfind("HTTP/1.", 0) != 0 || status.substr(9, 3) != "200") {
    error = "HTTPS proxy " + proxy.shown + " refused the tunnel to " + target + ": " +
            status.substr(0, 200);
    return false;
  }
  return true;
}

}  // namespace

// The connector's thread: its KJ loop runs every handshake and every relay of this agent.
class TlsConnector::Loop {
 public:
  // On the connector's thread (tls::LoopThread), until `stopped`.
  void run(kj::AsyncIoContext& io, kj::Promise<void> stopped) {
    kj::TaskSet tasks(errorHandler_);
    io_ = &io;
    tasks_ = &tasks;
    stopped.wait(io.waitScope);
    tasks_ = nullptr;  // `tasks` (every relay) is destroyed on return, on this thread
  }

  // From a transport thread: the handshake runs on the loop, this thread waits for its result.
  Result connect(const kj::Executor& executor, kj::AutoCloseFd fd, tls::SslPtr ssl,
                 std::string peer, std::chrono::milliseconds timeout,
                 const std::function<bool()>& cancelled, Alpn alpn, int relayTo) {
    // The result comes back through a std::mutex rather than executeSync's return value: KJ's
    // cross-thread wake-up is a futex inside libkj, which ThreadSanitizer cannot see, so without
    // this lock it reports the hand-over of the descriptor and of `peer` as races.
    std::mutex handoff;
    std::optional<Result> result;
    executor.executeSync([&]() {
      return handshake(kj::mv(fd), std::move(ssl), peer, timeout, cancelled, alpn, relayTo)
          .then([&](Result r) {
            std::lock_guard<std::mutex> lock(handoff);
            result = std::move(r);
          });
    });
    std::lock_guard<std::mutex> lock(handoff);
    return std::move(*result);
  }

 private:
  // On the loop's thread.
  kj::Promise<Result> handshake(kj::AutoCloseFd fd, tls::SslPtr ssl, const std::string& peer,
                                std::chrono::milliseconds timeout,
                                const std::function<bool()>& cancelled, Alpn alpn, int relayTo) {
    auto stream = kj::heap<tls::TlsStream>(io_->unixEventPort, kj::mv(fd), std::move(ssl), peer);
    auto& ref = *stream;
    auto expired =
        io_->provider->getTimer()
            .afterDelay(timeout.count() * kj::MILLISECONDS)
            .then([]() -> kj::Promise<void> {
              return tls::failure("no complete TLS handshake within the connect timeout");
            });
    return ref.handshake()
        .exclusiveJoin(kj::mv(expired))
        .exclusiveJoin(watchCancel(cancelled))
        .then(
            [this, stream = kj::mv(stream), alpn,
             relay = kj::AutoCloseFd(relayTo)]() mutable -> Result {
              auto session = stream->sessionInfo();
              if (alpn == Alpn::kH2 && session.alpn != "h2") {
                return Result{
                    -1,
                    "the principal did not agree to ALPN h2 (not a gRPC server? through an "
                    "HTTP/1.1-only proxy: --enable-websocket on both sides)",
                    "", ""};
              }
              if (alpn == Alpn::kHttp1 && !session.alpn.empty() && session.alpn != "http/1.1") {
                return Result{-1, "the principal chose ALPN " + session.alpn + ", not http/1.1", "",
                              ""};
              }
              auto& s = *stream;
              if (relay.get() >= 0) {
                int fd = relay.get();
                tasks_->add(s.relay(kj::mv(relay), scratch_).attach(kj::mv(stream)));
                return Result{fd, "", session.version, session.cipher, session.resumed};
              }
              int pair[2];
              if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
                return Result{-1, std::string("socketpair: ") + strerror(errno), "", ""};
              }
              tasks_->add(s.relay(kj::AutoCloseFd(pair[0]), scratch_).attach(kj::mv(stream)));
              return Result{pair[1], "", session.version, session.cipher, session.resumed};
            },
            [](kj::Exception&& e) -> Result {
              return Result{-1, e.getDescription().cStr(), "", ""};
            });
  }

  // Rejects once `cancelled()` (checked every 100 ms; the caller outlives this promise).
  kj::Promise<void> watchCancel(const std::function<bool()>& cancelled) {
    return io_->provider->getTimer()
        .afterDelay(kCancelCheck.count() * kj::MILLISECONDS)
        .then([this, &cancelled]() -> kj::Promise<void> {
          if (cancelled()) return tls::failure("cancelled: the agent is stopping");
          return watchCancel(cancelled);
        });
  }

  struct ErrorHandler final : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override {
      spdlog::debug("TLS connection ended: {}", e.getDescription().cStr());
    }
  };

  kj::AsyncIoContext* io_ = nullptr;
  kj::TaskSet* tasks_ = nullptr;
  ErrorHandler errorHandler_;
  tls::Scratch scratch_;
};

TlsConnector::TlsConnector(const AgentConfig& a) : config_(a) {
  ctx_.reset(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx_) throw ConfigError("TLS: cannot create a context: " + tls::opensslErrors());
  SSL_CTX* c = ctx_.get();
  // Go's client default minimum is TLS 1.2, as is OpenSSL's.
  if (auto e = tls::applyPolicy(c, a.tls, tls::kTls12); !e.empty()) throw ConfigError("TLS: " + e);
  if (a.insecureTls) {
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
  } else {
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    int ok = a.rootCaPath.empty() ? SSL_CTX_set_default_verify_paths(c)
                                  : SSL_CTX_load_verify_locations(c, a.rootCaPath.c_str(), nullptr);
    if (ok != 1) {
      throw ConfigError("TLS: cannot load the CA \"" +
                        (a.rootCaPath.empty() ? std::string("(system)") : a.rootCaPath) +
                        "\": " + tls::opensslErrors());
    }
  }
  if (!a.tlsClientCert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(c, a.tlsClientCert.c_str()) != 1) {
      throw ConfigError("TLS: cannot load the client certificate \"" + a.tlsClientCert +
                        "\": " + tls::opensslErrors());
    }
    if (SSL_CTX_use_PrivateKey_file(c, a.tlsClientKey.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(c) != 1) {
      throw ConfigError("TLS: cannot load the client key \"" + a.tlsClientKey +
                        "\" (or it does not match the certificate): " + tls::opensslErrors());
    }
  }
  static const unsigned char kH2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(c, kH2, sizeof kH2);
  // Keep the principal's session tickets ourselves (one, the newest), not in OpenSSL's cache.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_set_app_data(c, this);
  SSL_CTX_sess_set_new_cb(c, &TlsConnector::onNewSession);
  try {
    proxy_ = proxy::fromEnvironment();
  } catch (const std::invalid_argument& e) {
    throw ConfigError(e.what());
  }
  if (proxy_) {
    spdlog::info(
        "HTTPS proxy {} tunnels connections to the principal (HTTPS_PROXY; NO_PROXY "
        "has {} entries; loopback addresses are never proxied)",
        proxy_->shown, proxy_->noProxy.size());
  }
  loop_ = std::make_unique<Loop>();
  // A transport that cannot connect must be restarted: LoopThread ends the process on failure.
  thread_ = std::make_unique<tls::LoopThread>(
      "TLS connector", [this](kj::AsyncIoContext& io, kj::Promise<void> stopped) {
        loop_->run(io, kj::mv(stopped));
      });
}

TlsConnector::~TlsConnector() {
  thread_ = nullptr;  // every relay is closed on its own thread
}

int TlsConnector::onNewSession(SSL* ssl, SSL_SESSION* session) {
  auto* self = static_cast<TlsConnector*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (self == nullptr) return 0;
  std::lock_guard<std::mutex> lock(self->sessionMu_);
  self->session_.reset(session, SSL_SESSION_free);  // ours now (returning 1)
  self->sessionPeer_ = self->connectingTo_;         // the transport has one principal at a time
  return 1;
}

TlsConnector::Result TlsConnector::connect(const std::string& host, int port,
                                           std::chrono::milliseconds timeout,
                                           const std::function<bool()>& cancelled, Alpn alpn,
                                           int relayTo) {
  // Not relayed: closed here (the caller gave it to us).
  kj::AutoCloseFd relayOwned(relayTo);
  auto fail = [](std::string why) { return Result{-1, std::move(why), "", ""}; };
  auto deadline = Clock::now() + timeout;
  std::string error;
  const proxy::Proxy* proxy = proxy_ && !proxy::bypass(*proxy_, host, port) ? &*proxy_ : nullptr;
  int fd = proxy ? tcpConnect(proxy->host, proxy->port, deadline, cancelled, error)
                 : tcpConnect(host, port, deadline, cancelled, error);
  if (fd < 0) return fail(error);
  kj::AutoCloseFd tcp(fd);
  if (proxy) {
    spdlog::debug("connecting to {}:{} through HTTPS proxy {}", host, port, proxy->shown);
    if (!connectTunnel(fd, *proxy, host, port, deadline, cancelled, error)) return fail(error);
  }
  tls::SslPtr ssl(SSL_new(ctx_.get()));
  if (!ssl) return fail("cannot create a TLS session: " + tls::opensslErrors());
  SSL_set_connect_state(ssl.get());
  if (alpn == Alpn::kHttp1) {
    // A WebSocket: HTTP/1.1 only (the principal would take h2 for native gRPC).
    static const unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_set_alpn_protos(ssl.get(), kHttp11, sizeof kHttp11);
  }
  // SNI and the name the certificate must carry: --server-address, as upstream (an IP address
  // is checked against the certificate's IP SANs and not sent as SNI).
  if (auto e = tls::expectPeerName(ssl.get(), host, !config_.insecureTls); !e.empty()) {
    return fail(e);
  }
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  std::string peer = host + ":" + std::to_string(port);
  {
    std::lock_guard<std::mutex> lock(sessionMu_);
    connectingTo_ = peer;
    if (session_ && sessionPeer_ == peer && SSL_SESSION_is_resumable(session_.get())) {
      SSL_set_session(ssl.get(), session_.get());  // takes its own reference
    }
  }
  try {
    return loop_->connect(thread_->executor(), kj::mv(tcp), std::move(ssl), peer,
                          std::max(left, std::chrono::milliseconds(1)), cancelled, alpn,
                          relayOwned.release());
  } catch (const kj::Exception& e) {
    return Result{-1, e.getDescription().cStr(), "", ""};
  }
}

}  // namespace aa
