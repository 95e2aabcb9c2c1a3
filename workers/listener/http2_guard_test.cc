// Http2Guard: the relay's limits on bytes before authentication, header blocks and stream resets,
// with injected time and byte streams cut at every position.
#include "workers/listener/http2_guard.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace aa {
namespace {

using namespace std::chrono_literals;
using Clock = Http2Guard::Clock;
using V = Http2Guard::Verdict;

const std::string kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

std::string frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
  std::string f(9, '\0');
  f[0] = static_cast<char>(payload.size() >> 16);
  f[1] = static_cast<char>(payload.size() >> 8);
  f[2] = static_cast<char>(payload.size());
  f[3] = static_cast<char>(type);
  f[4] = static_cast<char>(flags);
  for (int k = 0; k < 4; ++k) f[5 + k] = static_cast<char>(stream >> (24 - 8 * k));
  return f + payload;
}
std::string headers(uint32_t stream, size_t size, bool end = true) {
  return frame(0x1, end ? 0x4 : 0, stream, std::string(size, 'h'));
}
std::string continuation(uint32_t stream, size_t size, bool end) {
  return frame(0x9, end ? 0x4 : 0, stream, std::string(size, 'c'));
}
std::string data(uint32_t stream, size_t size) {
  return frame(0x0, 0, stream, std::string(size, 'd'));
}
std::string rst(uint32_t stream) { return frame(0x3, 0, stream, std::string(4, '\0')); }
std::string settings() { return frame(0x4, 0, 0, std::string(6, '\0')); }

V feed(Http2Guard& g, const std::string& bytes, bool authenticated, Clock::time_point now,
       size_t chunk = 0) {
  if (chunk == 0) chunk = bytes.size();
  V last = V::kPass;
  for (size_t i = 0; i < bytes.size(); i += chunk) {
    std::string part = bytes.substr(i, chunk);
    last =
        g.inbound(reinterpret_cast<const uint8_t*>(part.data()), part.size(), authenticated, now);
    if (last == V::kClose) return last;
  }
  return last;
}

GuardLimits limits(size_t unauthenticated, size_t headerBlock, double burst, double rate) {
  GuardLimits l;
  l.unauthenticatedBytes = unauthenticated;
  l.maxHeaderBlock = headerBlock;
  l.resetBurst = burst;
  l.resetRate = rate;
  return l;
}

TEST(Http2Guard, HoldsAnUnauthenticatedConnectionOverItsBudgetUntilAuthenticated) {
  auto t = Clock::now();
  Http2Guard g(limits(1000, 0, 0, 0), t);
  // Header blocks do not count (they have their own limit), message bytes do.
  EXPECT_EQ(feed(g, kPreface + settings() + headers(1, 5000), false, t), V::kPass);
  EXPECT_EQ(feed(g, data(1, 500), false, t), V::kPass);
  EXPECT_EQ(feed(g, data(1, 499), false, t), V::kPass);
  EXPECT_EQ(feed(g, data(1, 1), false, t), V::kHold);  // 1,000 message bytes in
  EXPECT_TRUE(g.holding());
  // Authenticated: no budget any more, whatever comes.
  EXPECT_EQ(feed(g, data(1, 100000), true, t), V::kPass);
  EXPECT_FALSE(g.holding());
  EXPECT_EQ(g.abuse(), Http2Guard::Abuse::kNone);
}

TEST(Http2Guard, TheBudgetCountsEveryProtocol) {
  auto t = Clock::now();
  Http2Guard g(limits(100, 64, 1, 1), t);
  std::string upgrade = "GET /grpc HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
  EXPECT_EQ(feed(g, upgrade, false, t), V::kPass);
  EXPECT_FALSE(g.http2());
  // Not HTTP/2: header and reset rules do not apply to its bytes, the budget does.
  EXPECT_EQ(feed(g, headers(1, 1000) + rst(1) + rst(3), false, t), V::kHold);
  EXPECT_EQ(g.goaway(), "");
  Http2Guard off(limits(0, 0, 0, 0), t);
  EXPECT_EQ(feed(off, std::string(1 << 20, 'x'), false, t), V::kPass);
}

