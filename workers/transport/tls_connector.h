// The agent's TLS client: connects to the principal, runs the OpenSSL handshake with the agent's
// --tls-min-version/--tls-max-version/--tls-ciphersuites, verification and client certificate,
// and returns grpc's end of a socketpair carrying plaintext HTTP/2 (for
// grpc::CreateCustomInsecureChannelFromFd). The handshake and the relay run on the connector's own
// thread and KJ loop (workers/common/tls_stream.h), as on the principal's front door.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <kj/async.h>

#include "ipc/config/config.h"
#include "workers/common/tls_stream.h"
#include "workers/transport/https_proxy.h"

typedef struct ssl_session_st SSL_SESSION;

namespace aa {

class TlsConnector {
 public:
  // Builds the TLS context from the agent's flags; throws ConfigError (unreadable CA,
  // certificate or key, or a setting OpenSSL refuses).
  explicit TlsConnector(const AgentConfig& config);
  ~TlsConnector();  // closes every relayed connection

  struct Result {
    int fd = -1;        // grpc's end; -1 on failure
    std::string error;  // why not, for the log
    std::string version, cipher;
    bool resumed = false;  // the last session's ticket was accepted: no full handshake
  };
  // What ALPN offers and accepts: h2 for native gRPC (the principal must agree), http/1.1 for
  // a WebSocket (the principal may also not answer ALPN).
  enum class Alpn { kH2, kHttp1 };

  // Blocking (call from a transport thread, never from a KJ loop thread): TCP connect to
  // `host`:`port` (every address it resolves to, in order) and the handshake, both within
  // `timeout`. Gives up within ~100 ms once `cancelled()` returns true (shutdown). With
  // `relayTo` (a connected descriptor, owned from here on, also on failure), the plaintext is
  // relayed to it and Result.fd is it; else to a new socketpair whose other end is Result.fd.
  Result connect(const std::string& host, int port, std::chrono::milliseconds timeout,
                 const std::function<bool()>& cancelled, Alpn alpn = Alpn::kH2, int relayTo = -1);

 private:
  class Loop;
  const AgentConfig& config_;
  std::optional<proxy::Proxy> proxy_;  // HTTPS_PROXY (https_proxy.h), if set
  std::shared_ptr<SSL_CTX> ctx_;
  // The newest session the principal gave a ticket for, offered on the next connect to the same
  // address (a reconnect then skips the full handshake). Set on the loop thread, read by connect.
  static int onNewSession(SSL* ssl, SSL_SESSION* session);
  std::mutex sessionMu_;
  std::shared_ptr<SSL_SESSION> session_;
  std::string sessionPeer_;   // "host:port" it was made with
  std::string connectingTo_;  // "host:port" of the newest connect()
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<tls::LoopThread> thread_;  // runs loop_; destroyed first
};

}  // namespace aa
