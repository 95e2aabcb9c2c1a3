// The front door's TLS relay against a real OpenSSL client on loopback: bytes arrive intact and in
// order in both directions under back-pressure (the far side reads slowly), half-close reaches
// grpc's side, and the registry describes the connection grpc was handed.
#include "workers/listener/front_door.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "ipc/crypto/pki.h"

namespace aa {
namespace {

class FrontDoorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/aa-front-door-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto cert =
        pki::generateSelfSigned("front-door-test", {}, {"127.0.0.1"}, std::chrono::hours(1));
    pki::writeSecretFile(dir_ + "/tls.crt", cert.certPem);
    pki::writeSecretFile(dir_ + "/tls.key", cert.keyPem);
  }
  void TearDown() override {
    unlink((dir_ + "/tls.crt").c_str());
    unlink((dir_ + "/tls.key").c_str());
    rmdir(dir_.c_str());
  }

  // Starts a TLS front door on 127.0.0.1:<any>; handed-off descriptors are queued for the test.
  std::unique_ptr<FrontDoor> start(const PrincipalConfig& p) {
    FrontDoor::Options o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.tls = makeServerTlsContext(p, dir_ + "/tls.crt", dir_ + "/tls.key");
    o.registry = &registry_;
    o.guard = GuardLimits{0, 0, 0, 0};  // raw bytes, never authenticated: no edge limits
    o.handOff = [this](int fd) {
      std::lock_guard<std::mutex> lock(mu_);
      handed_.push_back(fd);
      cv_.notify_all();
    };
    auto door = std::make_unique<FrontDoor>(std::move(o));
    door->start();
    port_ = std::stoi(door->address().substr(door->address().rfind(':') + 1));
    return door;
  }

  int nextHandedOff() {
    std::unique_lock<std::mutex> lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(10), [this] { return !handed_.empty(); }));
    if (handed_.empty()) return -1;
    int fd = handed_.front();
    handed_.erase(handed_.begin());
    return fd;
  }

  int connectTcp() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  }

  std::string dir_;
  PeerRegistry registry_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> handed_;
  int port_ = 0;
};

std::string randomBytes(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen());
  return s;
}

// Blocking helpers on grpc's side of the socketpair.
void writeAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    pollfd p{fd, POLLOUT, 0};
    ASSERT_GT(poll(&p, 1, 10000), 0) << "grpc side: write stalled";
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    ASSERT_GT(n, 0);
    off += static_cast<size_t>(n);
  }
}

// Reads until EOF (or `limit` bytes), slowly when `slow` (so the relay must hold back).
std::string readUntilEof(int fd, size_t limit, bool slow) {
  std::string out;
  char buf[4096];
  while (out.size() < limit) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 10000) <= 0) break;  // stalled: the caller's comparison fails
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      break;
    }
    out.append(buf, static_cast<size_t>(n));
    if (slow && out.size() % (256 * 1024) < 4096) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  return out;
}

