// gzip (RFC 1952, one member): grpc's "gzip" message encoding, used where grpc does not compress
// for us (the WebSocket bridges' frames). zlib streams are kept per thread and reset between
// messages: a fresh deflate stream costs ~0.5 ms, a reset one nothing measurable.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace aa::gzip {

// Z_DEFAULT_COMPRESSION (6), as grpc's own gzip.
std::string compress(std::string_view in);

// The decompressed bytes, or nullopt with `error` set: not gzip, truncated, trailing data, or
// more than `limit` bytes of output (a decompression bomb stops there, having used at most that).
std::optional<std::string> decompress(std::string_view in, size_t limit, std::string& error);

}  // namespace aa::gzip
