// Unit tests for workers/auth/userpass.{h,cc}: credential-file parsing and bcrypt
// verification. Runs in the unit_tests binary; bcrypt cost 4 keeps it fast.
#include "workers/auth/userpass.h"

#include <chrono>
#include <stdexcept>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace aa::userpass {
namespace {

using ::testing::HasSubstr;
using namespace std::string_literals;

// Cost-4 hashes are generated once; each call costs a few milliseconds.
class UserpassTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    aliceHash_ = hashPassword("alice-secret", 4);
    bobHash_ = hashPassword("bob secret: with colon", 4);
  }
  static inline std::string aliceHash_;
  static inline std::string bobHash_;
};

bool anyContains(const std::vector<std::string>& v, const std::string& needle) {
  for (const auto& s : v) {
    if (s.find(needle) != std::string::npos) return true;
  }
  return false;
}

TEST_F(UserpassTest, HashPasswordShape) {
  EXPECT_EQ(aliceHash_.size(), 60u);
  EXPECT_EQ(aliceHash_.substr(0, 7), "$2b$04$");
  EXPECT_NE(hashPassword("alice-secret", 4), aliceHash_);  // fresh salt every time
  EXPECT_THROW(hashPassword("x", 3), std::runtime_error);
  EXPECT_THROW(hashPassword("x", 32), std::runtime_error);
  EXPECT_THROW(hashPassword("", 4), std::runtime_error);
  EXPECT_THROW(hashPassword(std::string(512, 'x'), 4), std::runtime_error);  // libxcrypt limit
  EXPECT_THROW(hashPassword("a\0b"s, 4), std::runtime_error);
}

TEST_F(UserpassTest, ParsesGoodFile) {
  std::string file = "# comment\n// another comment\n\n   \n";
  file += "alice:" + aliceHash_ + "\n";
  file += "bob:" + bobHash_ + "\r\n";
  file += "  agent-3 : " + aliceHash_ + "  \n";
  file += "a:" + aliceHash_;  // no trailing newline
  const ParseResult r = parse(file);
  EXPECT_TRUE(r.warnings.empty()) << r.warnings.front();
  ASSERT_EQ(r.users.size(), 4u);
  EXPECT_EQ(r.users.at("alice"), aliceHash_);
  EXPECT_EQ(r.users.at("bob"), bobHash_);
  EXPECT_EQ(r.users.at("agent-3"), aliceHash_);
  EXPECT_EQ(r.users.at("a"), aliceHash_);
}

TEST_F(UserpassTest, AcceptsAllBcryptVariants) {
  const std::string rest = aliceHash_.substr(7);
  std::string file;
  for (const char* prefix : {"$2a$04$", "$2b$10$", "$2x$12$", "$2y$31$"}) {
    file += std::string("u") + prefix[2] + ":" + prefix + rest + "\n";
  }
  const ParseResult r = parse(file);
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(r.users.size(), 4u);
}

TEST_F(UserpassTest, SkipsBadLinesWithWarnings) {
  const std::string h = aliceHash_;
  const std::string file = "good:" + h + "\n" +                            // 1
                           "no-colon-here\n" +                             // 2
                           "Upper:" + h + "\n" +                           // 3
                           "-leading:" + h + "\n" +                        // 4
                           "trailing-:" + h + "\n" +                       // 5
                           "under_score:" + h + "\n" +                     // 6
                           std::string(64, 'a') + ":" + h + "\n" +         // 7
                           ":" + h + "\n" +                                // 8
                           "shorthash:" + h.substr(0, 59) + "\n" +         // 9
                           "longhash:" + h + "x\n" +                       // 10
                           "md5:$1$abcdefgh$abcdefghijklmnopqrstuv\n" +    // 11
                           "plain:secret-password\n" +                     // 12
                           "badcost:$2b$03$" + h.substr(7) + "\n" +        // 13
                           "badvariant:$2c$04$" + h.substr(7) + "\n" +     // 14
                           "badchars:$2b$04$" + h.substr(7, 52) + "!\n" +  // 15
                           "good:" + bobHash_ + "\n" +                     // 16 duplicate
                           "long:" + std::string(5000, 'x') + "\n" +       // 17
                           "ok-2:" + h + "\n";                             // 18
  const ParseResult r = parse(file);
  ASSERT_EQ(r.users.size(), 2u);
  EXPECT_EQ(r.users.at("good"), h);  // first definition wins
  EXPECT_EQ(r.users.at("ok-2"), h);
  ASSERT_EQ(r.warnings.size(), 16u);
  for (int line = 2; line <= 17; ++line) {
    EXPECT_TRUE(anyContains(r.warnings, "line " + std::to_string(line) + ":")) << line;
  }
  for (const auto& w : r.warnings) {
    EXPECT_EQ(w.find(h), std::string::npos) << w;
    EXPECT_EQ(w.find(h.substr(7, 22)), std::string::npos) << w;  // not even the salt
    EXPECT_EQ(w.find(bobHash_), std::string::npos) << w;
    EXPECT_EQ(w.find("secret-password"), std::string::npos) << w;
    EXPECT_EQ(w.find("$2"), std::string::npos) << w;
  }
  EXPECT_TRUE(anyContains(r.warnings, "duplicate"));
  EXPECT_TRUE(anyContains(r.warnings, "4 KiB"));
}

