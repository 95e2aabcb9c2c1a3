// The front door's Http2Guard on its own (docs/benchmarks.md, "Edge limits"): CPU per relayed
// chunk for the shapes the relay sees, next to a memcpy of the same bytes (the least any relay
// does with them). Prints key=value lines.
//
//   build/guard_bench [MiB]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "workers/listener/http2_guard.h"

namespace {

std::string frame(uint8_t type, uint8_t flags, uint32_t stream, size_t size) {
  std::string f(9, '\0');
  f[0] = static_cast<char>(size >> 16);
  f[1] = static_cast<char>(size >> 8);
  f[2] = static_cast<char>(size);
  f[3] = static_cast<char>(type);
  f[4] = static_cast<char>(flags);
  f[8] = static_cast<char>(stream);
  return f + std::string(size, 'x');
}

// A stream of frames cut into 32 KiB chunks, as SSL_read hands them to the relay: 256 KiB of
// them, fed again and again (the relay's chunk is in cache: SSL_read has just written it).
std::vector<std::string> chunks(const std::string& unit) {
  std::string all;
  while (all.size() < 256 * 1024 || all.size() % unit.size() != 0) all += unit;
  std::vector<std::string> out;
  for (size_t i = 0; i < all.size(); i += 32 * 1024) out.push_back(all.substr(i, 32 * 1024));
  return out;
}

template <typename F>
double nsPerByte(const std::vector<std::string>& cs, size_t total, F&& f) {
  size_t bytes = 0;
  auto t0 = std::chrono::steady_clock::now();
  while (bytes < total) {
    for (const auto& c : cs) {
      f(c);
      bytes += c.size();
    }
  }
  auto ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  return ns / static_cast<double>(bytes);
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = argc > 1 ? static_cast<size_t>(atoi(argv[1])) : 512;
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  struct Shape {
    const char* name;
    std::string unit;
  } shapes[] = {
      {"data16k", frame(0, 0, 1, 16384)},                     // bulk events
      {"event1k", frame(0, 0, 1, 1029) + frame(8, 0, 0, 4)},  // 1 KiB event + WINDOW_UPDATE
      {"ack60", frame(0, 0, 1, 65)},                          // ACKs and heartbeats
  };
  static char sink[32 * 1024];
  for (const auto& s : shapes) {
    auto cs = chunks(s.unit);
    size_t total = mib << 20;
    auto now = aa::Http2Guard::Clock::now();
    aa::Http2Guard in(aa::GuardLimits{}, now);
    in.inbound(reinterpret_cast<const uint8_t*>(preface.data()), preface.size(), true, now);
    double inbound = nsPerByte(cs, total, [&](const std::string& c) {
      in.inbound(reinterpret_cast<const uint8_t*>(c.data()), c.size(), true, now);
    });
    aa::Http2Guard out(aa::GuardLimits{}, now);
    double outbound = nsPerByte(cs, total, [&](const std::string& c) {
      out.outbound(reinterpret_cast<const uint8_t*>(c.data()), c.size());
    });
    double copy = nsPerByte(cs, total, [&](const std::string& c) {
      memcpy(sink, c.data(), c.size());
      asm volatile("" : : "r"(sink) : "memory");
    });
    printf(
        "shape=%s frame_bytes=%zu inbound_ns_per_kib=%.1f outbound_ns_per_kib=%.1f "
        "memcpy_ns_per_kib=%.1f\n",
        s.name, s.unit.size(), inbound * 1024, outbound * 1024, copy * 1024);
  }
  return 0;
}
