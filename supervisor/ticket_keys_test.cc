// TicketKeys: rotation with injected time.
#include "supervisor/ticket_keys.h"

#include <gtest/gtest.h>

namespace aa {
namespace {

using namespace std::chrono_literals;
using Clock = TicketKeys::Clock;

TEST(TicketKeys, OffWhenRotationIsZero) {
  TicketKeys k(0s);
  auto a = k.current(Clock::time_point{} + 5s);
  EXPECT_TRUE(a.keys.empty());
}

TEST(TicketKeys, RotatesOncePerIntervalAndKeepsThePreviousKey) {
  TicketKeys k(10s);
  auto t0 = Clock::time_point{} + 100s;
  auto a = k.current(t0);
  ASSERT_EQ(a.keys.size(), 1u);
  EXPECT_EQ(a.refreshIn, 10s);
  auto first = a.keys[0];

  auto b = k.current(t0 + 4s);  // same interval: same key, less time left
  ASSERT_EQ(b.keys.size(), 1u);
  EXPECT_EQ(b.keys[0], first);
  EXPECT_EQ(b.refreshIn, 6s);

  auto c = k.current(t0 + 10s);  // one rotation: new key first, the old one still decrypts
  ASSERT_EQ(c.keys.size(), 2u);
  EXPECT_NE(c.keys[0], first);
  EXPECT_EQ(c.keys[1], first);
  EXPECT_EQ(c.refreshIn, 10s);
  auto second = c.keys[0];

  auto d = k.current(t0 + 21s);  // another: the first key is gone
  ASSERT_EQ(d.keys.size(), 2u);
  EXPECT_EQ(d.keys[1], second);
  EXPECT_NE(d.keys[0], first);
  EXPECT_EQ(d.refreshIn, 9s);
}

TEST(TicketKeys, LongSilenceReplacesEveryKey) {
  TicketKeys k(10s);
  auto t0 = Clock::time_point{} + 100s;
  auto first = k.current(t0).keys[0];
  auto a = k.current(t0 + 1000s);
  ASSERT_EQ(a.keys.size(), 1u);
  EXPECT_NE(a.keys[0], first);
  EXPECT_EQ(a.refreshIn, 10s);
}

TEST(TicketKeys, TwoIntervalsLateKeepsNoKeyOlderThanOneInterval) {
  TicketKeys k(10s);
  auto t0 = Clock::time_point{} + 100s;
  auto first = k.current(t0).keys[0];
  auto a = k.current(t0 + 25s);  // two rotations due: [k3, k2]
  ASSERT_EQ(a.keys.size(), 2u);
  EXPECT_NE(a.keys[0], first);
  EXPECT_NE(a.keys[1], first);
  EXPECT_EQ(a.refreshIn, 5s);
}

}  // namespace
}  // namespace aa
