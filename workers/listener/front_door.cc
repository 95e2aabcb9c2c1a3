// The principal's front door (front_door.h): accept, TLS handshake, relay, hand-off to grpc.
#include "workers/listener/front_door.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <random>

#include <kj/async-unix.h>
#include <kj/debug.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ipc/runtime/log.h"
#include "workers/common/role.h"
#include "workers/common/tls_stream.h"

namespace aa {

namespace {
constexpr kj::Duration kLingerAfterClose = 2 * kj::SECONDS;
}  // namespace

// ---------------------------------------------------------------- PeerRegistry

void PeerRegistry::add(int fd, std::shared_ptr<const PeerInfo> info) {
  std::lock_guard<std::mutex> lock(mu_);
  byFd_[fd] = std::move(info);
}

void PeerRegistry::remove(int fd, const PeerInfo* info) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = byFd_.find(fd);
  if (it != byFd_.end() && it->second.get() == info) byFd_.erase(it);
}

std::shared_ptr<const PeerInfo> PeerRegistry::find(std::string_view grpcPeer) const {
  constexpr std::string_view kPrefix = "fd:";
  if (grpcPeer.substr(0, kPrefix.size()) != kPrefix) return nullptr;
  int fd = -1;
  auto digits = grpcPeer.substr(kPrefix.size());
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), fd);
  if (ec != std::errc() || p != digits.data() + digits.size()) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = byFd_.find(fd);
  return it == byFd_.end() ? nullptr : it->second;
}

void PeerInfo::markAuthenticated() const {
  int expected = kUnauthenticated;
  if (state_.compare_exchange_strong(expected, kAuthenticated) && admission) {
    admission->authenticated(source);
  }
}

bool PeerInfo::markClosed() const { return state_.exchange(kClosed) == kAuthenticated; }

// ---------------------------------------------------------------- ALPN

namespace {

// grpc-go, grpc-java, grpc-js and grpc core all offer "h2". A client that offers ALPN without h2
// is not a gRPC client: refuse in the handshake, as grpc-go does - unless WebSocket is on (`arg`
// non-null), when http/1.1 is the grpc-ws upgrade. h2 is preferred. No ALPN at all is accepted.
int selectAlpn(SSL*, const unsigned char** out, unsigned char* outLen, const unsigned char* in,
               unsigned int inLen, void* arg) {
  static const unsigned char kProtocols[] = {2,   'h', '2', 8,   'h', 't',
                                             't', 'p', '/', '1', '.', '1'};
  unsigned int ours = arg != nullptr ? sizeof kProtocols : 3;
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outLen, kProtocols, ours, in, inLen) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

// ---------------------------------------------------------------- TicketKeyring

namespace {
int ringIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}
}  // namespace

void TicketKeyring::set(std::vector<Key> keys) {
  std::lock_guard<std::mutex> lock(mu_);
  OPENSSL_cleanse(keys_.data(), keys_.size() * sizeof(Key));
  keys_ = std::move(keys);
}

int TicketKeyring::find(const unsigned char* name, Key& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (name == nullptr || CRYPTO_memcmp(keys_[i].data(), name, 16) == 0) {
      out = keys_[i];
      return static_cast<int>(i);
    }
  }
  return -1;
}

namespace {

// enc = 1: seal a new ticket with the newest key. enc = 0: open one; 1 = fine, 2 = fine but
// sealed with an older key (OpenSSL issues a fresh ticket), 0 = unknown key (full handshake).
int ticketKeyCallback(SSL* ssl, unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* c,
                      EVP_MAC_CTX* mac, int enc) {
  auto* ring = static_cast<TicketKeyring*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ringIndex()));
  if (ring == nullptr) return 0;
  TicketKeyring::Key key;
  int at = ring->find(enc ? nullptr : name, key);
  KJ_DEFER(OPENSSL_cleanse(key.data(), key.size()));
  if (at < 0) return 0;  // no keys yet, or a ticket from a key that rotated out
  const unsigned char* hmacKey = key.data() + 16;
  const unsigned char* aesKey = key.data() + 48;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(hmacKey),
                                        32),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_end()};
  if (enc) {
    memcpy(name, key.data(), 16);
    if (RAND_bytes(iv, 16) != 1) return -1;
    if (EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), nullptr, aesKey, iv) != 1) return -1;
  } else if (EVP_DecryptInit_ex(c, EVP_aes_256_cbc(), nullptr, aesKey, iv) != 1) {
    return -1;
  }
  if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
  return (!enc && at > 0) ? 2 : 1;
}

}  // namespace

