// A TLS connection on a KJ loop: handshake, then relay to grpc's plaintext side (tls_stream.h).
#include "workers/common/tls_stream.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

#include <kj/debug.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ipc/runtime/log.h"

namespace aa::tls {

namespace {

// Passes of TlsStream::pump (each moves up to Scratch::kSize per direction) before it yields, so a
// busy connection lets the others on its loop (and an accept loop) have their turn.
constexpr int kPassesPerTurn = 16;

}  // namespace

kj::Exception failure(const std::string& what) {
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::str(what.c_str()));
}

LoopThread::LoopThread(std::string what, Main main) {
  thread_ = std::thread([this, what = std::move(what), main = std::move(main)]() {
    try {
      // The stop promise must belong to this thread's loop; its fulfiller goes to the destructor.
      auto io = kj::setupAsyncIo();
      auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
      {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = kj::mv(paf.fulfiller);
        executor_ = &kj::getCurrentThreadExecutor();
      }
      cv_.notify_all();
      main(io, kj::mv(paf.promise));
    } catch (const kj::Exception& e) {
      spdlog::critical("{} failed: {}", what, e.getDescription().cStr());
      std::terminate();
    }
  });
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this]() { return executor_ != nullptr; });
}

LoopThread::~LoopThread() {
  stop_->fulfill();
  thread_.join();
}

void SslDeleter::operator()(SSL* s) const { SSL_free(s); }

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

namespace {
// What an agent sees when the principal's front door refuses it at accept (admission.h).
constexpr const char* kEofInHandshake = "unexpected eof while reading";
constexpr const char* kClosedInHandshake =
    "the peer closed the connection during the handshake: a principal that is refusing "
    "connections (too many in all, or too many unauthenticated ones from this address) closes "
    "them at once; its log and `argocd-agentctl status` name the cause";
}  // namespace

bool isIpLiteral(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string expectPeerName(SSL* ssl, const std::string& host, bool verify) {
  bool ip = isIpLiteral(host);
  if (!ip && SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) return "cannot send SNI " + host;
  if (!verify) return "";
  int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str())
              : SSL_set1_host(ssl, host.c_str());
  return ok == 1 ? "" : "cannot check the certificate for " + host;
}

std::vector<Address> resolveTcp(const std::string& host, int port, std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::vector<Address> out;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    error = "cannot resolve " + host + ": " + gai_strerror(rc);
    return out;
  }
  for (const addrinfo* a = res; a != nullptr; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
    Address x;
    memcpy(&x.addr, a->ai_addr, a->ai_addrlen);
    x.len = a->ai_addrlen;
    out.push_back(x);
  }
  freeaddrinfo(res);
  if (out.empty()) error = "no address for " + host;
  return out;
}

std::string explainHandshakeFailure(const std::string& reason) {
  static const std::pair<const char*, const char*> kHints[] = {
      {"unsupported protocol",
       "no TLS version in common with the peer: see --tls-min-version/--tls-max-version"},
      {"alert protocol version",
       "no TLS version in common with the peer: see --tls-min-version/--tls-max-version"},
      {"no shared cipher", "no cipher suite in common with the peer: see --tls-ciphersuites"},
      {"alert handshake failure",
       "the peer refused the handshake: often no cipher suite in common (--tls-ciphersuites)"},
      {"no application protocol",
       "ALPN h2 not agreed: the peer is not a gRPC endpoint? (through an HTTP/1.1-only proxy: "
       "--enable-websocket on both sides)"},
      {"peer did not return a certificate",
       "client certificates are required (--require-client-certs or --auth=mtls)"},
      {"alert certificate required",
       "the principal requires a client certificate: --tls-client-cert/--tls-client-key"},
      {"certificate verify failed",
       "the peer's certificate does not verify against --root-ca-path"},
      {"http request", "plain HTTP sent to the TLS port"},
      {"wrong version number", "not TLS: a plaintext peer on a TLS connection?"},
      {kEofInHandshake, kClosedInHandshake},
  };
  if (reason == kEofInHandshake) return kClosedInHandshake;  // the hint says it all
  for (const auto& [needle, hint] : kHints) {
    if (reason.find(needle) != std::string::npos) return reason + " (" + hint + ")";
  }
  return reason;
}

std::string applyPolicy(SSL_CTX* c, const Policy& policy, int defaultMin) {
  int minVersion = policy.minVersion == kUnset ? defaultMin : policy.minVersion;
  // TLS 1.1 needs security level 0 under OpenSSL 3; only when the operator asked for it.
  if (minVersion <= kTls11) SSL_CTX_set_security_level(c, 0);
  if (!SSL_CTX_set_min_proto_version(c, minVersion) ||
      !SSL_CTX_set_max_proto_version(c, policy.maxVersion)) {
    return "OpenSSL refused the TLS version range: " + opensslErrors();
  }
  // Without a list, TLS 1.2 offers what grpc 1.51 offers (ECDHE with AES-GCM) plus ChaCha20, as
  // Go does; TLS 1.3 keeps OpenSSL's three suites.
  static constexpr const char* kDefaultTls12 =
      "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
      "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
  std::string list = policy.openSslCipherList();
  if (!SSL_CTX_set_cipher_list(c, list.empty() ? kDefaultTls12 : list.c_str())) {
    return "OpenSSL refused --tls-ciphersuites: " + opensslErrors();
  }
  std::string suites13 = policy.openSslCipherSuites();
  if (!suites13.empty() && !SSL_CTX_set_ciphersuites(c, suites13.c_str())) {
    return "OpenSSL refused the TLS 1.3 suites of --tls-ciphersuites: " + opensslErrors();
  }
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
  return "";
}

