// The JSON syntax check (json_syntax.h). A loop over one cursor with an explicit stack of the open
// containers; strings, where almost all of a Kubernetes object's bytes are, go through a table of
// the bytes that need a closer look.
#include "workers/common/json_syntax.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace aa::json {

namespace {

using Byte = unsigned char;

// 1 for a byte that ends the plain run of a string: '"', '\\', a control character, or the first
// byte of a multi-byte UTF-8 sequence. Everything else from 0x20 to 0x7F stands for itself.
constexpr std::array<uint8_t, 256> kStringStop = [] {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) t[c] = (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) ? 1 : 0;
  return t;
}();

bool isSpace(Byte c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool isDigit(Byte c) { return c >= '0' && c <= '9'; }

int hexValue(Byte c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Checker {
 public:
  Checker(const Byte* p, const Byte* end) : p_(p), end_(end) {}

  bool run() {
    // nlohmann skips a UTF-8 byte-order mark before the value (and refuses a partial one).
    if (end_ - p_ >= 3 && p_[0] == 0xEF && p_[1] == 0xBB && p_[2] == 0xBF) p_ += 3;
    std::string open;  // '{' or '[' per open container, innermost last
  value:
    skipSpace();
    if (p_ == end_) return false;
    switch (*p_) {
      case '{':
        ++p_;
        skipSpace();
        if (p_ != end_ && *p_ == '}') {
          ++p_;
          goto after;
        }
        open.push_back('{');
        goto key;
      case '[':
        ++p_;
        skipSpace();
        if (p_ != end_ && *p_ == ']') {
          ++p_;
          goto after;
        }
        open.push_back('[');
        goto value;
      case '"':
        if (!string()) return false;
        goto after;
      case 't':
        if (!literal("true")) return false;
        goto after;
      case 'f':
        if (!literal("false")) return false;
        goto after;
      case 'n':
        if (!literal("null")) return false;
        goto after;
      default:
        if (!number()) return false;
        goto after;
    }
  key:
    skipSpace();
    if (p_ == end_ || *p_ != '"' || !string()) return false;
    skipSpace();
    if (p_ == end_ || *p_ != ':') return false;
    ++p_;
    goto value;
  after:
    skipSpace();
    if (open.empty()) return p_ == end_;
    if (p_ == end_) return false;
    if (*p_ == ',') {
      ++p_;
      if (open.back() == '{') goto key;
      goto value;
    }
    if (*p_ != (open.back() == '{' ? '}' : ']')) return false;
    ++p_;
    open.pop_back();
    goto after;
  }

 private:
  void skipSpace() {
    while (p_ != end_ && isSpace(*p_)) ++p_;
  }

  bool literal(std::string_view word) {
    if (static_cast<size_t>(end_ - p_) < word.size()) return false;
    if (std::string_view(reinterpret_cast<const char*>(p_), word.size()) != word) return false;
    p_ += word.size();
    return true;
  }

  // At the opening quote; on success just past the closing one.
  bool string() {
    ++p_;
    for (;;) {
      while (p_ != end_ && kStringStop[*p_] == 0) ++p_;
      if (p_ == end_) return false;
      Byte c = *p_;
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c == '\\') {
        if (!escape()) return false;
      } else if (c >= 0x80) {
        if (!utf8()) return false;
      } else {
        return false;  // a control character must be escaped
      }
    }
  }

  // At the backslash.
  bool escape() {
    if (end_ - p_ < 2) return false;
    Byte c = p_[1];
    p_ += 2;
    switch (c) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't':
        return true;
      case 'u':
        break;
      default:
        return false;
    }
    int first = codepoint();
    if (first < 0) return false;
    if (first >= 0xDC00 && first <= 0xDFFF) return false;  // a low surrogate alone
    if (first < 0xD800 || first > 0xDBFF) return true;
    // A high surrogate: its low half must follow as a \u escape.
    if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return false;
    p_ += 2;
    int second = codepoint();
    return second >= 0xDC00 && second <= 0xDFFF;
  }

  // Four hex digits (after "\u"), or -1.
  int codepoint() {
    if (end_ - p_ < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; ++i) {
      int h = hexValue(p_[i]);
      if (h < 0) return -1;
      v = v * 16 + h;
    }
    p_ += 4;
    return v;
  }

  // At a byte >= 0x80: one well-formed UTF-8 sequence (RFC 3629, table 3-7 of Unicode).
  bool utf8() {
    Byte c = *p_;
    int more;
    Byte lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      more = 1;
    } else if (c == 0xE0) {
      more = 2;
      lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      more = 2;
    } else if (c == 0xED) {
      more = 2;
      hi = 0x9F;
    } else if (c == 0xF0) {
      more = 3;
      lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      more = 3;
    } else if (c == 0xF4) {
      more = 3;
      hi = 0x8F;
    } else {
      return false;
    }
    if (end_ - p_ <= more) return false;
    if (p_[1] < lo || p_[1] > hi) return false;
    for (int i = 2; i <= more; ++i) {
      if (p_[i] < 0x80 || p_[i] > 0xBF) return false;
    }
    p_ += 1 + more;
    return true;
  }

  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, and finite as a double.
  bool number() {
    const Byte* start = p_;
    if (*p_ == '-') ++p_;
    if (p_ == end_ || !isDigit(*p_)) return false;
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ != end_ && isDigit(*p_)) ++p_;
    }
    size_t intDigits = static_cast<size_t>(p_ - start);
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !isDigit(*p_)) return false;
      while (p_ != end_ && isDigit(*p_)) ++p_;
    }
    bool exponent = false;
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      exponent = true;
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !isDigit(*p_)) return false;
      while (p_ != end_ && isDigit(*p_)) ++p_;
    }
    // Only an exponent or some 309 integer digits can leave the doubles (nlohmann refuses that
    // as "number overflow"); for those, ask strtod as nlohmann does. (The program never sets a
    // locale, so '.' is the decimal point.)
    if (exponent || intDigits > 300) {
      std::string token(reinterpret_cast<const char*>(start), static_cast<size_t>(p_ - start));
      return std::isfinite(std::strtod(token.c_str(), nullptr));
    }
    return true;
  }

  const Byte* p_;
  const Byte* end_;
};

}  // namespace

bool isValid(std::string_view text) {
  const auto* p = reinterpret_cast<const Byte*>(text.data());
  return Checker(p, p + text.size()).run();
}

}  // namespace aa::json