void TicketKeyring::attach(SSL_CTX* ctx) {
  SSL_CTX_set_ex_data(ctx, ringIndex(), this);
  SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticketKeyCallback);
}

// ---------------------------------------------------------------- TLS context

std::shared_ptr<SSL_CTX> makeServerTlsContext(const PrincipalConfig& p, const std::string& certPath,
                                              const std::string& keyPath, TicketKeyring* tickets) {
  ERR_clear_error();
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  if (!ctx) throw ConfigError("TLS: cannot create a context: " + tls::opensslErrors());
  SSL_CTX* c = ctx.get();
  if (auto e = tls::applyPolicy(c, p.tls, tls::kTls12); !e.empty()) throw ConfigError("TLS: " + e);
  if (SSL_CTX_use_certificate_chain_file(c, certPath.c_str()) != 1) {
    throw ConfigError("TLS: cannot load the server certificate \"" + certPath +
                      "\": " + tls::opensslErrors());
  }
  if (SSL_CTX_use_PrivateKey_file(c, keyPath.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(c) != 1) {
    throw ConfigError("TLS: cannot load the server key \"" + keyPath +
                      "\" (or it does not match the certificate): " + tls::opensslErrors());
  }
  if (p.requireClientCerts) {
    if (SSL_CTX_load_verify_locations(c, p.rootCaPath.c_str(), nullptr) != 1) {
      throw ConfigError("TLS: cannot load the client CA \"" + p.rootCaPath +
                        "\": " + tls::opensslErrors());
    }
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(p.rootCaPath.c_str())) {
      SSL_CTX_set_client_CA_list(c, names);  // tells clients which certificate to present
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  } else {
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);  // as upstream: not even requested
  }
  static const unsigned char kSessionContext[] = "argocd-agent";
  SSL_CTX_set_session_id_context(c, kSessionContext, sizeof kSessionContext - 1);
  // Resumption by ticket only: a server-side session cache would hold memory per agent and be
  // private to one process.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  if (tickets != nullptr && p.tlsTicketRotation.count() > 0) {
    tickets->attach(c);
    SSL_CTX_set_num_tickets(c, 1);  // one reconnect needs one ticket; OpenSSL sends 2 by default
    auto lifetime = std::chrono::duration_cast<std::chrono::seconds>(p.tlsTicketRotation);
    SSL_CTX_set_timeout(c, std::max<long>(1, static_cast<long>(lifetime.count())));
  } else {
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(c, 0);
  }
  SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE);
  static int websocket = 1;
  SSL_CTX_set_alpn_select_cb(c, selectAlpn, p.enableWebsocket ? &websocket : nullptr);
  return ctx;
}

// ---------------------------------------------------------------- the loop

const char* describe(PlaintextRefusal r) {
  return r == kNotHttp2 ? "not HTTP/2" : "no request in time";
}

namespace {

std::string formatAddress(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    inet_ntop(AF_INET, &a.sin_addr, host, sizeof host);
    return std::string("ipv4:") + host + ":" + std::to_string(ntohs(a.sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host);
    return std::string("ipv6:[") + host + "]:" + std::to_string(ntohs(a.sin6_port));
  }
  return "unknown";
}

// The admission key of a peer: its address without the port.
std::string sourceOf(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(ss).sin_addr, host, sizeof host);
  } else if (ss.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr, host, sizeof host);
  }
  return host;
}

}  // namespace

