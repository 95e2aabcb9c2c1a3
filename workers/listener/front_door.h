// The principal's front door: owns the listening port, accepts every connection, terminates TLS
// with OpenSSL (so the operator controls protocol versions, cipher suites, client certificates
// and ALPN - grpc++ 1.51 exposes none of the first two), and hands each connection to grpc as a
// plaintext HTTP/2 byte stream (grpc::AddInsecureChannelFromFd). Plaintext connections are handed
// over as they are (the accepted socket itself: no copy).
//
// TLS connections are relayed between the TCP socket and one end of a socketpair whose other end
// grpc owns, on the front door's own thread and KJ event loop: crypto never runs on the worker's
// main loop (supervisor link, watchdog) and never on grpc's threads. Idle relays hold no buffers.
//
// What grpc can no longer see (the peer's address and verified certificate) is kept in a
// PeerRegistry keyed by the descriptor grpc was given; handlers look it up from
// ServerContext::peer()
// ("fd:<n>").
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <kj/async-io.h>

#include "ipc/config/config.h"
#include "workers/common/tls_stream.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace aa {

struct PeerInfo {
  std::string address;         // "ipv4:127.0.0.1:41234", as grpc would have said
  std::string tlsVersion;      // "TLSv1.3"; "" for plaintext
  std::string cipher;          // OpenSSL's name; "" for plaintext
  std::string certificatePem;  // verified client leaf certificate; "" if none was requested
  std::string commonName;      // its subject CN when there is exactly one; else ""
};

class PeerRegistry {
 public:
  void add(int fd, std::shared_ptr<const PeerInfo> info);
  // Removes the entry only if it is still `info` (the descriptor may already serve a newer
  // connection).
  void remove(int fd, const PeerInfo* info);
  // `grpcPeer` is ServerContext::peer(); null when unknown.
  std::shared_ptr<const PeerInfo> find(std::string_view grpcPeer) const;

 private:
  mutable std::mutex mu_;
  std::map<int, std::shared_ptr<const PeerInfo>> byFd_;
};

// The server's TLS context from the principal's flags. Throws ConfigError naming the file or the
// setting OpenSSL refused.
std::shared_ptr<SSL_CTX> makeServerTlsContext(const PrincipalConfig& config,
                                              const std::string& certPath,
                                              const std::string& keyPath);

class FrontDoor {
 public:
  struct Options {
    std::string host;  // "" = all interfaces
    int port = 0;
    std::shared_ptr<SSL_CTX> tls;  // null = plaintext
    kj::Duration handshakeTimeout = 10 * kj::SECONDS;
    size_t maxHandshakes = 1024;  // connections still handshaking; more are closed at once
    // Takes ownership of a connected, non-blocking descriptor carrying plaintext HTTP/2.
    std::function<void(int fd)> handOff;
    PeerRegistry* registry = nullptr;
  };

  // Binds (SO_REUSEPORT) and listens now, so a taken port fails here; throws kj::Exception.
  explicit FrontDoor(Options options);
  ~FrontDoor();  // stops accepting, closes every relay, joins the thread

  // Begin accepting on the front door's thread.
  void start();
  // Thread-safe. New connections are refused from now on, and handshakes still in progress are
  // never handed to grpc; relayed connections go on until grpc closes them.
  void stopAccepting();
  std::string address() const { return boundAddress_; }

 private:
  class Loop;
  Options options_;
  int listenFd_ = -1;
  std::atomic<bool> stopped_{false};
  std::string boundAddress_;
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<tls::LoopThread> thread_;  // runs loop_; destroyed first
};

}  // namespace aa