TEST_F(FrontDoorTest, RelaysBothWaysUnderBackPressureAndHalfCloses) {
  PrincipalConfig p;  // TLS 1.3 only, no client certificates
  auto door = start(p);

  int tcp = connectTcp();
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> cctx(SSL_CTX_new(TLS_client_method()),
                                                         SSL_CTX_free);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(cctx.get()), SSL_free);
  static const unsigned char kAlpn[] = {2, 'h', '2'};
  SSL_set_alpn_protos(ssl.get(), kAlpn, sizeof kAlpn);
  SSL_set_fd(ssl.get(), tcp);
  ASSERT_EQ(SSL_connect(ssl.get()), 1) << ERR_error_string(ERR_get_error(), nullptr);
  EXPECT_STREQ(SSL_get_version(ssl.get()), "TLSv1.3");

  int grpcSide = nextHandedOff();
  ASSERT_GE(grpcSide, 0);
  auto info = registry_.find("fd:" + std::to_string(grpcSide));
  ASSERT_TRUE(info);
  EXPECT_EQ(info->tlsVersion, "TLSv1.3");
  EXPECT_EQ(info->address.rfind("ipv4:127.0.0.1:", 0), 0u) << info->address;
  EXPECT_TRUE(info->certificatePem.empty());
  EXPECT_FALSE(registry_.find("fd:999999"));
  EXPECT_FALSE(registry_.find("ipv4:127.0.0.1:1"));

  // 8 MiB each way at once; both far ends read slowly, so both directions fill up.
  const std::string up = randomBytes(8 << 20, 1), down = randomBytes(8 << 20, 2);
  auto grpcReader =
      std::async(std::launch::async, [&] { return readUntilEof(grpcSide, up.size() + 1, true); });
  auto grpcWriter = std::async(std::launch::async, [&] { writeAll(grpcSide, down); });
  // The client alternates SSL_write and SSL_read on one non-blocking socket (an SSL object must
  // not be used from two threads at once).
  fcntl(tcp, F_SETFL, O_NONBLOCK);
  size_t sent = 0;
  std::string got;
  char buf[16384];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool shutSent = false;
  while ((got.size() < down.size() || !shutSent) && std::chrono::steady_clock::now() < deadline) {
    bool moved = false;
    if (sent < up.size()) {
      int n = SSL_write(ssl.get(), up.data() + sent,
                        static_cast<int>(std::min<size_t>(up.size() - sent, 16384)));
      if (n > 0) {
        sent += static_cast<size_t>(n);
        moved = true;
      }
    } else if (!shutSent) {
      shutSent = true;  // the agent is done sending: close_notify
      SSL_shutdown(ssl.get());
    }
    int n = SSL_read(ssl.get(), buf, sizeof buf);
    if (n > 0) {
      got.append(buf, static_cast<size_t>(n));
      moved = true;
    }
    if (!moved) {
      pollfd pf{tcp, static_cast<short>(POLLIN | (sent < up.size() ? POLLOUT : 0)), 0};
      poll(&pf, 1, 100);
    }
  }
  ASSERT_EQ(got.size(), down.size());
  EXPECT_TRUE(got == down) << "TLS -> client bytes differ";
  grpcWriter.get();
  // close_notify reached grpc's side as end of stream, after every byte.
  std::string received = grpcReader.get();
  ASSERT_EQ(received.size(), up.size());
  EXPECT_TRUE(received == up) << "client -> grpc bytes differ";

  // grpc closes: the relay ends, the client sees the connection close, the entry goes.
  close(grpcSide);
  fcntl(tcp, F_SETFL, 0);
  timeval tv{10, 0};
  setsockopt(tcp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int n = SSL_read(ssl.get(), buf, sizeof buf);
  EXPECT_LE(n, 0);
  EXPECT_NE(SSL_get_error(ssl.get(), n), SSL_ERROR_WANT_READ) << "connection not closed";
  for (int i = 0; i < 500 && registry_.find("fd:" + std::to_string(grpcSide)); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(registry_.find("fd:" + std::to_string(grpcSide)));
  close(tcp);
}

TEST_F(FrontDoorTest, RefusesOldTlsAndKeepsServing) {
  PrincipalConfig p;  // TLS 1.3 only
  auto door = start(p);
  for (int round = 0; round < 2; ++round) {
    int tcp = connectTcp();
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> cctx(SSL_CTX_new(TLS_client_method()),
                                                           SSL_CTX_free);
    SSL_CTX_set_max_proto_version(cctx.get(), round == 0 ? TLS1_2_VERSION : TLS1_3_VERSION);
    std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(cctx.get()), SSL_free);
    SSL_set_fd(ssl.get(), tcp);
    int r = SSL_connect(ssl.get());
    if (round == 0) {
      EXPECT_NE(r, 1) << "TLS 1.2 accepted by a TLS 1.3-only door";
    } else {
      EXPECT_EQ(r, 1) << "TLS 1.3 refused";
      int fd = nextHandedOff();
      EXPECT_GE(fd, 0);
      if (fd >= 0) close(fd);
    }
    ERR_clear_error();
    close(tcp);
  }
}

}  // namespace
}  // namespace aa