class FrontDoor::Loop {
 public:
  Loop(const Options& options, int listenFd, const std::atomic<bool>& stopped,
       std::shared_ptr<Admission> admission, FrontDoorStats& stats)
      : options_(options),
        listenFd_(listenFd),
        stopped_(stopped),
        admission_(std::move(admission)),
        stats_(stats),
        rng_(static_cast<unsigned>(listenFd) * 7919u + static_cast<unsigned>(getpid())) {}

  // Runs on the front door's thread until `stopped` resolves.
  void run(kj::AsyncIoContext& io, kj::Promise<void> stopped) {
    eventPort_ = &io.unixEventPort;
    timer_ = &io.provider->getTimer();
    kj::TaskSet tasks(errorHandler_);
    tasks_ = &tasks;
    listenObserver_ = kj::heap<kj::UnixEventPort::FdObserver>(
        *eventPort_, listenFd_, kj::UnixEventPort::FdObserver::OBSERVE_READ);
    auto accepting = acceptLoop().eagerlyEvaluate([](kj::Exception&& e) {
      spdlog::error("front door stopped accepting: {}", e.getDescription().cStr());
    });
    stopped.wait(io.waitScope);
    accepting = nullptr;
    listenObserver_ = nullptr;
    tasks_ = nullptr;  // `tasks` (every relay) is destroyed on return, on this thread
  }

 private:
  class Connection;

  struct ErrorHandler final : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override {
      spdlog::debug("connection ended: {}", e.getDescription().cStr());
    }
  };

  kj::Promise<void> acceptLoop();
  // Whether `fd`'s first bytes (peeked: nothing is consumed) are HTTP/2's connection preface;
  // rejects when the peer closes, or sends nothing, within --tls-handshake-timeout.
  kj::Promise<bool> isHttp2(int fd);
  kj::Promise<bool> peekPreface(int fd, kj::UnixEventPort::FdObserver& observer);
  void refusePlaintext(int cause, const std::string& address, const std::string& why) {
    ++stats_.plaintextRefused[cause];
    // A peer that closes before saying anything is often a TCP probe: debug, counted.
    if (cause == kNoRequest) {
      spdlog::debug("plaintext connection from {} closed: {}", address, why);
    } else if (limiter_.allow()) {
      spdlog::warn("plaintext connection from {} closed: {}", address, why);
    }
  }

  const Options& options_;
  int listenFd_;
  const std::atomic<bool>& stopped_;
  std::shared_ptr<Admission> admission_;  // shared by every loop of the front door
  FrontDoorStats& stats_;
  std::minstd_rand rng_;  // early-drop draws
  kj::UnixEventPort* eventPort_ = nullptr;
  kj::Timer* timer_ = nullptr;
  kj::TaskSet* tasks_ = nullptr;
  ErrorHandler errorHandler_;
  kj::Own<kj::UnixEventPort::FdObserver> listenObserver_;
  log::Limiter limiter_{"front-door refusals and failed TLS handshakes"};
  tls::Scratch scratch_;
};

// The relay's guard for one connection: Http2Guard's verdicts, counted and logged (rate-limited)
// when they end or hold a connection.
class EdgeGuard final : public tls::RelayGuard {
 public:
  EdgeGuard(const GuardLimits& limits, kj::Timer& timer, const PeerInfo& peer,
            FrontDoorStats& stats, log::Limiter& limiter)
      : guard_(limits, Http2Guard::Clock::now()),
        timer_(timer),
        peer_(peer),
        stats_(stats),
        limiter_(limiter) {}

  Verdict fromPeer(const char* data, size_t size) override {
    auto v = guard_.inbound(reinterpret_cast<const uint8_t*>(data), size, peer_.authenticated(),
                            Http2Guard::Clock::now());
    if (v == Http2Guard::Verdict::kClose) {
      ended_ = true;
      ++stats_.guardClosed[static_cast<int>(guard_.abuse())];
      if (limiter_.allow()) {
        spdlog::warn("TLS connection from {} closed{}: {}", peer_.address,
                     guard_.http2() ? " with GOAWAY ENHANCE_YOUR_CALM" : "", guard_.why());
      }
      return Verdict::kClose;
    }
    if (v == Http2Guard::Verdict::kHold) {
      if (!counted_) {
        counted_ = true;
        ++stats_.unauthenticatedHeld;
        if (limiter_.allow()) {
          spdlog::warn(
              "TLS connection from {} sent more than --max-unauthenticated-bytes without an "
              "authenticated event stream: read no further until it has one",
              peer_.address);
        }
      }
      return Verdict::kHold;
    }
    return Verdict::kPass;
  }

