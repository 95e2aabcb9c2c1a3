// grpc-ws framing (grpc_ws.h).
#include "workers/common/grpc_ws.h"

#include <algorithm>
#include <cctype>

#include "workers/common/jwt.h"

namespace aa::grpcws {

std::string parse(std::string_view message, Frame& out) {
  if (message.size() < kPrefix) {
    return "message of " + std::to_string(message.size()) +
           " bytes is shorter than the 5-byte frame prefix";
  }
  auto byte = [&message](size_t i) { return static_cast<uint32_t>(uint8_t(message[i])); };
  uint32_t declared = byte(1) << 24 | byte(2) << 16 | byte(3) << 8 | byte(4);
  if (declared != message.size() - kPrefix) {
    return "message of " + std::to_string(message.size()) + " bytes declares a " +
           std::to_string(declared) + "-byte payload (one frame per message)";
  }
  out.flags = uint8_t(message[0]);
  out.payload = message.substr(kPrefix);
  if (out.metadata() && out.compressed()) return "compressed metadata frame";
  if ((out.flags & ~(kMetadata | kCompressed)) != 0) {
    return "unknown frame flags 0x" + [&]() {
      static const char kHex[] = "0123456789abcdef";
      return std::string{kHex[out.flags >> 4], kHex[out.flags & 15]};
    }();
  }
  return "";
}

void appendFrame(std::string& out, uint8_t flags, std::string_view payload) {
  auto n = static_cast<uint32_t>(payload.size());
  out.push_back(static_cast<char>(flags));
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((n >> shift) & 0xff));
  out.append(payload);
}

std::string canonicalKey(std::string_view key) {
  std::string out(key);
  bool upper = true;
  for (char& c : out) {
    c = upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
              : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    upper = c == '-';
  }
  return out;
}

namespace {

bool isBinaryKey(std::string_view key) {
  return key.size() > 4 && key.substr(key.size() - 4) == "-bin";
}

std::string base64Std(std::string_view in) {
  std::string s = jwt::base64UrlEncode(in);
  std::replace(s.begin(), s.end(), '-', '+');
  std::replace(s.begin(), s.end(), '_', '/');
  return s;
}

std::optional<std::string> unbase64Std(std::string_view in) {
  std::string s(in);
  while (!s.empty() && s.back() == '=') s.pop_back();
  if (s.find_first_of("-_") != std::string::npos) return std::nullopt;
  std::replace(s.begin(), s.end(), '+', '-');
  std::replace(s.begin(), s.end(), '/', '_');
  return jwt::base64UrlDecode(s);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::string headerBlock(const Headers& headers) {
  std::string out;
  for (const auto& [k, v] : headers) {
    out += canonicalKey(k);
    out += ": ";
    out += isBinaryKey(k) ? base64Std(v) : v;
    out += "\r\n";
  }
  return out;
}

std::string parseHeaderBlock(std::string_view block, Headers& out) {
  while (!block.empty()) {
    auto end = block.find("\r\n");
    if (end == std::string_view::npos) return "header line without CRLF";
    std::string_view line = block.substr(0, end);
    block.remove_prefix(end + 2);
    if (line.empty()) continue;
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return "header line without a key";
    std::string key(trim(line.substr(0, colon)));
    std::transform(key.begin(), key.end(), key.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string_view value = trim(line.substr(colon + 1));
    if (isBinaryKey(key)) {
      auto decoded = unbase64Std(value);
      if (!decoded) return "header " + key + " is not base64";
      out.emplace_back(std::move(key), std::move(*decoded));
    } else {
      out.emplace_back(std::move(key), std::string(value));
    }
  }
  return "";
}

std::string percentEncode(std::string_view text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string percentDecode(std::string_view text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);  // as grpc does: a malformed escape stays as it is
    }
  }
  return out;
}

std::optional<std::chrono::nanoseconds> parseTimeout(std::string_view value) {
  if (value.size() < 2 || value.size() > 9) return std::nullopt;
  uint64_t n = 0;
  for (char c : value.substr(0, value.size() - 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  using namespace std::chrono;
  auto count = static_cast<int64_t>(n);
  switch (value.back()) {
    case 'H':
      return duration_cast<nanoseconds>(hours(count));
    case 'M':
      return duration_cast<nanoseconds>(minutes(count));
    case 'S':
      return duration_cast<nanoseconds>(seconds(count));
    case 'm':
      return duration_cast<nanoseconds>(milliseconds(count));
    case 'u':
      return duration_cast<nanoseconds>(microseconds(count));
    case 'n':
      return nanoseconds(count);
    default:
      return std::nullopt;
  }
}

}  // namespace aa::grpcws