TEST(Http2Guard, HeaderBlockOverTheLimitEndsTheConnectionWhereverTheBytesAreCut) {
  auto t = Clock::now();
  const std::string ok = kPreface + settings() + headers(1, 40, false) + continuation(1, 24, true);
  const std::string big = kPreface + settings() + headers(3, 40, false) +
                          continuation(3, 20, false) + continuation(3, 5, true) + data(3, 10);
  for (size_t chunk : {1, 2, 7, 9, 10, 1000}) {
    Http2Guard a(limits(0, 64, 0, 0), t);
    EXPECT_EQ(feed(a, ok + headers(5, 64), true, t, chunk), V::kPass) << chunk;  // 64 is fine
    Http2Guard b(limits(0, 64, 0, 0), t);
    EXPECT_EQ(feed(b, big, true, t, chunk), V::kClose) << chunk;  // 65 is not
    EXPECT_EQ(b.abuse(), Http2Guard::Abuse::kHeaderBlock);
    EXPECT_NE(b.why().find("--max-header-block-bytes"), std::string::npos);
    // Ended: nothing more passes.
    EXPECT_EQ(feed(b, settings(), true, t), V::kClose);
  }
  // Data frames and separate header blocks do not add up.
  Http2Guard c(limits(0, 64, 0, 0), t);
  EXPECT_EQ(feed(c, kPreface + headers(1, 60) + data(1, 1000) + headers(3, 60), true, t), V::kPass);
}

TEST(Http2Guard, ResetsBeyondTheBurstEndTheConnectionAndRefillWithTime) {
  auto t = Clock::now();
  Http2Guard g(limits(0, 0, 3, 2), t);
  std::string opened = kPreface + settings();
  for (uint32_t s = 1; s <= 5; s += 2) opened += headers(s, 10) + rst(s);
  EXPECT_EQ(feed(g, opened, true, t), V::kPass);  // 3 resets: the burst
  t += 1s;                                        // 2 tokens back
  EXPECT_EQ(feed(g, headers(7, 10) + rst(7) + headers(9, 10) + rst(9), true, t), V::kPass);
  EXPECT_EQ(feed(g, headers(11, 10) + rst(11), true, t), V::kClose);
  EXPECT_EQ(g.abuse(), Http2Guard::Abuse::kResets);
  EXPECT_NE(g.why().find("6 streams reset"), std::string::npos) << g.why();
  // GOAWAY: stream 0, last stream 11, ENHANCE_YOUR_CALM, the reason as debug data.
  std::string f = g.goaway();
  ASSERT_GE(f.size(), 17u);
  size_t len = static_cast<uint8_t>(f[0]) << 16 | static_cast<uint8_t>(f[1]) << 8 |
               static_cast<uint8_t>(f[2]);
  EXPECT_EQ(len, f.size() - 9);
  EXPECT_EQ(f[3], 0x7);
  EXPECT_EQ(f.substr(5, 4), std::string(4, '\0'));
  EXPECT_EQ(f.substr(9, 4), std::string("\0\0\0\x0b", 4));
  EXPECT_EQ(f.substr(13, 4), std::string("\0\0\0\x0b", 4));
  EXPECT_EQ(f.substr(17), g.why());
}

TEST(Http2Guard, AResetFloodIsCaughtInOneChunk) {
  auto t = Clock::now();
  Http2Guard g(limits(0, 0, 100, 10), t);
  std::string flood = kPreface + settings();
  for (uint32_t s = 1; s < 2 * 1000; s += 2) flood += headers(s, 8) + rst(s);
  EXPECT_EQ(feed(g, flood, true, t, 32 * 1024), V::kClose);
  EXPECT_EQ(g.abuse(), Http2Guard::Abuse::kResets);
}

TEST(Http2Guard, GrpcOutputFinishesItsFrameBeforeTheGoaway) {
  auto t = Clock::now();
  Http2Guard g(limits(0, 0, 1, 1), t);
  auto out = [&g](const std::string& s) {
    return g.outbound(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  std::string server = settings() + data(1, 100);
  EXPECT_EQ(out(server.substr(0, 20)), 20u);  // all of it while nothing is wrong
  EXPECT_FALSE(g.outboundAtBoundary());
  EXPECT_EQ(feed(g, kPreface + rst(1) + rst(3), true, t), V::kClose);
  // The rest of the data frame goes, the next frame does not.
  std::string rest = server.substr(20) + settings();
  EXPECT_EQ(out(rest), server.size() - 20);
  EXPECT_TRUE(g.outboundAtBoundary());
  EXPECT_EQ(out(settings()), 0u);
}

TEST(Http2Guard, APrefaceCutAnywhereIsRecognised) {
  auto t = Clock::now();
  for (size_t chunk = 1; chunk <= kPreface.size(); ++chunk) {
    Http2Guard g(limits(0, 10, 0, 0), t);
    EXPECT_EQ(feed(g, kPreface + headers(1, 11), true, t, chunk), V::kClose) << chunk;
    EXPECT_TRUE(g.http2());
  }
}

}  // namespace
}  // namespace aa
