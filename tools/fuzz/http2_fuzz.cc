// libFuzzer target: the front door's Http2Guard (workers/listener/http2_guard.h) on what a TLS
// client sends, exactly as the relay feeds it. Built with -DFUZZ=ON (clang); run by tools/test.sh.
//
// Input: byte 0 picks the limits (small ones, so that every rule is reached), byte 1 the chunk
// size; the rest is the client's byte stream, cut into chunks of that size, each also passed
// through outbound() as if grpc had written it. Checked: a verdict of kClose is final and comes
// with a reason and (HTTP/2) a well-formed GOAWAY; outbound() never passes more than it was given
// and, once the connection is ending, stops at a frame boundary and stays there.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "workers/listener/http2_guard.h"

namespace {

void check(bool ok) {
  if (!ok) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  aa::GuardLimits limits;
  limits.unauthenticatedBytes = (data[0] & 1) ? 0 : 512;
  limits.maxHeaderBlock = (data[0] & 2) ? 0 : 100;
  limits.resetBurst = (data[0] & 4) ? 0 : 3;
  limits.resetRate = 1;
  bool authenticated = data[0] & 8;
  size_t chunk = 1 + data[1] % 64;
  auto t = aa::Http2Guard::Clock::now();
  aa::Http2Guard g(limits, t);
  bool closed = false;
  for (size_t i = 2; i < size; i += chunk) {
    size_t n = std::min(chunk, size - i);
    auto v = g.inbound(data + i, n, authenticated, t);
    if (closed) check(v == aa::Http2Guard::Verdict::kClose);
    if (v == aa::Http2Guard::Verdict::kClose) {
      closed = true;
      check(g.abuse() != aa::Http2Guard::Abuse::kNone && !g.why().empty());
      std::string f = g.goaway();
      if (g.http2()) {
        check(f.size() >= 17 && static_cast<uint8_t>(f[3]) == 0x7);
        size_t len = static_cast<size_t>(static_cast<uint8_t>(f[0])) << 16 |
                     static_cast<size_t>(static_cast<uint8_t>(f[1])) << 8 |
                     static_cast<uint8_t>(f[2]);
        check(len == f.size() - 9);
      } else {
        check(f.empty());
      }
    }
    size_t out = g.outbound(data + i, n);
    check(out <= n);
    if (closed && out < n) check(g.outboundAtBoundary());
    t += std::chrono::milliseconds(data[i] % 8);
  }
  return 0;
}
