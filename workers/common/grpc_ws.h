// The grpc-ws framing of stackrox go-grpc-http1, which upstream argocd-agent uses for
// --enable-websocket (its client and server packages): one WebSocket per RPC, the
// gRPC request headers in the upgrade request, and every binary WebSocket message carrying exactly
// one gRPC-style frame - a flag byte (0x01 compressed, 0x80 metadata), a 4-byte big-endian length
// and the payload. Metadata frames hold an HTTP/1-style header block ("Key: Value\r\n" lines); the
// client's end of stream is the empty metadata frame 80 00 00 00 00. Pure: no sockets, no
// WebSocket (libwebsockets does those), shared by the principal's edge and the agent.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace aa::grpcws {

inline constexpr std::string_view kSubprotocol = "grpc-ws";
// go-grpc-http1's read limit on both ends: a message (frame included) above it closes the
// WebSocket with 1009.
inline constexpr size_t kMaxMessage = size_t{64} << 20;
inline constexpr size_t kPrefix = 5;
inline constexpr uint8_t kCompressed = 0x01;
inline constexpr uint8_t kMetadata = 0x80;

struct Frame {
  uint8_t flags = 0;
  std::string_view payload;
  bool metadata() const { return (flags & kMetadata) != 0; }
  bool compressed() const { return (flags & kCompressed) != 0; }
  // The client's half-close.
  bool endOfStream() const { return metadata() && payload.empty(); }
};

// Reads one WebSocket message as a frame. Returns "" or what is wrong with it ("message of 7
// bytes declares a 9-byte payload", ...). A compressed metadata frame is an error.
std::string parse(std::string_view message, Frame& out);

// Appends a frame to `out`.
void appendFrame(std::string& out, uint8_t flags, std::string_view payload);

using Headers = std::vector<std::pair<std::string, std::string>>;

// Go's canonical header key ("grpc-status" -> "Grpc-Status"), as go-grpc-http1 writes them.
std::string canonicalKey(std::string_view key);

// "Key: Value\r\n" per header, keys canonical. Values of "-bin" keys are base64 (unpadded), as in
// HTTP/2 gRPC; other values are written as they are (the caller passes what gRPC allows).
std::string headerBlock(const Headers& headers);

// The inverse, keys lower-cased and "-bin" values decoded. Returns "" or what is wrong.
std::string parseHeaderBlock(std::string_view block, Headers& out);

// grpc-message's percent-encoding (gRPC over HTTP/2: bytes outside 0x20..0x7e and '%').
std::string percentEncode(std::string_view text);
std::string percentDecode(std::string_view text);

// A grpc-timeout value ("10S", "250m", "3000000u"): at most 8 digits and one unit of H M S m u n.
std::optional<std::chrono::nanoseconds> parseTimeout(std::string_view value);

}  // namespace aa::grpcws