TlsStream::TlsStream(kj::UnixEventPort& port, kj::AutoCloseFd tcp, SslPtr ssl, std::string peer)
    : port_(port),
      tcp_(kj::mv(tcp)),
      ssl_(std::move(ssl)),
      peer_(std::move(peer)),
      tcpObserver_(port, tcp_.get(),
                   kj::UnixEventPort::FdObserver::OBSERVE_READ |
                       kj::UnixEventPort::FdObserver::OBSERVE_WRITE) {
  KJ_REQUIRE(ssl_ != nullptr && SSL_set_fd(ssl_.get(), tcp_.get()) == 1,
             "cannot bind the TLS session to its socket");
}

TlsStream::~TlsStream() noexcept(false) {
  // SSL_free of a connection we did not close with close_notify marks its session "bad" (not
  // resumable, as RFC 2246 asked): a peer that reset or vanished (a killed principal) would cost
  // the agent's next connection a full handshake. Fatal alerts, sent or received, invalidated the
  // session already when they happened; a lost transport is no reason to.
  if (ssl_) SSL_set_shutdown(ssl_.get(), SSL_get_shutdown(ssl_.get()) | SSL_SENT_SHUTDOWN);
}

kj::Promise<void> TlsStream::handshake(Explain explain) {
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_.get());
  if (r == 1) return kj::READY_NOW;
  switch (SSL_get_error(ssl_.get(), r)) {
    case SSL_ERROR_WANT_READ:
      return tcpObserver_.whenBecomesReadable().then(
          [this, explain]() { return handshake(explain); });
    case SSL_ERROR_WANT_WRITE:
      return tcpObserver_.whenBecomesWritable().then(
          [this, explain]() { return handshake(explain); });
    case SSL_ERROR_SYSCALL:
      if (ERR_peek_error() == 0) {
        return failure(explain(kEofInHandshake));
      }
      [[fallthrough]];
    default: {
      std::string reason = opensslErrors();
      long verify = SSL_get_verify_result(ssl_.get());
      if (verify != X509_V_OK) {
        reason += std::string(": ") + X509_verify_cert_error_string(verify);
      }
      return failure(explain(reason));
    }
  }
}

bool TlsStream::helloReceived() const { return SSL_get_state(ssl_.get()) != TLS_ST_BEFORE; }

SessionInfo TlsStream::sessionInfo() const {
  SessionInfo info;
  SSL* s = ssl_.get();
  info.version = SSL_get_version(s);
  info.cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(s));
  info.resumed = SSL_session_reused(s) == 1;
  const unsigned char* alpn = nullptr;
  unsigned alpnLen = 0;
  SSL_get0_alpn_selected(s, &alpn, &alpnLen);
  if (alpn != nullptr) info.alpn.assign(reinterpret_cast<const char*>(alpn), alpnLen);
  X509* cert = SSL_get0_peer_certificate(s);
  if (cert == nullptr) return info;
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    if (PEM_write_bio_X509(bio, cert) == 1) {
      char* data = nullptr;
      long n = BIO_get_mem_data(bio, &data);
      info.certificatePem.assign(data, static_cast<size_t>(n));
    }
    BIO_free(bio);
  }
  X509_NAME* subject = X509_get_subject_name(cert);
  int first = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (first >= 0 && X509_NAME_get_index_by_NID(subject, NID_commonName, first) < 0) {
    ASN1_STRING* cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, first));
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, cn);
    if (n > 0) info.commonName.assign(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
    OPENSSL_free(utf8);
  }
  return info;
}

kj::Promise<void> TlsStream::relay(kj::AutoCloseFd local, Scratch& scratch, RelayGuard* guard) {
  local_ = kj::mv(local);
  scratch_ = &scratch;
  guard_ = guard;
  localObserver_ = kj::heap<kj::UnixEventPort::FdObserver>(
      port_, local_.get(),
      kj::UnixEventPort::FdObserver::OBSERVE_READ | kj::UnixEventPort::FdObserver::OBSERVE_WRITE);
  return pump();
}