  // The authenticated flag is set by grpc's thread: looked at every 10 ms while held (only
  // connections over their budget are).
  kj::Promise<void> resumed() override {
    if (peer_.authenticated()) return kj::READY_NOW;
    return timer_.afterDelay(10 * kj::MILLISECONDS).then([this]() { return resumed(); });
  }

  size_t toPeer(const char* data, size_t size) override {
    return guard_.outbound(reinterpret_cast<const uint8_t*>(data), size);
  }
  bool toPeerAtBoundary() const override { return guard_.outboundAtBoundary(); }
  bool ended() const { return ended_; }
  std::string farewell() override { return guard_.goaway(); }
  kj::Promise<void> closeDeadline() override {
    if (closeBy_ == kj::origin<kj::TimePoint>()) closeBy_ = timer_.now() + kj::SECONDS;
    return timer_.atTime(closeBy_);
  }

 private:
  Http2Guard guard_;
  kj::Timer& timer_;
  const PeerInfo& peer_;
  FrontDoorStats& stats_;
  log::Limiter& limiter_;
  bool counted_ = false, ended_ = false;
  kj::TimePoint closeBy_ = kj::origin<kj::TimePoint>();
};

// One TLS connection: handshake, registration, hand-off to grpc, relay until either side closes.
class FrontDoor::Loop::Connection {
 public:
  // `info` was admitted (Admission::admit) by the accept loop.
  Connection(Loop& loop, kj::AutoCloseFd fd, tls::SslPtr ssl, std::shared_ptr<PeerInfo> info)
      : loop_(loop),
        info_(std::move(info)),
        stream_(*loop.eventPort_, kj::mv(fd), std::move(ssl), info_->address),
        guard_(loop.options_.guard, *loop.timer_, *info_, loop.stats_, loop.limiter_) {}

  ~Connection() {
    if (registeredFd_ >= 0) loop_.options_.registry->remove(registeredFd_, info_.get());
    if (handshaking_) loop_.admission_->handshakeEnded();
    loop_.admission_->closed(info_->source, info_->markClosed());
  }

  kj::Promise<void> run() {
    const auto& o = loop_.options_;
    // First the ClientHello (a silent or trickling client gives its slot back quickly), then
    // the rest of the handshake within --tls-handshake-timeout of the accept.
    auto hello =
        o.clientHelloTimeout < o.handshakeTimeout ? o.clientHelloTimeout : o.handshakeTimeout;
    auto timeout = loop_.timer_->afterDelay(hello).then([this, hello]() -> kj::Promise<void> {
      const auto& o = loop_.options_;
      if (!stream_.helloReceived()) {
        ++loop_.stats_.noHello;
        return tls::failure("no TLS ClientHello within --tls-client-hello-timeout");
      }
      return loop_.timer_->afterDelay(o.handshakeTimeout - hello).then([]() -> kj::Promise<void> {
        return tls::failure("no complete TLS handshake within --tls-handshake-timeout");
      });
    });
    return stream_.handshake()
        .exclusiveJoin(kj::mv(timeout))
        .then(
            [this]() -> kj::Promise<void> {
              handshaking_ = false;
              loop_.admission_->handshakeEnded();
              // Stopped meanwhile: grpc may be shutting down, nothing is handed to it any more.
              if (loop_.stopped_.load()) return kj::READY_NOW;
              return handOff();
            },
            [this](kj::Exception&& e) -> kj::Promise<void> {
              ++loop_.stats_.failed;
              if (loop_.limiter_.allow()) {
                spdlog::warn("TLS handshake with {} failed: {}", info_->address,
                             e.getDescription().cStr());
              }
              return kj::READY_NOW;
            });
  }