TEST_F(UserpassTest, MaxNameLength) {
  const std::string name63(63, 'z');
  const ParseResult r = parse(name63 + ":" + aliceHash_ + "\n");
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(r.users.count(name63), 1u);
}

TEST_F(UserpassTest, OversizedFileIsRefused) {
  std::string file;
  const std::string line = "alice:" + aliceHash_ + "\n";
  while (file.size() <= 1024 * 1024) file += line;
  const ParseResult r = parse(file);
  EXPECT_TRUE(r.users.empty());
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_THAT(r.warnings[0], HasSubstr("1 MiB"));
}

TEST_F(UserpassTest, EmptyAndBinaryInput) {
  EXPECT_TRUE(parse("").users.empty());
  EXPECT_TRUE(parse("").warnings.empty());
  EXPECT_TRUE(parse("\n\n\r\n").warnings.empty());
  const ParseResult r = parse("a\0b:c\n\xff\xfe:\x01\n"s);
  EXPECT_TRUE(r.users.empty());
  EXPECT_EQ(r.warnings.size(), 2u);
}

TEST_F(UserpassTest, VerifyGoodAndBadPassword) {
  const Database db(parse("alice:" + aliceHash_ + "\nbob:" + bobHash_ + "\n").users);
  EXPECT_EQ(db.size(), 2u);
  EXPECT_TRUE(db.verify("alice", "alice-secret"));
  EXPECT_TRUE(db.verify("bob", "bob secret: with colon"));
  EXPECT_FALSE(db.verify("alice", "alice-secreT"));
  EXPECT_FALSE(db.verify("alice", "alice-secret "));
  EXPECT_FALSE(db.verify("alice", "bob secret: with colon"));
  EXPECT_FALSE(db.verify("bob", "alice-secret"));
  EXPECT_FALSE(db.verify("alice", ""));
  // NUL would truncate the C string passed to bcrypt; such secrets are refused outright.
  EXPECT_FALSE(db.verify("alice", "alice-secret\0junk"s));
  EXPECT_FALSE(db.verify("alice", std::string(1025, 'a')));
  EXPECT_FALSE(db.verify("alice", std::string(600, 'a')));
}

TEST_F(UserpassTest, UnknownUserIsFalse) {
  const Database db({{"alice", aliceHash_}});
  EXPECT_FALSE(db.verify("mallory", "alice-secret"));
  EXPECT_FALSE(db.verify("", "alice-secret"));
  EXPECT_FALSE(db.verify("Alice", "alice-secret"));
}

TEST_F(UserpassTest, UnknownUserStillRunsBcrypt) {
  // The dummy hash is a real cost-10 bcrypt hash, so an unknown name costs real work (tens of
  // milliseconds) instead of returning immediately.
  const Database db({{"alice", aliceHash_}});
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(db.verify("mallory", "whatever"));
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(5));
}

TEST_F(UserpassTest, CorruptStoredHashNeverVerifies) {
  const Database db({{"alice", "$2b$04$short"}, {"bob", ""}, {"carol", "*0"}});
  EXPECT_FALSE(db.verify("alice", "x"));
  EXPECT_FALSE(db.verify("bob", "x"));
  EXPECT_FALSE(db.verify("carol", "x"));
}

TEST_F(UserpassTest, HashPasswordOutputVerifies) {
  const std::string pw = "p\xC3\xA4ssw\xC3\xB6rd with spaces and: colons";
  const Database db({{"x", hashPassword(pw, 4)}});
  EXPECT_TRUE(db.verify("x", pw));
  EXPECT_FALSE(db.verify("x", pw.substr(1)));
  // The longest accepted secret (libxcrypt's 511-byte limit) round-trips too; bcrypt itself only
  // uses the first 72 bytes.
  const std::string longPw(511, 'q');
  EXPECT_TRUE(Database({{"y", hashPassword(longPw, 4)}}).verify("y", longPw));
}

}  // namespace
}  // namespace aa::userpass
