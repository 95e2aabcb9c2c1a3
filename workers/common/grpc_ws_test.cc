#include "workers/common/grpc_ws.h"

#include <gtest/gtest.h>

namespace aa::grpcws {
namespace {

TEST(GrpcWs, FramesRoundTrip) {
  std::string m;
  appendFrame(m, 0, "hello");
  EXPECT_EQ(m, std::string("\x00\x00\x00\x00\x05hello", 10));
  Frame f;
  EXPECT_EQ(parse(m, f), "");
  EXPECT_EQ(f.payload, "hello");
  EXPECT_FALSE(f.metadata());
  std::string eos;
  appendFrame(eos, kMetadata, "");
  EXPECT_EQ(eos, std::string("\x80\x00\x00\x00\x00", 5));
  ASSERT_EQ(parse(eos, f), "");
  EXPECT_TRUE(f.endOfStream());
}

TEST(GrpcWs, RefusesWhatGoGrpcHttp1Refuses) {
  Frame f;
  EXPECT_EQ(parse(std::string("\x00\x00\x00", 3), f),
            "message of 3 bytes is shorter than the 5-byte frame prefix");
  EXPECT_EQ(parse(std::string("\x00\x00\x00\x00\x09hello", 10), f),
            "message of 10 bytes declares a 9-byte payload (one frame per message)");
  // Two frames in one message: the first one's length disagrees with the message.
  std::string two;
  appendFrame(two, 0, "a");
  appendFrame(two, 0, "b");
  EXPECT_NE(parse(two, f), "");
  EXPECT_EQ(parse(std::string("\x81\x00\x00\x00\x00", 5), f), "compressed metadata frame");
  EXPECT_EQ(parse(std::string("\x04\x00\x00\x00\x00", 5), f), "unknown frame flags 0x04");
}

TEST(GrpcWs, HeaderBlocksUseGoCasingAndBase64ForBinary) {
  Headers h = {{"content-type", "application/grpc"},
               {"grpc-status", "16"},
               {"grpc-status-details-bin", std::string("\x01\xff", 2)}};
  std::string block = headerBlock(h);
  EXPECT_EQ(
      block,
      "Content-Type: application/grpc\r\nGrpc-Status: 16\r\nGrpc-Status-Details-Bin: Af8\r\n");
  Headers back;
  ASSERT_EQ(parseHeaderBlock(block, back), "");
  EXPECT_EQ(back, h);
  EXPECT_EQ(parseHeaderBlock("no colon\r\n", back), "header line without a key");
  EXPECT_EQ(parseHeaderBlock("A: b", back), "header line without CRLF");
}

TEST(GrpcWs, PercentEncodingAndTimeouts) {
  EXPECT_EQ(percentEncode("bad token: 100%\n"), "bad token: 100%25%0A");
  EXPECT_EQ(percentDecode("bad token: 100%25%0A"), "bad token: 100%\n");
  EXPECT_EQ(percentDecode("50%"), "50%");
  EXPECT_EQ(parseTimeout("10S"), std::chrono::seconds(10));
  EXPECT_EQ(parseTimeout("250m"), std::chrono::milliseconds(250));
  EXPECT_EQ(parseTimeout("1H"), std::chrono::hours(1));
  EXPECT_FALSE(parseTimeout("S"));
  EXPECT_FALSE(parseTimeout("123456789S"));  // 9 digits: more than gRPC allows
  EXPECT_FALSE(parseTimeout("10s"));
  EXPECT_FALSE(parseTimeout("1x0S"));
}

}  // namespace
}  // namespace aa::grpcws
