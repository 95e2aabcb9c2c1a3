// The principal's front door (front_door.h): accept, TLS handshake, relay, hand-off to grpc.
#include "workers/listener/front_door.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>

#include <kj/async-unix.h>
#include <kj/debug.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ipc/runtime/log.h"
#include "workers/common/role.h"

namespace aa {

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

// ---------------------------------------------------------------- TLS context

namespace {

std::string opensslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

// grpc-go, grpc-java, grpc-js and grpc core all offer "h2". A client that offers ALPN without h2
// is not a gRPC client: refuse in the handshake, as grpc-go does. No ALPN at all is accepted.
int selectAlpn(SSL*, const unsigned char** out, unsigned char* outLen, const unsigned char* in,
               unsigned int inLen, void*) {
  static const unsigned char kH2[] = {2, 'h', '2'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outLen, kH2, sizeof kH2, in, inLen) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

// grpc 1.51's server default for TLS 1.2 (ECDHE with AES-GCM), plus ChaCha20 as Go offers it.
constexpr const char* kDefaultTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

}  // namespace

std::shared_ptr<SSL_CTX> makeServerTlsContext(const PrincipalConfig& p, const std::string& certPath,
                                              const std::string& keyPath) {
  ERR_clear_error();
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  if (!ctx) throw ConfigError("TLS: cannot create a context: " + opensslErrors());
  SSL_CTX* c = ctx.get();
  // TLS 1.1 needs security level 0 under OpenSSL 3; only when the operator asked for it.
  int minVersion = p.tls.minVersion == tls::kUnset ? tls::kTls12 : p.tls.minVersion;
  if (minVersion <= tls::kTls11) SSL_CTX_set_security_level(c, 0);
  if (!SSL_CTX_set_min_proto_version(c, minVersion) ||
      !SSL_CTX_set_max_proto_version(c, p.tls.maxVersion)) {
    throw ConfigError("TLS: OpenSSL refused the TLS version range: " + opensslErrors());
  }
  std::string list = p.tls.openSslCipherList();
  if (!SSL_CTX_set_cipher_list(c, list.empty() ? kDefaultTls12Ciphers : list.c_str())) {
    throw ConfigError("TLS: OpenSSL refused --tls-ciphersuites: " + opensslErrors());
  }
  std::string suites13 = p.tls.openSslCipherSuites();
  if (!suites13.empty() && !SSL_CTX_set_ciphersuites(c, suites13.c_str())) {
    throw ConfigError("TLS: OpenSSL refused the TLS 1.3 suites of --tls-ciphersuites: " +
                      opensslErrors());
  }
  if (SSL_CTX_use_certificate_chain_file(c, certPath.c_str()) != 1) {
    throw ConfigError("TLS: cannot load the server certificate \"" + certPath +
                      "\": " + opensslErrors());
  }
  if (SSL_CTX_use_PrivateKey_file(c, keyPath.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(c) != 1) {
    throw ConfigError("TLS: cannot load the server key \"" + keyPath +
                      "\" (or it does not match the certificate): " + opensslErrors());
  }
  if (p.requireClientCerts) {
    if (SSL_CTX_load_verify_locations(c, p.rootCaPath.c_str(), nullptr) != 1) {
      throw ConfigError("TLS: cannot load the client CA \"" + p.rootCaPath +
                        "\": " + opensslErrors());
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
  SSL_CTX_set_options(
      c, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(c, selectAlpn, nullptr);
  return ctx;
}

// ---------------------------------------------------------------- the loop

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

// At most `burst` lines per `window`; then one line saying how many were left out.
class LogLimiter {
 public:
  bool allow() {
    auto now = std::chrono::steady_clock::now();
    if (now - windowStart_ > std::chrono::seconds(10)) {
      if (suppressed_ > 0) {
        spdlog::warn("{} more failed TLS handshakes not logged", suppressed_);
      }
      windowStart_ = now;
      count_ = 0;
      suppressed_ = 0;
    }
    if (++count_ <= 5) return true;
    ++suppressed_;
    return false;
  }

 private:
  std::chrono::steady_clock::time_point windowStart_{};
  unsigned count_ = 0, suppressed_ = 0;
};

kj::Exception tlsFailure(std::string what) {
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::str(what.c_str()));
}

// OpenSSL's reason plus which setting usually explains it, for the operator reading the log.
std::string explainHandshakeFailure(const std::string& reason) {
  static const std::pair<const char*, const char*> kHints[] = {
      {"unsupported protocol",
       "the client's TLS versions are outside --tls-min-version/--tls-max-version"},
      {"no shared cipher", "no cipher suite in common: see --tls-ciphersuites"},
      {"no application protocol", "the client did not offer ALPN h2: not a gRPC client?"},
      {"peer did not return a certificate",
       "client certificates are required (--require-client-certs or --auth=mtls)"},
      {"certificate verify failed",
       "the client certificate does not verify against --root-ca-path"},
      {"http request", "plain HTTP sent to the TLS port"},
      {"wrong version number", "not TLS: a plaintext client on the TLS port?"},
  };
  for (const auto& [needle, hint] : kHints) {
    if (reason.find(needle) != std::string::npos) return reason + " (" + hint + ")";
  }
  return reason;
}

struct SslDeleter {
  void operator()(SSL* s) const { SSL_free(s); }
};

// Scratch space shared by every relay on the front door's thread: data is copied into a
// connection's own buffer only when the other side cannot take it at once.
constexpr size_t kScratch = 32 * 1024;
// Passes of Connection::relay (each moves up to kScratch per direction) before it yields.
constexpr int kPassesPerTurn = 16;

}  // namespace

class FrontDoor::Loop {
 public:
  Loop(const Options& options, int listenFd, const std::atomic<bool>& stopped)
      : options_(options), listenFd_(listenFd), stopped_(stopped) {}

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

  const Options& options_;
  int listenFd_;
  const std::atomic<bool>& stopped_;
  kj::UnixEventPort* eventPort_ = nullptr;
  kj::Timer* timer_ = nullptr;
  kj::TaskSet* tasks_ = nullptr;
  ErrorHandler errorHandler_;
  kj::Own<kj::UnixEventPort::FdObserver> listenObserver_;
  size_t handshaking_ = 0;
  LogLimiter limiter_;
  char scratch_[kScratch];
};

// One TLS connection: handshake, then relay until either side closes.
class FrontDoor::Loop::Connection {
 public:
  Connection(Loop& loop, int fd, std::shared_ptr<PeerInfo> info)
      : loop_(loop),
        tcp_(fd),
        info_(std::move(info)),
        tcpObserver_(*loop.eventPort_, fd,
                     kj::UnixEventPort::FdObserver::OBSERVE_READ |
                         kj::UnixEventPort::FdObserver::OBSERVE_WRITE) {}

  // Members go in reverse order: observers before their descriptors (epoll needs them open).
  ~Connection() {
    if (registeredFd_ >= 0) loop_.options_.registry->remove(registeredFd_, info_.get());
    if (handshaking_) --loop_.handshaking_;
  }

  kj::Promise<void> run() {
    ssl_.reset(SSL_new(loop_.options_.tls.get()));
    if (!ssl_ || SSL_set_fd(ssl_.get(), tcp_.get()) != 1) {
      return tlsFailure("cannot create a TLS session: " + opensslErrors());
    }
    SSL_set_accept_state(ssl_.get());
    handshaking_ = true;
    ++loop_.handshaking_;
    auto timeout =
        loop_.timer_->afterDelay(loop_.options_.handshakeTimeout).then([]() -> kj::Promise<void> {
          return tlsFailure("no complete TLS handshake within --tls-handshake-timeout");
        });
    return handshake()
        .exclusiveJoin(kj::mv(timeout))
        .then(
            [this]() -> kj::Promise<void> {
              if (!finishHandshake()) return kj::READY_NOW;
              return relay();
            },
            [this](kj::Exception&& e) -> kj::Promise<void> {
              if (loop_.limiter_.allow()) {
                spdlog::warn("TLS handshake with {} failed: {}", info_->address,
                             e.getDescription().cStr());
              }
              return kj::READY_NOW;
            });
  }

 private:
  kj::Promise<void> handshake() {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl_.get());
    if (r == 1) return kj::READY_NOW;
    switch (SSL_get_error(ssl_.get(), r)) {
      case SSL_ERROR_WANT_READ:
        return tcpObserver_.whenBecomesReadable().then([this]() { return handshake(); });
      case SSL_ERROR_WANT_WRITE:
        return tcpObserver_.whenBecomesWritable().then([this]() { return handshake(); });
      case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
          return tlsFailure("the client closed the connection during the handshake");
        }
        [[fallthrough]];
      default:
        return tlsFailure(explainHandshakeFailure(opensslErrors()));
    }
  }

  // Returns false when the front door was stopped meanwhile (grpc may be shutting down: nothing
  // is handed to it any more).
  bool finishHandshake() {
    handshaking_ = false;
    --loop_.handshaking_;
    if (loop_.stopped_.load()) return false;
    SSL* s = ssl_.get();
    info_->tlsVersion = SSL_get_version(s);
    info_->cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(s));
    if (X509* cert = SSL_get0_peer_certificate(s)) {
      // Only reached when client certificates are required, i.e. verified against the CA.
      if (BIO* bio = BIO_new(BIO_s_mem())) {
        if (PEM_write_bio_X509(bio, cert) == 1) {
          char* data = nullptr;
          long n = BIO_get_mem_data(bio, &data);
          info_->certificatePem.assign(data, static_cast<size_t>(n));
        }
        BIO_free(bio);
      }
      X509_NAME* subject = X509_get_subject_name(cert);
      int first = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
      if (first >= 0 && X509_NAME_get_index_by_NID(subject, NID_commonName, first) < 0) {
        ASN1_STRING* cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, first));
        unsigned char* utf8 = nullptr;
        int n = ASN1_STRING_to_UTF8(&utf8, cn);
        if (n > 0) info_->commonName.assign(reinterpret_cast<char*>(utf8), n);
        OPENSSL_free(utf8);
      }
    }
    int pair[2];
    KJ_SYSCALL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair));
    local_ = kj::AutoCloseFd(pair[0]);
    localObserver_ = kj::heap<kj::UnixEventPort::FdObserver>(
        *loop_.eventPort_, local_.get(),
        kj::UnixEventPort::FdObserver::OBSERVE_READ | kj::UnixEventPort::FdObserver::OBSERVE_WRITE);
    registeredFd_ = pair[1];
    loop_.options_.registry->add(pair[1], info_);
    spdlog::debug("TLS connection from {}: {} {}", info_->address, info_->tlsVersion,
                  info_->cipher);
    loop_.options_.handOff(pair[1]);  // grpc owns pair[1] from here on
    return true;
  }

  // What each side is blocked on after a pass of `pump`.
  enum class Wait { kNone, kRead, kWrite };

  // Moves as much as possible in both directions without blocking, then waits for whatever
  // blocked it. Returns when the connection is over.
  kj::Promise<void> relay() {
    for (int pass = 0;; ++pass) {
      if (pass == kPassesPerTurn) {
        // A busy connection yields so that others (and the accept loop) get their turn.
        return kj::evalLater([this]() { return relay(); });
      }
      bool progress = false;
      tlsReadWait_ = tlsWriteWait_ = Wait::kNone;
      localReadBlocked_ = localWriteBlocked_ = false;
      // TLS -> grpc.
      if (!toLocal_.empty()) {
        if (!sendLocal(toLocal_.data(), toLocal_.size(), progress)) return kj::READY_NOW;
      }
      while (toLocal_.empty() && !tlsEof_ && !localWriteBlocked_) {
        ERR_clear_error();
        int n = SSL_read(ssl_.get(), loop_.scratch_, kScratch);
        if (n > 0) {
          progress = true;
          if (!sendLocal(loop_.scratch_, static_cast<size_t>(n), progress)) return kj::READY_NOW;
          continue;
        }
        int err = SSL_get_error(ssl_.get(), n);
        if (err == SSL_ERROR_WANT_READ) {
          tlsReadWait_ = Wait::kRead;
        } else if (err == SSL_ERROR_WANT_WRITE) {
          tlsReadWait_ = Wait::kWrite;
        } else if (err == SSL_ERROR_ZERO_RETURN) {
          tlsEof_ = true;  // the agent closed: let grpc see end of stream
          shutdown(local_.get(), SHUT_WR);
          progress = true;
        } else {
          spdlog::debug("TLS connection from {}: read failed: {}", info_->address,
                        ERR_peek_error() ? opensslErrors() : "connection reset");
          return kj::READY_NOW;
        }
        break;
      }
      // grpc -> TLS.
      if (!toTls_.empty()) {
        if (!writeTls(toTls_.data(), toTls_.size(), progress)) return kj::READY_NOW;
      }
      while (toTls_.empty() && !localEof_ && tlsWriteWait_ == Wait::kNone) {
        ssize_t n = recv(local_.get(), loop_.scratch_, kScratch, MSG_DONTWAIT);
        if (n > 0) {
          progress = true;
          if (!writeTls(loop_.scratch_, static_cast<size_t>(n), progress)) return kj::READY_NOW;
          continue;
        }
        if (n == 0) {
          // grpc closed the connection: say so to the agent and finish.
          localEof_ = true;
          SSL_shutdown(ssl_.get());
          return kj::READY_NOW;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          localReadBlocked_ = true;
        } else if (errno != EINTR) {
          return kj::READY_NOW;
        }
        break;
      }
      if (tlsEof_ && localEof_) return kj::READY_NOW;
      if (!progress) break;
    }
    // Nothing more can move: wait for the first of the things that blocked us.
    kj::Maybe<kj::Promise<void>> waits;
    auto add = [&waits](kj::Promise<void> p) {
      KJ_IF_MAYBE (w, waits) {
        waits = w->exclusiveJoin(kj::mv(p));
      } else {
        waits = kj::mv(p);
      }
    };
    if (tlsReadWait_ == Wait::kRead || tlsWriteWait_ == Wait::kRead) {
      add(tcpObserver_.whenBecomesReadable());
    }
    if (tlsReadWait_ == Wait::kWrite || tlsWriteWait_ == Wait::kWrite) {
      add(tcpObserver_.whenBecomesWritable());
    }
    if (localReadBlocked_) add(localObserver_->whenBecomesReadable());
    if (localWriteBlocked_) add(localObserver_->whenBecomesWritable());
    KJ_IF_MAYBE (w, waits) {
      return w->then([this]() { return relay(); });
    }
    return kj::READY_NOW;  // nothing to wait for: both directions are finished
  }

  // Writes to grpc's side; keeps what does not fit. False when grpc's side is gone.
  bool sendLocal(const char* data, size_t size, bool& progress) {
    ssize_t n = send(local_.get(), data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
      n = 0;
    }
    if (n > 0) progress = true;
    size_t written = static_cast<size_t>(n);
    if (written < size) {
      localWriteBlocked_ = true;
      if (data == toLocal_.data()) {
        toLocal_.erase(0, written);
      } else {
        toLocal_.assign(data + written, size - written);
      }
    } else if (data == toLocal_.data()) {
      toLocal_.clear();
      toLocal_.shrink_to_fit();
    }
    return true;
  }

  // SSL_write what OpenSSL takes; keeps the rest for a retry. False on a TLS error.
  bool writeTls(const char* data, size_t size, bool& progress) {
    size_t done = 0;
    while (done < size) {
      ERR_clear_error();
      int n = SSL_write(ssl_.get(), data + done,
                        static_cast<int>(std::min<size_t>(size - done, kScratch)));
      if (n > 0) {
        done += static_cast<size_t>(n);
        progress = true;
        continue;
      }
      int err = SSL_get_error(ssl_.get(), n);
      if (err == SSL_ERROR_WANT_WRITE) {
        tlsWriteWait_ = Wait::kWrite;
      } else if (err == SSL_ERROR_WANT_READ) {
        tlsWriteWait_ = Wait::kRead;
      } else {
        spdlog::debug("TLS connection from {}: write failed: {}", info_->address,
                      ERR_peek_error() ? opensslErrors() : "connection reset");
        return false;
      }
      break;
    }
    if (data == toTls_.data()) {
      toTls_.erase(0, done);
      if (toTls_.empty()) toTls_.shrink_to_fit();
    } else if (done < size) {
      toTls_.assign(data + done, size - done);
    }
    return true;
  }

  Loop& loop_;
  kj::AutoCloseFd tcp_;
  std::shared_ptr<PeerInfo> info_;
  std::unique_ptr<SSL, SslDeleter> ssl_;  // does not own tcp_
  kj::UnixEventPort::FdObserver tcpObserver_;
  bool handshaking_ = false;
  kj::AutoCloseFd local_;  // our end of the socketpair
  int registeredFd_ = -1;  // grpc's end (grpc owns and closes it)
  kj::Own<kj::UnixEventPort::FdObserver> localObserver_;
  std::string toLocal_, toTls_;
  bool tlsEof_ = false, localEof_ = false;
  Wait tlsReadWait_ = Wait::kNone, tlsWriteWait_ = Wait::kNone;
  bool localReadBlocked_ = false, localWriteBlocked_ = false;
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
      options_.registry->add(fd, std::move(info));
      options_.handOff(fd);  // plaintext: grpc reads the socket itself
      continue;
    }
    if (handshaking_ >= options_.maxHandshakes) {
      if (limiter_.allow()) {
        spdlog::warn("TLS connection from {} closed: {} handshakes already in progress",
                     info->address, handshaking_);
      }
      close(fd);
      continue;
    }
    auto conn = kj::heap<Connection>(*this, fd, std::move(info));
    auto& ref = *conn;
    tasks_->add(ref.run().attach(kj::mv(conn)));
  }
}

