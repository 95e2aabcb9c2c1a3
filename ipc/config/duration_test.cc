// Unit tests for ipc/config/duration.{h,cc}: Go time.ParseDuration and Duration.String() parity.
// Runs in the unit_tests binary; the tables are Go's own src/time/time_test.go cases.
#include "ipc/config/duration.h"

#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

namespace aa {
namespace {

using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::nanoseconds;
using std::chrono::seconds;

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

struct ParseCase {
  const char* in;
  nanoseconds want;
};

TEST(DurationTest, ParsesValidInputs) {
  const ParseCase cases[] = {
      // simple
      {"0", nanoseconds{0}},
      {"5s", seconds{5}},
      {"30s", seconds{30}},
      {"1478s", seconds{1478}},
      // sign
      {"-5s", seconds{-5}},
      {"+5s", seconds{5}},
      {"-0", nanoseconds{0}},
      {"+0", nanoseconds{0}},
      // decimal
      {"5.0s", seconds{5}},
      {"5.6s", seconds{5} + milliseconds{600}},
      {"5.s", seconds{5}},
      {".5s", milliseconds{500}},
      {"1.0s", seconds{1}},
      {"1.00s", seconds{1}},
      {"1.004s", seconds{1} + milliseconds{4}},
      {"1.0040s", seconds{1} + milliseconds{4}},
      {"100.00100s", seconds{100} + milliseconds{1}},
      {"1.5h", minutes{90}},
      // different units
      {"10ns", nanoseconds{10}},
      {"11us", microseconds{11}},
      {"12\xC2\xB5s", microseconds{12}},  // U+00B5 micro sign
      {"12\xCE\xBCs", microseconds{12}},  // U+03BC Greek mu
      {"13ms", milliseconds{13}},
      {"14s", seconds{14}},
      {"15m", minutes{15}},
      {"16h", hours{16}},
      // composite durations
      {"3h30m", hours{3} + minutes{30}},
      {"2h45m", hours{2} + minutes{45}},
      {"10.5s4m", minutes{4} + seconds{10} + milliseconds{500}},
      {"-2m3.4s", -(minutes{2} + seconds{3} + milliseconds{400})},
      {"1h2m3s4ms5us6ns",
       hours{1} + minutes{2} + seconds{3} + milliseconds{4} + microseconds{5} + nanoseconds{6}},
      {"39h9m14.425s", hours{39} + minutes{9} + seconds{14} + milliseconds{425}},
      // large value
      {"52763797000ns", nanoseconds{52763797000}},
      // more than 9 digits after the decimal point (golang.org/issue/6617)
      {"0.3333333333333333333h", minutes{20}},
      // 2^53+1 cannot be stored exactly in a double
      {"9007199254740993ns", nanoseconds{(int64_t{1} << 53) + 1}},
      // the int64 extremes
      {"9223372036854775807ns", nanoseconds{kMax}},
      {"9223372036854775.807us", nanoseconds{kMax}},
      {"9223372036s854ms775us807ns", nanoseconds{kMax}},
      {"-9223372036854775808ns", nanoseconds{kMin}},
      {"-9223372036854775.808us", nanoseconds{kMin}},
      {"-9223372036s854ms775us808ns", nanoseconds{kMin}},
      {"-2562047h47m16.854775808s", nanoseconds{kMin}},
      // huge fraction (golang.org/issue/15011)
      {"0.100000000000000000000h", minutes{6}},
      // first overflow check in leadingFraction
      {"0.830103483285477580700h", minutes{49} + seconds{48} + nanoseconds{372539827}},
  };
  for (const auto& c : cases) {
    const auto got = parseGoDuration(c.in);
    ASSERT_TRUE(got.has_value()) << c.in;
    EXPECT_EQ(got->count(), c.want.count()) << c.in;
  }
}

TEST(DurationTest, RejectsInvalidInputs) {
  const char* const cases[] = {
      // syntax
      "",
      "3",
      "-",
      "+",
      "s",
      ".",
      "-.",
      ".s",
      "+.s",
      "1d",
      "1",
      "5s3",
      "1.5",
      "1 s",
      " 1s",
      "1s ",
      "--1s",
      "+-1s",
      "00",
      "1S",
      "1sec",
      "\x85\x85",
      "\xff"
      "ff",
      "hello \xff"
      "ff world",
      "\xEF\xBF\xBD",
      "\xEF\xBF\xBD hello \xEF\xBF\xBD world",
      // overflow
      "9223372036854775810ns",
      "9223372036854775808ns",
      "-9223372036854775809ns",
      "9223372036854776us",
      "3000000h",
      "9223372036854775.808us",
      "9223372036854ms775us808ns",
      "99999999999999999999999s",
  };
  for (const char* c : cases) {
    EXPECT_FALSE(parseGoDuration(c).has_value()) << '"' << c << '"';
  }
  // An embedded NUL is not a unit.
  EXPECT_FALSE(parseGoDuration(std::string_view("1s\0", 3)).has_value());
}

struct FormatCase {
  nanoseconds in;
  const char* want;
};

TEST(DurationTest, FormatsLikeGo) {
  const FormatCase cases[] = {
      {nanoseconds{0}, "0s"},
      {nanoseconds{1}, "1ns"},
      {nanoseconds{1100}, "1.1\xC2\xB5s"},
      {microseconds{2200}, "2.2ms"},
      {milliseconds{3300}, "3.3s"},
      {minutes{4} + seconds{5}, "4m5s"},
      {minutes{4} + milliseconds{5001}, "4m5.001s"},
      {hours{5} + minutes{6} + milliseconds{7001}, "5h6m7.001s"},
      {minutes{8} + nanoseconds{1}, "8m0.000000001s"},
      {nanoseconds{kMax}, "2562047h47m16.854775807s"},
      {nanoseconds{kMin}, "-2562047h47m16.854775808s"},
      {seconds{90}, "1m30s"},
      {milliseconds{1500}, "1.5s"},
      {milliseconds{500}, "500ms"},
      {hours{2}, "2h0m0s"},
      {seconds{1}, "1s"},
      {seconds{60}, "1m0s"},
      {seconds{-1}, "-1s"},
      {milliseconds{-300}, "-300ms"},
      {nanoseconds{999}, "999ns"},
      {microseconds{1}, "1\xC2\xB5s"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(formatGoDuration(c.in), c.want) << c.in.count();
  }
}

TEST(DurationTest, FormatThenParseRoundTrips) {
  const int64_t values[] = {0,       1,         999,        1000,          1001,
                            1500000, 999999999, 1000000000, 3723000000007, kMax,
                            kMin,    -1,        -1500000,   -3723000000007};
  for (int64_t v : values) {
    const std::string text = formatGoDuration(nanoseconds{v});
    const auto back = parseGoDuration(text);
    ASSERT_TRUE(back.has_value()) << text;
    EXPECT_EQ(back->count(), v) << text;
  }
}

}  // namespace
}  // namespace aa