 private:
  kj::Promise<void> handOff() {
    auto session = stream_.sessionInfo();
    ++loop_.stats_.handshakes;
    if (session.resumed) ++loop_.stats_.resumed;
    // A peer certificate exists only when client certificates are required, i.e. verified.
    info_->tlsVersion = session.version;
    info_->cipher = session.cipher;
    info_->certificatePem = std::move(session.certificatePem);
    info_->commonName = std::move(session.commonName);
    int pair[2];
    KJ_SYSCALL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair));
    kj::AutoCloseFd ours(pair[0]);
    kj::AutoCloseFd theirs(pair[1]);
    spdlog::debug("TLS connection from {}: {} {}{}{}", info_->address, info_->tlsVersion,
                  info_->cipher, session.alpn.empty() ? "" : ", ALPN " + session.alpn,
                  session.resumed ? " (session resumed)" : "");
    // A connection that opens no authenticated event stream in time is closed: before that it
    // holds three descriptors and grpc's memory on nobody's behalf.
    auto unauthenticated =
        loop_.timer_->afterDelay(loop_.options_.unauthenticatedTimeout)
            .then([this]() -> kj::Promise<void> {
              if (info_->authenticated()) return kj::NEVER_DONE;
              ++loop_.stats_.unauthenticatedTimeouts;
              if (loop_.limiter_.allow()) {
                spdlog::warn(
                    "TLS connection from {} closed: no authenticated event stream within "
                    "--unauthenticated-timeout",
                    info_->address);
              }
              return kj::READY_NOW;
            });
    // grpc or libwebsockets closed its side first: linger (bounded) so that the agent reads
    // everything we sent before the TCP connection goes (tls_stream.h).
    auto relay = stream_.relay(kj::mv(ours), loop_.scratch_, &guard_)
                     .then([this]() -> kj::Promise<void> {
                       if (!stream_.localClosed()) return kj::READY_NOW;
                       // A connection the guard ended may still be sending what it was refused for
                       // (a 1 MiB header block): read more of it, or the reset of a close with
                       // unread input would destroy the GOAWAY before the client reads it.
                       return stream_.linger(guard_.ended() ? 4 << 20 : 64 << 10)
                           .exclusiveJoin(loop_.timer_->afterDelay(kLingerAfterClose));
                     })
                     .exclusiveJoin(kj::mv(unauthenticated));
    const auto& o = loop_.options_;
    if (!o.handOffHttp1 || session.alpn == "h2") {
      toGrpc(theirs.release());
      return relay;
    }
    if (session.alpn == "http/1.1") {
      o.handOffHttp1(theirs.release(), info_);
      return relay;
    }
    // No ALPN (Go's WebSocket client offers none): the first bytes tell, while the relay runs.
    int fd = theirs.get();
    auto dispatch = loop_.isHttp2(fd).then(
        [this, theirs = kj::mv(theirs)](bool h2) mutable -> kj::Promise<void> {
          if (loop_.stopped_.load()) return kj::READY_NOW;
          if (h2) {
            toGrpc(theirs.release());
          } else {
            loop_.options_.handOffHttp1(theirs.release(), info_);
          }
          return kj::NEVER_DONE;
        });
    return relay.exclusiveJoin(kj::mv(dispatch));
  }

  void toGrpc(int fd) {
    registeredFd_ = fd;
    loop_.options_.registry->add(fd, info_);
    loop_.options_.handOff(fd);  // grpc owns fd from here on
  }

  Loop& loop_;
  std::shared_ptr<PeerInfo> info_;
  tls::TlsStream stream_;
  EdgeGuard guard_;  // the relay's; after stream_, destroyed before it
  bool handshaking_ = true;
  int registeredFd_ = -1;  // grpc's end of the socketpair (grpc owns and closes it)
};

