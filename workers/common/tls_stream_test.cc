// TlsStream (client side) against a blocking OpenSSL server on loopback: a session ticket
// received on a connection that the server then resets stays resumable, so the agent's next
// connection to a restarted principal costs no full handshake.
#include "workers/common/tls_stream.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

#include "ipc/crypto/pki.h"

namespace aa::tls {
namespace {

using CtxPtr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;
using SessionPtr = std::unique_ptr<SSL_SESSION, decltype(&SSL_SESSION_free)>;

SessionPtr gSession(nullptr, SSL_SESSION_free);

int keepSession(SSL*, SSL_SESSION* session) {
  gSession.reset(session);
  return 1;  // ours now
}

CtxPtr serverContext() {
  auto cert = pki::generateSelfSigned("tls-stream-test", {}, {"127.0.0.1"}, std::chrono::hours(1));
  CtxPtr ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  BIO* certBio = BIO_new_mem_buf(cert.certPem.data(), static_cast<int>(cert.certPem.size()));
  BIO* keyBio = BIO_new_mem_buf(cert.keyPem.data(), static_cast<int>(cert.keyPem.size()));
  X509* x = PEM_read_bio_X509(certBio, nullptr, nullptr, nullptr);
  EVP_PKEY* k = PEM_read_bio_PrivateKey(keyBio, nullptr, nullptr, nullptr);
  EXPECT_EQ(SSL_CTX_use_certificate(ctx.get(), x), 1);
  EXPECT_EQ(SSL_CTX_use_PrivateKey(ctx.get(), k), 1);
  X509_free(x);
  EVP_PKEY_free(k);
  BIO_free(certBio);
  BIO_free(keyBio);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_num_tickets(ctx.get(), 1);
  return ctx;
}

CtxPtr clientContext() {
  CtxPtr ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  // As the agent's connector: the newest ticket kept by us, not in OpenSSL's cache.
  SSL_CTX_set_session_cache_mode(ctx.get(),
                                 SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx.get(), keepSession);
  return ctx;
}

TEST(TlsStream, TicketStaysResumableWhenTheServerResetsTheConnection) {
  auto server = serverContext();
  auto client = clientContext();
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(lfd, 1), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  // The server: handshake (its ticket follows), a greeting, then a reset (SO_LINGER 0) when told:
  // what a killed principal's kernel does with unread input in the socket.
  std::promise<void> reset;
  auto resetNow = reset.get_future();
  std::thread serverThread([&]() {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(fd, 0);
    SSL* s = SSL_new(server.get());
    SSL_set_fd(s, fd);
    EXPECT_EQ(SSL_accept(s), 1);
    EXPECT_EQ(SSL_write(s, "hello", 5), 5);
    resetNow.wait();
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
    SSL_free(s);
  });

  auto io = kj::setupAsyncIo();
  int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(connect(cfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(fcntl(cfd, F_SETFL, O_NONBLOCK), 0);
  SslPtr ssl(SSL_new(client.get()));
  SSL_set_connect_state(ssl.get());
  auto stream = std::make_unique<TlsStream>(io.unixEventPort, kj::AutoCloseFd(cfd), std::move(ssl),
                                            "test server");
  stream->handshake().wait(io.waitScope);
  EXPECT_FALSE(stream->sessionInfo().resumed);

  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  Scratch scratch;
  auto relay = stream->relay(kj::AutoCloseFd(pair[0]), scratch).eagerlyEvaluate(nullptr);
  auto local =
      io.lowLevelProvider->wrapSocketFd(pair[1], kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
  char greeting[5];
  ASSERT_EQ(local->tryRead(greeting, 5, 5).wait(io.waitScope), 5u);
  // The greeting came after the ticket: it is here, and resumable.
  ASSERT_NE(gSession, nullptr);
  EXPECT_EQ(SSL_SESSION_is_resumable(gSession.get()), 1);

  reset.set_value();
  relay.wait(io.waitScope);  // ends on the reset
  stream = nullptr;          // SSL_free without a close_notify of ours
  serverThread.join();
  close(lfd);
  EXPECT_EQ(SSL_SESSION_is_resumable(gSession.get()), 1)
      << "the reset made the ticket unusable: the next connection pays a full handshake";
  gSession.reset();
}

}  // namespace
}  // namespace aa::tls
