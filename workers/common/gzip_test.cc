#include "workers/common/gzip.h"

#include <gtest/gtest.h>

namespace aa::gzip {
namespace {

TEST(Gzip, RoundTripsAndShrinksRepetitiveJson) {
  std::string doc = R"({"status":{"history":")";
  while (doc.size() < 8192) doc += "sync-ok;rev-4f2a9c;";
  doc += R"("}})";
  std::string z = compress(doc);
  EXPECT_LT(z.size(), doc.size() / 8);
  EXPECT_EQ(static_cast<unsigned char>(z[0]), 0x1f);  // gzip magic
  EXPECT_EQ(static_cast<unsigned char>(z[1]), 0x8b);
  std::string error;
  auto back = decompress(z, 1 << 20, error);
  ASSERT_TRUE(back) << error;
  EXPECT_EQ(*back, doc);
  // The per-thread streams are reset between messages.
  auto again = decompress(compress("x"), 16, error);
  ASSERT_TRUE(again) << error;
  EXPECT_EQ(*again, "x");
  EXPECT_EQ(*decompress(compress(""), 0, error), "");
}

TEST(Gzip, RefusesBadInputAndBombs) {
  std::string error;
  EXPECT_FALSE(decompress("not gzip at all", 1024, error));
  EXPECT_NE(error.find("not gzip"), std::string::npos) << error;
  std::string z = compress(std::string(100000, 'a'));
  EXPECT_FALSE(decompress(z.substr(0, z.size() / 2), 1 << 20, error));
  EXPECT_EQ(error, "truncated gzip stream");
  EXPECT_FALSE(decompress(z, 4096, error));
  EXPECT_EQ(error, "decompresses to more than 4096 bytes");
  EXPECT_FALSE(decompress(z + "junk", 1 << 20, error));
  EXPECT_EQ(error, "data after the end of the gzip stream");
}

}  // namespace
}  // namespace aa::gzip