kj::Promise<void> FrontDoor::Loop::acceptLoop() {
  for (;;) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd =
        accept4(listenFd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return listenObserver_->whenBecomesReadable().then([this]() { return acceptLoop(); });
      }
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      if (errno == EINVAL) return kj::READY_NOW;  // stopAccepting() shut the socket down
      // Out of descriptors or memory: back off instead of spinning; existing relays go on.
      spdlog::warn("accept failed: {}; retrying in 100 ms", strerror(errno));
      return timer_->afterDelay(100 * kj::MILLISECONDS).then([this]() { return acceptLoop(); });
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto info = std::make_shared<PeerInfo>();
    info->address = formatAddress(ss);
    if (stopped_.load()) {
      close(fd);
      continue;
    }
    if (!options_.tls) {
      // Plaintext: h2c prior knowledge, or (WebSocket on) an HTTP/1.1 upgrade, by the first
      // bytes; the protocol's owner then reads the socket itself. Anything else, or nothing in
      // time, is counted and closed here (grpc would close it without a word).
      auto own = std::make_shared<kj::AutoCloseFd>(fd);  // closed if the loop stops first
      auto address = info->address;
      tasks_->add(isHttp2(fd).then(
          [this, own, info = std::move(info)](bool h2) mutable {
            if (stopped_.load()) return;
            if (h2) {
              int raw = own->release();
              options_.registry->add(raw, info);
              options_.handOff(raw);
            } else if (options_.handOffHttp1) {
              options_.handOffHttp1(own->release(), std::move(info));
            } else {
              char first[4096];  // read, so that the close is a FIN, not a reset
              bool tls = recv(own->get(), first, sizeof first, MSG_DONTWAIT) > 0 &&
                         static_cast<unsigned char>(first[0]) == 0x16;
              refusePlaintext(kNotHttp2, info->address,
                              tls ? "a TLS handshake on the plaintext port (--insecure-plaintext: "
                                    "the client must not use TLS)"
                                  : "not HTTP/2 (no connection preface)");
            }
          },
          [this, own, address](kj::Exception&& e) {
            refusePlaintext(kNoRequest, address, e.getDescription().cStr());
          }));
      continue;
    }
    if (options_.perSource) info->source = sourceOf(ss);
    Refusal refusal =
        admission_->admit(info->source, true, std::uniform_real_distribution<double>(0, 1)(rng_));
    if (refusal != Refusal::kNone) {
      // Closed at once: the client learns it now and retries (perhaps on another listener)
      // instead of waiting in the backlog.
      ++stats_.refused[static_cast<int>(refusal)];
      if (limiter_.allow()) {
        spdlog::warn("TLS connection from {} closed: {}", info->address, describe(refusal));
      }
      close(fd);
      continue;
    }
    info->admission = admission_;
    tls::SslPtr ssl(SSL_new(options_.tls.get()));
    if (!ssl) {
      spdlog::warn("TLS connection from {} closed: {}", info->address, tls::opensslErrors());
      admission_->handshakeEnded();
      admission_->closed(info->source, false);
      close(fd);
      continue;
    }
    SSL_set_accept_state(ssl.get());
    auto conn = kj::heap<Connection>(*this, kj::AutoCloseFd(fd), std::move(ssl), std::move(info));
    auto& ref = *conn;
    tasks_->add(ref.run().attach(kj::mv(conn)));
  }
}

kj::Promise<bool> FrontDoor::Loop::isHttp2(int fd) {
  auto observer = kj::heap<kj::UnixEventPort::FdObserver>(
      *eventPort_, fd, kj::UnixEventPort::FdObserver::OBSERVE_READ);
  auto& ref = *observer;
  return peekPreface(fd, ref)
      .attach(kj::mv(observer))
      .exclusiveJoin(timer_->afterDelay(options_.handshakeTimeout).then([]() -> kj::Promise<bool> {
        return tls::failure("no request within --tls-handshake-timeout");
      }));
}

kj::Promise<bool> FrontDoor::Loop::peekPreface(int fd, kj::UnixEventPort::FdObserver& observer) {
  static constexpr char kPreface[] = "PRI ";  // no HTTP/1.1 request starts so (RFC 9113 §3.4)
  char buf[sizeof kPreface - 1];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK);
  if (n > 0) {
    if (memcmp(buf, kPreface, static_cast<size_t>(n)) != 0) return false;
    if (static_cast<size_t>(n) == sizeof buf) return true;
  } else if (n == 0) {
    return tls::failure("closed before its first request");
  } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    return tls::failure(std::string("reading the first request: ") + strerror(errno));
  }
  return observer.whenBecomesReadable().then(
      [this, fd, &observer]() { return peekPreface(fd, observer); });
}

