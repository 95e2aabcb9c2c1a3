// The edge's limits on one connection's bytes (http2_guard.h).
#include "workers/listener/http2_guard.h"

#include <algorithm>
#include <cstring>

namespace aa {

namespace {

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kPrefaceSize = sizeof kPreface - 1;
constexpr uint8_t kData = 0x0, kHeaders = 0x1, kRstStream = 0x3, kGoaway = 0x7, kContinuation = 0x9;
constexpr uint8_t kEndHeaders = 0x4;
constexpr uint32_t kEnhanceYourCalm = 0xb;

}  // namespace

const char* describe(Http2Guard::Abuse a) {
  switch (a) {
    case Http2Guard::Abuse::kNone:
      return "none";
    case Http2Guard::Abuse::kHeaderBlock:
      return "header block too large";
    case Http2Guard::Abuse::kResets:
      return "too many streams reset";
  }
  return "?";
}

Http2Guard::Verdict Http2Guard::inbound(const uint8_t* p, size_t n, bool authenticated,
                                        Clock::time_point now) {
  if (abuse_ != Abuse::kNone) return Verdict::kClose;
  size_t i = 0;
  if (mode_ == Mode::kPreface) {
    // HTTP/2 begins with the client preface; anything else (HTTP/1.1 for gRPC-over-WebSocket)
    // is counted as bytes only.
    size_t take = std::min(n, kPrefaceSize - prefaceSeen_);
    if (memcmp(p, kPreface + prefaceSeen_, take) != 0) {
      mode_ = Mode::kOther;
    } else {
      prefaceSeen_ += take;
      i = take;
      if (prefaceSeen_ == kPrefaceSize) {
        mode_ = Mode::kHttp2;
        http2_ = true;
      }
    }
  }
  uint64_t data = 0;  // HTTP/2: the message bytes (DATA payloads) announced in this chunk
  if (mode_ == Mode::kHttp2 && i < n) {
    in_.advance(p + i, n - i, [&](const FrameCursor::Header& h) {
      if (h.type == kData) data += h.length;
      return onClientFrame(h, now);
    });
    if (abuse_ != Abuse::kNone) return Verdict::kClose;
  }
  holding_ = false;
  if (!authenticated && limits_.unauthenticatedBytes > 0) {
    // Header blocks have a limit of their own (so that one over it is seen and answered, not
    // held); any other protocol counts every byte.
    unauthenticated_ += mode_ == Mode::kHttp2 ? data : mode_ == Mode::kOther ? n : 0;
    holding_ = unauthenticated_ >= limits_.unauthenticatedBytes;
  }
  return holding_ ? Verdict::kHold : Verdict::kPass;
}

bool Http2Guard::onClientFrame(const FrameCursor::Header& h, Clock::time_point now) {
  if (h.type == kHeaders) {
    headerBlock_ = h.length;
    lastStream_ = std::max(lastStream_, h.stream);
  } else if (h.type == kContinuation) {
    headerBlock_ += h.length;
  }
  if (h.type == kHeaders || h.type == kContinuation) {
    if (limits_.maxHeaderBlock > 0 && headerBlock_ > limits_.maxHeaderBlock) {
      abuse_ = Abuse::kHeaderBlock;
      return false;
    }
    if (h.flags & kEndHeaders) headerBlock_ = 0;
  } else if (h.type == kRstStream && limits_.resetBurst > 0) {
    ++resets_;
    double elapsed = std::chrono::duration<double>(now - at_).count();
    at_ = now;
    tokens_ = std::min(limits_.resetBurst, tokens_ + std::max(0.0, elapsed) * limits_.resetRate);
    if (tokens_ < 1) {
      abuse_ = Abuse::kResets;
      return false;
    }
    tokens_ -= 1;
  }
  return true;
}

size_t Http2Guard::outbound(const uint8_t* p, size_t n) {
  // Tracked from the first byte: grpc writes its SETTINGS before the client's preface is in.
  auto any = [](const FrameCursor::Header&) { return true; };
  if (abuse_ == Abuse::kNone) {
    out_.advance(p, n, any);
    return n;
  }
  return out_.advance(p, n, any, true);
}

std::string Http2Guard::why() const {
  switch (abuse_) {
    case Abuse::kHeaderBlock:
      return "header block of more than " + std::to_string(limits_.maxHeaderBlock) +
             " bytes (--max-header-block-bytes)";
    case Abuse::kResets:
      return std::to_string(resets_) + " streams reset, faster than --stream-reset-rate " +
             std::to_string(static_cast<uint64_t>(limits_.resetRate)) + "/s after a burst of " +
             std::to_string(static_cast<uint64_t>(limits_.resetBurst));
    case Abuse::kNone:
      break;
  }
  return "";
}

std::string Http2Guard::goaway() const {
  if (!http2_) return "";
  std::string debug = why();
  std::string f(9 + 8, '\0');
  uint32_t len = static_cast<uint32_t>(8 + debug.size());
  f[0] = static_cast<char>(len >> 16);
  f[1] = static_cast<char>(len >> 8);
  f[2] = static_cast<char>(len);
  f[3] = static_cast<char>(kGoaway);
  // flags 0, stream 0
  for (int k = 0; k < 4; ++k) {
    f[9 + k] = static_cast<char>(lastStream_ >> (24 - 8 * k));
    f[13 + k] = static_cast<char>(kEnhanceYourCalm >> (24 - 8 * k));
  }
  return f + debug;
}

}  // namespace aa
