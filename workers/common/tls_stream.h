// One TLS connection driven by OpenSSL on a KJ event loop: the handshake (either side), then a
// relay between it and a plaintext byte stream that grpc owns the other end of (a socketpair),
// because grpc++ 1.51 cannot be told which TLS versions and suites to use (ARCHITECTURE.md,
// decision 13). Used by the principal's front door (server side) and the agent's connector
// (client side). Everything here runs on one thread: the loop that owns the stream.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/socket.h>

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/io.h>

#include "ipc/config/config.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace aa::tls {

struct SslDeleter {
  void operator()(SSL* s) const;
};
using SslPtr = std::unique_ptr<SSL, SslDeleter>;

// A rejection carrying `what` as its whole description (for log lines).
kj::Exception failure(const std::string& what);

// OpenSSL's queued errors of this thread as one line (and clears them).
std::string opensslErrors();

// OpenSSL's reason plus the setting that usually explains it, for the operator reading the log.
std::string explainHandshakeFailure(const std::string& reason);

// Applies the version range and suites of `policy` to `ctx`. `defaultMin` is used when the policy
// sets no minimum. Returns "" or what OpenSSL refused.
std::string applyPolicy(SSL_CTX* ctx, const Policy& policy, int defaultMin);

// A textual IPv4 or IPv6 address (checked against the certificate's IP SANs, never sent as SNI).
bool isIpLiteral(const std::string& host);

// Client side: sends `host` as SNI unless it is an address and, with `verify`, makes the
// handshake check that the certificate names it (DNS or IP SAN). Returns "" or what failed.
std::string expectPeerName(SSL* ssl, const std::string& host, bool verify);

// The addresses of host:port for a stream socket, in resolver order (blocking). Empty with
// `error` set when there are none.
struct Address {
  sockaddr_storage addr{};
  socklen_t len = 0;
};
std::vector<Address> resolveTcp(const std::string& host, int port, std::string& error);

struct SessionInfo {
  std::string version;         // "TLSv1.3"
  std::string cipher;          // OpenSSL's name
  std::string alpn;            // the protocol ALPN agreed on ("h2"), "" if none
  std::string certificatePem;  // the peer's leaf certificate, if it sent one
  std::string commonName;      // its subject CN when there is exactly one; else ""
  bool resumed = false;        // an earlier session was resumed (no full handshake)
};

// Scratch space shared by every stream of one thread: a stream copies data into a buffer of its
// own only when the other side cannot take it at once, so idle streams hold no buffers.
struct Scratch {
  static constexpr size_t kSize = 32 * 1024;
  char data[kSize];
};

// Optional, for relay(): what the principal's edge does with the bytes it relays (the HTTP/2
// limits of workers/listener/http2_guard.h behind it). Called on the stream's thread.
class RelayGuard {
 public:
  enum class Verdict { kPass, kHold, kClose };
  virtual ~RelayGuard() = default;
  // `size` bytes read from the TLS peer. kPass: forward them. kHold: forward them, then read no
  // more from the peer until resumed() resolves. kClose: forward none and end the connection.
  virtual Verdict fromPeer(const char* data, size_t size) = 0;
  virtual kj::Promise<void> resumed() = 0;
  // `size` bytes from the local side: how many of them may go to the peer. All, until kClose;
  // then those that complete the local protocol's unit in progress (0 once at a boundary).
  virtual size_t toPeer(const char* data, size_t size) = 0;
  virtual bool toPeerAtBoundary() const = 0;
  // After kClose, at a boundary: sent before close_notify ("" for nothing).
  virtual std::string farewell() = 0;
  // After kClose: resolves when waiting for that boundary should stop (then close_notify only).
  virtual kj::Promise<void> closeDeadline() = 0;
};

class TlsStream {
 public:
  // Takes the connected, non-blocking socket and an SSL object already set to accept or connect
  // state (not yet bound to a descriptor). `peer` names the other side in log lines.
  TlsStream(kj::UnixEventPort& port, kj::AutoCloseFd tcp, SslPtr ssl, std::string peer);
  ~TlsStream() noexcept(false);

  // Completes the handshake; rejects with OpenSSL's reason, passed through `explain` (the hints
  // for the agent/principal flags by default; Redis has flags of its own).
  using Explain = std::string (*)(const std::string& reason);
  kj::Promise<void> handshake(Explain explain = &explainHandshakeFailure);
  // Server side: the peer's ClientHello has arrived in full (the handshake is under way).
  bool helloReceived() const;
  SessionInfo sessionInfo() const;

  // Moves bytes between this TLS stream and `local` (our end of the socketpair whose other end
  // grpc reads and writes) until either side closes or fails. A close by the TLS peer reaches grpc
  // as end of stream; a close by grpc sends close_notify and ends the connection.
  // With `guard`, each direction passes through it (it outlives the relay).
  kj::Promise<void> relay(kj::AutoCloseFd local, Scratch& scratch, RelayGuard* guard = nullptr);

  // After relay() ended because the local side closed (close_notify sent): half-closes the TCP
  // connection, then reads and discards what the peer still sends until it closes too, at most
  // `budget` bytes (bound the time with a timer). Closing a socket that holds unread input makes
  // the kernel answer with a reset, and a peer that has not read our last bytes yet (grpc-ws
  // trailers written just before the close) would lose them.
  kj::Promise<void> linger(size_t budget = 64 * 1024);
  // The local side closed, or the guard ended the connection (close_notify sent either way).
  bool localClosed() const { return localEof_; }

  const std::string& peer() const { return peer_; }

 private:
  enum class Wait { kNone, kRead, kWrite };
  kj::Promise<void> pump();
  bool sendLocal(const char* data, size_t size, bool& progress);
  bool writeTls(const char* data, size_t size, bool& progress);

  // Members are destroyed in reverse order: observers before their descriptors.
  kj::UnixEventPort& port_;
  kj::AutoCloseFd tcp_;
  SslPtr ssl_;  // does not own tcp_
  std::string peer_;
  kj::UnixEventPort::FdObserver tcpObserver_;
  kj::AutoCloseFd local_;
  kj::Own<kj::UnixEventPort::FdObserver> localObserver_;
  Scratch* scratch_ = nullptr;
  RelayGuard* guard_ = nullptr;
  bool held_ = false, closing_ = false, farewellSent_ = false, gaveUp_ = false;
  std::string toLocal_, toTls_;
  bool tlsEof_ = false, localEof_ = false, lingering_ = false;
  Wait tlsReadWait_ = Wait::kNone, tlsWriteWait_ = Wait::kNone;
  bool localReadBlocked_ = false, localWriteBlocked_ = false;
};

// A thread with its own KJ event loop, where a side's TLS streams live (the principal's front
// door, the agent's connector): crypto never runs on the worker's main loop or on grpc's threads.
// `main(io, stopped)` runs on that thread and must return once `stopped` resolves, after
// dropping what it owns there. The constructor returns once the loop exists; work sent with
// executor() runs when `main` waits. A kj::Exception out of `main` ends the process: the
// supervisor restarts a worker that cannot serve.
class LoopThread {
 public:
  using Main = std::function<void(kj::AsyncIoContext& io, kj::Promise<void> stopped)>;
  LoopThread(std::string what, Main main);
  ~LoopThread();  // resolves `stopped` and joins

  const kj::Executor& executor() const { return *executor_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop_;
  const kj::Executor* executor_ = nullptr;
  std::thread thread_;
};

}  // namespace aa::tls
