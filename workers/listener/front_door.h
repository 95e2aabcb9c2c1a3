// The principal's front door: owns the listening port, accepts every connection, terminates TLS
// with OpenSSL (so the operator controls protocol versions, cipher suites, client certificates
// and ALPN - grpc++ 1.51 exposes none of the first two), and hands each connection to grpc as a
// plaintext HTTP/2 byte stream (grpc::AddInsecureChannelFromFd). Plaintext connections are handed
// over as they are (the accepted socket itself: no copy).
//
// TLS connections are relayed between the TCP socket and one end of a socketpair whose other end
// grpc owns, on the front door's own threads, each with its KJ event loop and its own listening
// socket (SO_REUSEPORT: the kernel spreads connections over the loops, no thundering herd): crypto
// never runs on the worker's main loop (supervisor link, watchdog) and never on grpc's threads.
// Idle relays hold no buffers.
//
// What grpc can no longer see (the peer's address and verified certificate) is kept in a
// PeerRegistry keyed by the descriptor grpc was given; handlers look it up from
// ServerContext::peer()
// ("fd:<n>").
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <kj/async-io.h>

#include "ipc/config/config.h"
#include "workers/common/tls_stream.h"
#include "workers/listener/admission.h"
#include "workers/listener/http2_guard.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace aa {

struct PeerInfo {
  std::string address;         // "ipv4:127.0.0.1:41234", as grpc would have said
  std::string tlsVersion;      // "TLSv1.3"; "" for plaintext
  std::string cipher;          // OpenSSL's name; "" for plaintext
  std::string certificatePem;  // verified client leaf certificate; "" if none was requested
  std::string commonName;      // its subject CN when there is exactly one; else ""

  // A Subscribe on this connection presented a valid token: the connection no longer counts as
  // unauthenticated (admission.h) and its --unauthenticated-timeout no longer applies. Any thread.
  void markAuthenticated() const;
  bool authenticated() const { return state_.load() == kAuthenticated; }

  // Set by the front door for the connections it admitted (TLS).
  std::shared_ptr<Admission> admission;
  std::string source;  // the admission key: the address without port ("" when not per source)
  // The connection ended; returns whether it was authenticated (then or before). Once.
  bool markClosed() const;

 private:
  enum : int { kUnauthenticated, kAuthenticated, kClosed };
  mutable std::atomic<int> state_{kUnauthenticated};
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

// The session-ticket keys of this listener worker, as the supervisor hands them out
// (ipc/supervisor.capnp, ticketKeys): shared by every listener worker and generation, so an agent
// that reconnects anywhere resumes its session instead of a full handshake (no RSA signature).
// Keys live in memory only. Thread-safe: the front door's loops read, the worker's KJ thread sets.
class TicketKeyring {
 public:
  static constexpr size_t kKeySize = 80;  // 16 name, 32 HMAC-SHA256, 32 AES-256
  using Key = std::array<unsigned char, kKeySize>;

  // keys[0] encrypts new tickets; the others still decrypt (and ask for a fresh ticket). Empty:
  // no tickets are issued and none resumes until keys arrive.
  void set(std::vector<Key> keys);

  // Makes `ctx` seal and open its tickets with this ring's keys (OpenSSL's ticket-key callback).
  void attach(SSL_CTX* ctx);

  // Copies the key called `name` (its first 16 bytes; with `name` null, the newest) into `out`;
  // returns its position, or -1 if there is none.
  int find(const unsigned char* name, Key& out) const;

 private:
  mutable std::mutex mu_;
  std::vector<Key> keys_;
};

// The server's TLS context from the principal's flags. With `tickets`, sessions resume through
// tickets sealed by its keys for --tls-session-ticket-rotation; without, not at all (no server
// side session cache either: it would hold memory per agent). Throws ConfigError naming the
// file or the setting OpenSSL refused.
std::shared_ptr<SSL_CTX> makeServerTlsContext(const PrincipalConfig& config,
                                              const std::string& certPath,
                                              const std::string& keyPath,
                                              TicketKeyring* tickets = nullptr);

enum PlaintextRefusal { kNotHttp2 = 0, kNoRequest = 1 };
const char* describe(PlaintextRefusal r);

// What the front door did, for status lines and metrics (read from any thread).
struct FrontDoorStats {
  std::atomic<uint64_t> handshakes{0};  // completed TLS handshakes
  std::atomic<uint64_t> resumed{0};     // ... of which resumed a session (no full handshake)
  std::atomic<uint64_t> failed{0};      // handshakes that failed or timed out
  std::atomic<uint64_t> noHello{0};     // ... of which sent no ClientHello in time
  std::atomic<uint64_t> unauthenticatedTimeouts{0};  // closed: no authenticated stream in time
  // Held: read no further for sending more than --max-unauthenticated-bytes unauthenticated.
  std::atomic<uint64_t> unauthenticatedHeld{0};
  // Plaintext connections closed before grpc saw them, by cause (kNotHttp2, kNoRequest).
  std::atomic<uint64_t> plaintextRefused[2] = {};
  // Ended by the relay's guard (http2_guard.h), by Http2Guard::Abuse (index), kNone unused.
  std::atomic<uint64_t> guardClosed[3] = {};
  // Connections closed at accept, by admission.h's Refusal (index), kNone unused.
  std::atomic<uint64_t> refused[kRefusals] = {};
};

class FrontDoor {
 public:
  struct Options {
    std::string host;  // "" = all interfaces
    int port = 0;
    std::shared_ptr<SSL_CTX> tls;  // null = plaintext
    kj::Duration handshakeTimeout = 10 * kj::SECONDS;
    kj::Duration clientHelloTimeout = 2 * kj::SECONDS;       // accept -> ClientHello complete
    kj::Duration unauthenticatedTimeout = 30 * kj::SECONDS;  // hand-off -> authenticated stream
    AdmissionLimits admission{0, 0, 0, 0, 1024};             // see admission.h
    bool perSource = true;  // apply admission.maxPerSource by source address
    GuardLimits guard;      // the relay's limits (http2_guard.h)
    size_t loops = 1;       // accepting/handshaking/relaying threads
    // Takes ownership of a connected, non-blocking descriptor carrying plaintext HTTP/2.
    std::function<void(int fd)> handOff;
    // With --enable-websocket: takes one carrying HTTP/1.1 (grpc-ws upgrades), none of it read
    // yet. Connections go here when ALPN agreed on http/1.1, or without ALPN (and in plaintext)
    // when their first bytes are not the HTTP/2 preface. Null: every connection is HTTP/2.
    std::function<void(int fd, std::shared_ptr<const PeerInfo> peer)> handOffHttp1;
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
  const FrontDoorStats& stats() const { return stats_; }
  Admission::Counts admissionCounts() const { return admission_->counts(); }

 private:
  class Loop;
  Options options_;
  std::vector<int> listenFds_;  // one per loop, all bound to the same port
  std::atomic<bool> stopped_{false};
  std::shared_ptr<Admission> admission_;  // shared by the loops and every admitted connection
  FrontDoorStats stats_;
  std::string boundAddress_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<std::unique_ptr<tls::LoopThread>> threads_;  // run loops_; destroyed first
};

}  // namespace aa
