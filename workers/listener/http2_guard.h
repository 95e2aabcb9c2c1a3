// The edge's view of one TLS connection's bytes on their way between the agent and grpc (issue
// "overload and abuse resistance"): the limits grpc++ 1.51 does not hold by itself, applied in
// the front door's relay before grpc spends memory or CPU on them. Pure: time is a parameter and
// nothing here does I/O, so every rule is table-tested (http2_guard_test.cc).
//
//   - bytes before authentication: a connection that has opened no authenticated event stream
//     yet may send `unauthenticatedBytes` of messages (HTTP/2 DATA payloads; every byte of any
//     other protocol, gRPC-over-WebSocket); then it is read no further (hold) until it has one,
//     or --unauthenticated-timeout closes it. grpc buffers whole messages up to
//     --grpc-max-message-size for every method, so without this five unauthenticated 190 MiB
//     Authenticate streams grew a listener by a gigabyte. Header blocks are bounded by the next
//     rule (times --max-concurrent-streams).
//   - HTTP/2 only (the connection began with the client preface): a header block (HEADERS plus
//     CONTINUATION, as sent: HPACK-compressed) over `maxHeaderBlock` bytes ends the connection
//     before grpc sees the rest of it; grpc 1.51 accepted ~655 KB of headers although it
//     advertises a 64 KiB SETTINGS_MAX_HEADER_LIST_SIZE. The header block cannot be dropped
//     alone (HPACK state is per connection), so this is a connection error.
//   - rapid reset (CVE-2023-44487, not fixed in Debian's grpc 1.51.1): streams the client resets
//     (RST_STREAM) take a token from a bucket of `resetBurst`, refilled at `resetRate` per
//     second; with none left the connection ends.
//
// Ending a connection: nothing more of the client's is forwarded; grpc's output goes on to the end
// of the frame it is in, then GOAWAY(ENHANCE_YOUR_CALM) with the reason as debug data, then
// close_notify.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace aa {

struct GuardLimits {
  size_t unauthenticatedBytes = 64 * 1024;  // 0: no limit
  size_t maxHeaderBlock = 64 * 1024;        // 0: no limit
  double resetBurst = 100;                  // 0: no limit
  double resetRate = 10;                    // per second
};

// Where an HTTP/2 frame sequence is: frame headers (9 bytes) are parsed as they go by, payloads
// skipped. Either direction.
class FrameCursor {
 public:
  struct Header {
    uint32_t length;
    uint8_t type, flags;
    uint32_t stream;
  };
  // Consumes up to `n` bytes; calls `onHeader(const Header&)` for each complete frame header
  // (before its payload). `onHeader` returns false to stop right after that header (the bytes
  // consumed so far are returned). With `toBoundary`, stops at the first frame boundary instead.
  template <typename F>
  size_t advance(const uint8_t* p, size_t n, F&& onHeader, bool toBoundary = false);
  bool atBoundary() const { return have_ == 0 && left_ == 0; }

 private:
  static Header parse(const uint8_t* h);
  std::array<uint8_t, 9> head_{};
  size_t have_ = 0;    // bytes of the current frame header seen
  uint64_t left_ = 0;  // payload bytes of the current frame still to come
};

class Http2Guard {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Verdict {
    kPass,  // forward the chunk
    kHold,  // forward it, then read no more from the client until authenticated
    kClose  // forward none of it: end the connection (why() says why)
  };
  enum class Abuse { kNone, kHeaderBlock, kResets };

  Http2Guard(GuardLimits limits, Clock::time_point now)
      : limits_(limits), tokens_(limits.resetBurst), at_(now) {}

  // Client -> server bytes, as read. `authenticated`: the connection has an authenticated event
  // stream now.
  Verdict inbound(const uint8_t* p, size_t n, bool authenticated, Clock::time_point now);
  // Server -> client bytes, as read from grpc: how many of them may still go. All of them until
  // the connection is ending; then those that finish the frame in progress (0 once at a frame
  // boundary, which is where the GOAWAY goes).
  size_t outbound(const uint8_t* p, size_t n);
  // Whether grpc's output is at a frame boundary (nothing of a frame half sent).
  bool outboundAtBoundary() const { return out_.atBoundary(); }

  bool http2() const { return http2_; }
  bool holding() const { return holding_; }
  Abuse abuse() const { return abuse_; }
  std::string why() const;
  // The frame to send before closing: GOAWAY(last stream, ENHANCE_YOUR_CALM, why()); "" when the
  // connection is not HTTP/2.
  std::string goaway() const;

 private:
  bool onClientFrame(const FrameCursor::Header& h, Clock::time_point now);

  GuardLimits limits_;
  enum class Mode { kPreface, kHttp2, kOther } mode_ = Mode::kPreface;
  bool http2_ = false;
  size_t prefaceSeen_ = 0;
  FrameCursor in_, out_;
  uint64_t unauthenticated_ = 0;  // bytes received while not authenticated
  bool holding_ = false;
  uint64_t headerBlock_ = 0;  // of the header block in progress
  uint32_t lastStream_ = 0;
  double tokens_;
  Clock::time_point at_;
  uint64_t resets_ = 0;
  Abuse abuse_ = Abuse::kNone;
};

const char* describe(Http2Guard::Abuse a);

// ---------------------------------------------------------------- implementation

inline FrameCursor::Header FrameCursor::parse(const uint8_t* h) {
  return Header{static_cast<uint32_t>(h[0]) << 16 | static_cast<uint32_t>(h[1]) << 8 | h[2], h[3],
                h[4],
                (static_cast<uint32_t>(h[5]) << 24 | static_cast<uint32_t>(h[6]) << 16 |
                 static_cast<uint32_t>(h[7]) << 8 | h[8]) &
                    0x7fffffffu};
}

template <typename F>
size_t FrameCursor::advance(const uint8_t* p, size_t n, F&& onHeader, bool toBoundary) {
  size_t i = 0;
  while (i < n) {
    if (toBoundary && atBoundary()) return i;
    if (left_ > 0) {
      size_t take = left_ < n - i ? static_cast<size_t>(left_) : n - i;
      left_ -= take;
      i += take;
      continue;
    }
    Header h;
    if (have_ == 0 && n - i >= head_.size()) {  // the usual case: read in place
      h = parse(p + i);
      i += head_.size();
    } else {  // a header cut by the chunk's end
      head_[have_++] = p[i++];
      if (have_ < head_.size()) continue;
      have_ = 0;
      h = parse(head_.data());
    }
    left_ = h.length;
    if (!onHeader(h)) return i;
  }
  return i;
}

}  // namespace aa
