// The JSON syntax check: RFC 8259 cases, and nlohmann::json::accept's verdict on each (the
// checker it replaced; tools/fuzz/json_fuzz.cc compares the two on arbitrary input).
#include "workers/common/json_syntax.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "workers/common/synthetic.h"

namespace aa::json {
namespace {

struct Case {
  std::string text;
  bool valid;
};

TEST(JsonSyntax, AgreesWithTheGrammarAndWithNlohmann) {
  const Case cases[] = {
      {"{}", true},
      {"[]", true},
      {" \t\r\n{ \"a\" : [ 1 , -2.5e+3 , 0 , -0 , 1E2 , true , false , null ] } \n", true},
      {"\"\"", true},
      {"0", true},
      {"-0.0e-0", true},
      {"123456789012345678901234567890", true},  // past 64 bits: a (finite) double
      {"1e308", true},
      {"1e-400", true},  // underflows to 0: finite
      {"1e400", false},  // "number overflow"
      {"-1E+400", false},
      {std::string(310, '9'), false},  // an integer past the largest double
      {std::string(300, '9'), true},
      {"", false},
      {"   ", false},
      {"{", false},
      {"{\"a\"}", false},
      {"{\"a\":}", false},
      {"{\"a\":1,}", false},
      {"[1,]", false},
      {"[,1]", false},
      {"{1:2}", false},
      {"[1 2]", false},
      {"{}{}", false},
      {"{}x", false},
      {"01", false},
      {"-", false},
      {"1.", false},
      {".5", false},
      {"1e", false},
      {"1e+", false},
      {"+1", false},
      {"tru", false},
      {"trueX", false},
      {"nul", false},
      {"NaN", false},
      {"'a'", false},
      {"\"a", false},
      {"\"tab\there\"", false},  // a raw control character
      {"\"del\x7f\"", true},     // DEL needs no escape
      {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", true},
      {"\"\\x41\"", false},
      {"\"\\u00e9\\u00E9\"", true},
      {"\"\\u00g9\"", false},
      {"\"\\u12\"", false},
      {"\"\\ud83d\\ude00\"", true},  // a surrogate pair
      {"\"\\ud83d\"", false},        // high alone
      {"\"\\ud83dx\"", false},
      {"\"\\ud83d\\u0041\"", false},  // high, then not a low one
      {"\"\\ude00\"", false},         // low alone
      {"\"caf\xc3\xa9\"", true},
      {"\"\xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"", true},
      {"\"\xc0\xaf\"", false},          // overlong
      {"\"\xe0\x80\xaf\"", false},      // overlong
      {"\"\xed\xa0\x80\"", false},      // an encoded surrogate
      {"\"\xf4\x90\x80\x80\"", false},  // past U+10FFFF
      {"\"\xf5\x80\x80\x80\"", false},
      {"\"\xc3\"", false},  // cut short
      {"\"\xe2\x82\"", false},
      {"\"\x80\"", false},       // a lone continuation byte
      {"\xef\xbb\xbf{}", true},  // a byte-order mark is skipped
      {"\xef\xbb{}", false},
      {" \xef\xbb\xbf{}", false},                                 // only at the very start
      {std::string(10000, '[') + std::string(10000, ']'), true},  // deep: no recursion
      {std::string(10000, '[') + std::string(9999, ']'), false},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(isValid(c.text), c.valid) << "'" << c.text.substr(0, 80) << "'";
    EXPECT_EQ(isValid(c.text), nlohmann::json::accept(c.text))
        << "disagrees with nlohmann on '" << c.text.substr(0, 80) << "'";
  }
}

// The one difference, on purpose: nlohmann takes a NUL between tokens for the end of the text
// and ignores the rest ("{}\0junk" passes); here a NUL anywhere refuses, as Go's encoding/json
// (upstream's) does.
TEST(JsonSyntax, RefusesANulByteWhereNlohmannStopsReading) {
  for (std::string text : {std::string("{}\0", 3), std::string("{}\0junk", 7),
                           std::string("[1,\0]", 5), std::string("\"a\0\"", 4)}) {
    EXPECT_FALSE(isValid(text)) << text.size();
  }
  EXPECT_TRUE(nlohmann::json::accept(std::string("{}\0junk", 7)));
}

TEST(JsonSyntax, AcceptsTheSyntheticApplicationsAndRefusesEveryPrefix) {
  auto app = delivery::applicationJson("app-1", 42, 2048);
  ASSERT_TRUE(isValid(app));
  // Every proper prefix of an object is incomplete.
  for (size_t n = 0; n < app.size(); ++n) {
    ASSERT_FALSE(isValid(std::string_view(app).substr(0, n))) << n;
  }
}

}  // namespace
}  // namespace aa::json
