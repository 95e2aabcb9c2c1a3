// Unit tests of heartbeat liveness and the constant-lifetime hint (heartbeat_monitor.h).
#include "workers/common/heartbeat_monitor.h"

#include <gtest/gtest.h>

namespace aa {
namespace {

using namespace std::chrono_literals;
using Clock = HeartbeatMonitor::Clock;
const Clock::time_point t0{};

TEST(HeartbeatMonitor, AckedHeartbeatsKeepItAliveAndGiveRtt) {
  HeartbeatMonitor m(3);
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(m.tick());
    m.sent("h" + std::to_string(i), t0 + i * 1s);
    auto rtt = m.acked("h" + std::to_string(i), t0 + i * 1s + 2ms);
    ASSERT_TRUE(rtt);
    EXPECT_EQ(*rtt, 2ms);
  }
  EXPECT_EQ(m.missedInARow(), 0);
}

TEST(HeartbeatMonitor, ConsecutiveMissesDeclareDead) {
  HeartbeatMonitor m(3);
  EXPECT_FALSE(m.tick());
  m.sent("a", t0);
  EXPECT_FALSE(m.tick());  // a missed (1)
  m.sent("b", t0 + 1s);
  EXPECT_FALSE(m.tick());  // b missed (2)
  m.sent("c", t0 + 2s);
  EXPECT_TRUE(m.tick());  // c missed (3): dead
}

TEST(HeartbeatMonitor, OneAckResetsTheCount) {
  HeartbeatMonitor m(2);
  m.tick();
  m.sent("a", t0);
  EXPECT_FALSE(m.tick());
  m.sent("b", t0 + 1s);
  EXPECT_TRUE(m.acked("b", t0 + 1500ms).has_value());
  EXPECT_FALSE(m.tick());
  EXPECT_FALSE(m.acked("a", t0 + 2s).has_value()) << "a late ACK of a counted miss is ignored";
}

TEST(HeartbeatMonitor, ZeroMeansNeverDead) {
  HeartbeatMonitor m(0);
  for (int i = 0; i < 100; ++i) {
    EXPECT_FALSE(m.tick());
    m.sent(std::to_string(i), t0);
  }
}

TEST(LifetimePattern, RecognisesAConstantIdleTimeout) {
  LifetimePattern p;
  p.add(3010ms);
  p.add(2990ms);
  EXPECT_FALSE(p.constantLifetime());
  p.add(3050ms);
  ASSERT_TRUE(p.constantLifetime());
  EXPECT_NEAR(p.constantLifetime()->count(), 3016, 2);
  p.add(12000ms);
  EXPECT_FALSE(p.constantLifetime());
  LifetimePattern q;
  for (int i = 0; i < 3; ++i) q.add(100ms);
  EXPECT_FALSE(q.constantLifetime()) << "sub-second failures are not an idle timeout";
}

}  // namespace
}  // namespace aa