// Moves as much as possible in both directions without blocking, then waits for whatever blocked
// it (edge-triggered: a side is awaited only after it said EAGAIN). Resolves when it is over.
kj::Promise<void> TlsStream::pump() {
  char* buf = scratch_->data;
  constexpr size_t kBuf = Scratch::kSize;
  for (int pass = 0;; ++pass) {
    if (pass == kPassesPerTurn) return kj::evalLater([this]() { return pump(); });
    bool progress = false;
    tlsReadWait_ = tlsWriteWait_ = Wait::kNone;
    localReadBlocked_ = localWriteBlocked_ = false;
    // TLS -> grpc.
    if (!toLocal_.empty()) {
      if (!sendLocal(toLocal_.data(), toLocal_.size(), progress)) return kj::READY_NOW;
    }
    while (toLocal_.empty() && !tlsEof_ && !localWriteBlocked_ && !held_ && !closing_) {
      ERR_clear_error();
      int n = SSL_read(ssl_.get(), buf, static_cast<int>(kBuf));
      if (n > 0) {
        progress = true;
        if (guard_) {
          auto v = guard_->fromPeer(buf, static_cast<size_t>(n));
          if (v == RelayGuard::Verdict::kClose) {
            closing_ = true;
            break;
          }
          held_ = v == RelayGuard::Verdict::kHold;
        }
        if (!sendLocal(buf, static_cast<size_t>(n), progress)) return kj::READY_NOW;
        continue;
      }
      int err = SSL_get_error(ssl_.get(), n);
      if (err == SSL_ERROR_WANT_READ) {
        tlsReadWait_ = Wait::kRead;
      } else if (err == SSL_ERROR_WANT_WRITE) {
        tlsReadWait_ = Wait::kWrite;
      } else if (err == SSL_ERROR_ZERO_RETURN) {
        tlsEof_ = true;  // the peer closed: let grpc see end of stream
        shutdown(local_.get(), SHUT_WR);
        progress = true;
      } else {
        spdlog::debug("TLS connection with {}: read failed: {}", peer_,
                      ERR_peek_error() ? opensslErrors() : "connection reset");
        return kj::READY_NOW;
      }
      break;
    }
    // grpc -> TLS.
    if (!toTls_.empty()) {
      if (!writeTls(toTls_.data(), toTls_.size(), progress)) return kj::READY_NOW;
    }
    while (toTls_.empty() && !localEof_ && tlsWriteWait_ == Wait::kNone &&
           !(closing_ && guard_->toPeerAtBoundary())) {
      ssize_t n = recv(local_.get(), buf, kBuf, MSG_DONTWAIT);
      if (n > 0) {
        progress = true;
        size_t k = guard_ ? guard_->toPeer(buf, static_cast<size_t>(n)) : static_cast<size_t>(n);
        if (k > 0 && !writeTls(buf, k, progress)) return kj::READY_NOW;
        continue;
      }
      if (n == 0) {
        // grpc closed the connection: say so to the peer and finish.
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
    if (closing_ && (gaveUp_ || (toTls_.empty() && tlsWriteWait_ == Wait::kNone &&
                                 guard_->toPeerAtBoundary()))) {
      // The guard ended the connection: its farewell (at a boundary of grpc's output), then
      // close_notify; localClosed() says so, for the caller's linger.
      if (!farewellSent_ && !gaveUp_) {
        farewellSent_ = true;
        std::string f = guard_->farewell();
        if (!f.empty() && !writeTls(f.data(), f.size(), progress)) return kj::READY_NOW;
        continue;  // written, or waiting in toTls_
      }
      localEof_ = true;
      SSL_shutdown(ssl_.get());
      return kj::READY_NOW;
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
  if (held_ && !closing_) add(guard_->resumed().then([this]() { held_ = false; }));
  if (closing_ && !gaveUp_) add(guard_->closeDeadline().then([this]() { gaveUp_ = true; }));
  KJ_IF_MAYBE (w, waits) {
    return w->then([this]() { return pump(); });
  }
  return kj::READY_NOW;  // nothing to wait for: both directions are finished
}

// Writes to grpc's side; keeps what does not fit. False when grpc's side is gone.
kj::Promise<void> TlsStream::linger(size_t budget) {
  if (!lingering_) {
    lingering_ = true;
    ::shutdown(tcp_.get(), SHUT_WR);  // after close_notify: the peer reads to the end, then FIN
  }
  char buf[4096];
  for (;;) {
    ssize_t n = recv(tcp_.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return kj::READY_NOW;  // the peer closed too
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return kj::READY_NOW;
    }
    if (static_cast<size_t>(n) >= budget) return kj::READY_NOW;
    budget -= static_cast<size_t>(n);
  }
  return tcpObserver_.whenBecomesReadable().then([this, budget]() { return linger(budget); });
}

bool TlsStream::sendLocal(const char* data, size_t size, bool& progress) {
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

// SSL_write what OpenSSL takes; keeps the rest for a retry (which OpenSSL requires to start with
// the same bytes). False on a TLS error.
bool TlsStream::writeTls(const char* data, size_t size, bool& progress) {
  size_t done = 0;
  while (done < size) {
    ERR_clear_error();
    int n = SSL_write(ssl_.get(), data + done,
                      static_cast<int>(std::min<size_t>(size - done, Scratch::kSize)));
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
      spdlog::debug("TLS connection with {}: write failed: {}", peer_,
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

}  // namespace aa::tls