// ---------------------------------------------------------------- FrontDoor

namespace {

// A non-blocking listening socket on `address` with SO_REUSEPORT (shared with the other loops and
// listener workers). Throws kj::Exception naming the address.
int listenOn(const addrinfo& address, bool dualStack, const std::string& host, int port) {
  int fd = socket(address.ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  KJ_REQUIRE(fd >= 0, "socket() failed", strerror(errno));
  int one = 1, zero = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (dualStack) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  if (bind(fd, address.ai_addr, address.ai_addrlen) != 0 || listen(fd, 1024) != 0) {
    int e = errno;
    close(fd);
    KJ_FAIL_REQUIRE("cannot listen", host, port, strerror(e));
  }
  return fd;
}

}  // namespace

FrontDoor::FrontDoor(Options options)
    : options_(std::move(options)), admission_(std::make_shared<Admission>(options_.admission)) {
  KJ_REQUIRE(static_cast<bool>(options_.handOff) && options_.registry != nullptr);
  KJ_REQUIRE(options_.loops >= 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(options_.port);
  int rc = getaddrinfo(options_.host.empty() ? nullptr : options_.host.c_str(), port.c_str(),
                       &hints, &res);
  KJ_REQUIRE(rc == 0, "cannot resolve the listen address", options_.host, gai_strerror(rc));
  KJ_DEFER(freeaddrinfo(res));
  // With no host, prefer the IPv6 wildcard (dual-stack), as grpc does.
  addrinfo* chosen = res;
  if (options_.host.empty()) {
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      if (a->ai_family == AF_INET6) chosen = a;
    }
  }
  bool dualStack = chosen->ai_family == AF_INET6 && options_.host.empty();
  KJ_DEFER(if (listenFds_.size() < options_.loops) for (int fd : listenFds_) close(fd));
  listenFds_.push_back(listenOn(*chosen, dualStack, options_.host, options_.port));
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(listenFds_[0], reinterpret_cast<sockaddr*>(&ss), &len);
  // The other loops bind the port the first one got (port 0 asks the kernel for one).
  if (ss.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(chosen->ai_addr)->sin6_port =
        reinterpret_cast<sockaddr_in6&>(ss).sin6_port;
  } else {
    reinterpret_cast<sockaddr_in*>(chosen->ai_addr)->sin_port =
        reinterpret_cast<sockaddr_in&>(ss).sin_port;
  }
  while (listenFds_.size() < options_.loops) {
    listenFds_.push_back(listenOn(*chosen, dualStack, options_.host, options_.port));
  }
  // "127.0.0.1:8443" / "[::]:8443": what operators and the quick start read from the log.
  boundAddress_ = formatAddress(ss);
  boundAddress_ = boundAddress_.substr(boundAddress_.find(':') + 1);
}

void FrontDoor::stopAccepting() {
  stopped_ = true;
  for (int fd : listenFds_) shutdown(fd, SHUT_RDWR);  // wakes accept4() with EINVAL
}

FrontDoor::~FrontDoor() {
  threads_.clear();  // every relay is closed on its own thread
  for (int fd : listenFds_) close(fd);
}

void FrontDoor::start() {
  for (int fd : listenFds_) {
    loops_.push_back(std::make_unique<Loop>(options_, fd, stopped_, admission_, stats_));
  }
  // A listener that cannot accept must be restarted: LoopThread ends the process on failure.
  for (auto& loop : loops_) {
    threads_.push_back(std::make_unique<tls::LoopThread>(
        "front door", [l = loop.get()](kj::AsyncIoContext& io, kj::Promise<void> stopped) {
          l->run(io, kj::mv(stopped));
        }));
  }
}

}  // namespace aa