// ---------------------------------------------------------------- FrontDoor

FrontDoor::FrontDoor(Options options) : options_(std::move(options)) {
  KJ_REQUIRE(static_cast<bool>(options_.handOff) && options_.registry != nullptr);
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
  const addrinfo* chosen = res;
  if (options_.host.empty()) {
    for (const addrinfo* a = res; a != nullptr; a = a->ai_next) {
      if (a->ai_family == AF_INET6) chosen = a;
    }
  }
  int fd = socket(chosen->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  KJ_REQUIRE(fd >= 0, "socket() failed", strerror(errno));
  int one = 1, zero = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (chosen->ai_family == AF_INET6 && options_.host.empty()) {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  }
  if (bind(fd, chosen->ai_addr, chosen->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
    int e = errno;
    close(fd);
    KJ_FAIL_REQUIRE("cannot listen", options_.host, options_.port, strerror(e));
  }
  listenFd_ = fd;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  // "127.0.0.1:8443" / "[::]:8443": what operators and the quick start read from the log.
  boundAddress_ = formatAddress(ss);
  boundAddress_ = boundAddress_.substr(boundAddress_.find(':') + 1);
}

void FrontDoor::stopAccepting() {
  stopped_ = true;
  if (listenFd_ >= 0) shutdown(listenFd_, SHUT_RDWR);  // wakes accept4() with EINVAL
}

FrontDoor::~FrontDoor() {
  if (thread_.joinable()) {
    stop_->fulfill();
    thread_.join();
  }
  if (listenFd_ >= 0) close(listenFd_);
}

void FrontDoor::start() {
  loop_ = std::make_unique<Loop>(options_, listenFd_, stopped_);
  std::mutex mu;
  std::condition_variable cv;
  thread_ = std::thread([this, &mu, &cv]() {
    try {
      // The stop promise must belong to this thread's event loop; its fulfiller goes back to
      // start() for the destructor.
      auto io = kj::setupAsyncIo();
      auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
      {
        std::lock_guard<std::mutex> lock(mu);
        stop_ = kj::mv(paf.fulfiller);
      }
      cv.notify_one();
      loop_->run(io, kj::mv(paf.promise));
    } catch (const kj::Exception& e) {
      spdlog::critical("front door failed: {}", e.getDescription().cStr());
      std::terminate();  // a listener that cannot accept must be restarted
    }
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [this]() { return stop_.get() != nullptr; });
}

}  // namespace aa
