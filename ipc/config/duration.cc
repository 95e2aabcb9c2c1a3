// Go time.ParseDuration / Duration.String() for duration flags and environment variables.
// Linked into the supervisor and every worker (each re-parses the configuration); pure functions.
// The algorithms follow Go's src/time/format.go and time.go step by step, including overflow rules.
#include "ipc/config/duration.h"

#include <array>
#include <cstdint>

namespace aa {
namespace {

constexpr uint64_t kNanosecond = 1;
constexpr uint64_t kMicrosecond = 1000 * kNanosecond;
constexpr uint64_t kMillisecond = 1000 * kMicrosecond;
constexpr uint64_t kSecond = 1000 * kMillisecond;
constexpr uint64_t kMinute = 60 * kSecond;
constexpr uint64_t kHour = 60 * kMinute;
constexpr uint64_t kTwo63 = uint64_t{1} << 63;

bool isDigit(char c) { return c >= '0' && c <= '9'; }

// Go's unitMap. "µs" is U+00B5 (micro sign), "μs" is U+03BC (Greek mu), both UTF-8.
std::optional<uint64_t> unitValue(std::string_view u) {
  if (u == "ns") return kNanosecond;
  if (u == "us" || u == "\xC2\xB5s" || u == "\xCE\xBCs") return kMicrosecond;
  if (u == "ms") return kMillisecond;
  if (u == "s") return kSecond;
  if (u == "m") return kMinute;
  if (u == "h") return kHour;
  return std::nullopt;
}

// Consumes the leading [0-9]* from s; nullopt on overflow (Go's leadingInt).
std::optional<uint64_t> leadingInt(std::string_view& s) {
  uint64_t x = 0;
  size_t i = 0;
  for (; i < s.size() && isDigit(s[i]); ++i) {
    if (x > kTwo63 / 10) return std::nullopt;
    x = x * 10 + static_cast<uint64_t>(s[i] - '0');
    if (x > kTwo63) return std::nullopt;
  }
  s.remove_prefix(i);
  return x;
}

// Consumes the leading [0-9]* of a fraction; stops accumulating precision on overflow
// (Go's leadingFraction).
void leadingFraction(std::string_view& s, uint64_t& x, double& scale) {
  x = 0;
  scale = 1;
  bool overflow = false;
  size_t i = 0;
  for (; i < s.size() && isDigit(s[i]); ++i) {
    if (overflow) continue;
    if (x > (kTwo63 - 1) / 10) {
      overflow = true;
      continue;
    }
    const uint64_t y = x * 10 + static_cast<uint64_t>(s[i] - '0');
    if (y > kTwo63) {
      overflow = true;
      continue;
    }
    x = y;
    scale *= 10;
  }
  s.remove_prefix(i);
}

// Writes the fraction of v/10^prec (without trailing zeros, without '.' when zero) ending at
// buf[w]; returns the new start and v/10^prec (Go's fmtFrac).
size_t fmtFrac(std::array<char, 32>& buf, size_t w, uint64_t& v, int prec) {
  bool print = false;
  for (int i = 0; i < prec; ++i) {
    const uint64_t digit = v % 10;
    print = print || digit != 0;
    if (print) buf[--w] = static_cast<char>('0' + digit);
    v /= 10;
  }
  if (print) buf[--w] = '.';
  return w;
}

size_t fmtInt(std::array<char, 32>& buf, size_t w, uint64_t v) {
  if (v == 0) {
    buf[--w] = '0';
    return w;
  }
  while (v > 0) {
    buf[--w] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
  return w;
}

}  // namespace

std::optional<std::chrono::nanoseconds> parseGoDuration(std::string_view s) {
  uint64_t d = 0;
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") return std::chrono::nanoseconds{0};
  if (s.empty()) return std::nullopt;
  while (!s.empty()) {
    // The next character must be [0-9.].
    if (!(s[0] == '.' || isDigit(s[0]))) return std::nullopt;
    const size_t before = s.size();
    const std::optional<uint64_t> whole = leadingInt(s);
    if (!whole) return std::nullopt;
    uint64_t v = *whole;
    const bool pre = before != s.size();

    uint64_t f = 0;
    double scale = 1;
    bool post = false;
    if (!s.empty() && s[0] == '.') {
      s.remove_prefix(1);
      const size_t fracBefore = s.size();
      leadingFraction(s, f, scale);
      post = fracBefore != s.size();
    }
    if (!pre && !post) return std::nullopt;  // no digits, e.g. ".s"

    size_t i = 0;
    while (i < s.size() && s[i] != '.' && !isDigit(s[i])) ++i;
    if (i == 0) return std::nullopt;  // missing unit
    const std::optional<uint64_t> unit = unitValue(s.substr(0, i));
    s.remove_prefix(i);
    if (!unit) return std::nullopt;
    if (v > kTwo63 / *unit) return std::nullopt;
    v *= *unit;
    if (f > 0) {
      // float64 keeps fractions of hours nanosecond-accurate, exactly as Go computes it.
      v += static_cast<uint64_t>(static_cast<double>(f) * (static_cast<double>(*unit) / scale));
      if (v > kTwo63) return std::nullopt;
    }
    d += v;
    if (d > kTwo63) return std::nullopt;
  }
  if (neg) {
    // d == 2^63 is exactly INT64_MIN; wrap-around negation as Go does.
    return std::chrono::nanoseconds{static_cast<int64_t>(uint64_t{0} - d)};
  }
  if (d > kTwo63 - 1) return std::nullopt;
  return std::chrono::nanoseconds{static_cast<int64_t>(d)};
}

std::string formatGoDuration(std::chrono::nanoseconds dur) {
  // Largest value is "-2562047h47m16.854775808s".
  std::array<char, 32> buf{};
  size_t w = buf.size();
  const int64_t d = dur.count();
  uint64_t u = static_cast<uint64_t>(d);
  const bool neg = d < 0;
  if (neg) u = uint64_t{0} - u;

  if (u < kSecond) {
    // Under a second: smaller units such as "1.2ms".
    int prec = 0;
    buf[--w] = 's';
    --w;
    if (u == 0) {
      buf[w] = '0';
      return std::string(buf.data() + w, buf.size() - w);
    } else if (u < kMicrosecond) {
      prec = 0;
      buf[w] = 'n';
    } else if (u < kMillisecond) {
      prec = 3;
      // U+00B5 micro sign, two bytes in UTF-8.
      --w;
      buf[w] = '\xC2';
      buf[w + 1] = '\xB5';
    } else {
      prec = 6;
      buf[w] = 'm';
    }
    w = fmtFrac(buf, w, u, prec);
    w = fmtInt(buf, w, u);
  } else {
    buf[--w] = 's';
    w = fmtFrac(buf, w, u, 9);
    // u is now whole seconds.
    w = fmtInt(buf, w, u % 60);
    u /= 60;
    if (u > 0) {
      // u is now whole minutes.
      buf[--w] = 'm';
      w = fmtInt(buf, w, u % 60);
      u /= 60;
      if (u > 0) {
        // Whole hours; Go stops at hours because days vary in length.
        buf[--w] = 'h';
        w = fmtInt(buf, w, u);
      }
    }
  }
  if (neg) buf[--w] = '-';
  return std::string(buf.data() + w, buf.size() - w);
}

}  // namespace aa
