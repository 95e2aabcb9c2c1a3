// Authentication admission rules, with injected time.
#include "workers/listener/auth_limiter.h"

#include <gtest/gtest.h>

namespace aa {
namespace {

using V = AuthLimiter::Verdict;
using std::chrono::milliseconds;
const auto kT0 = AuthLimiter::Clock::time_point{} + std::chrono::hours(1);

TEST(AuthLimiter, FailuresEmptyTheSourcesBucketSuccessesDoNot) {
  AuthLimiter l({/*maxPendingPerSource=*/0, /*failureBurst=*/3, /*failureRate=*/2,
                 /*maxPending=*/0});
  for (int i = 0; i < 100; ++i) {  // successes cost nothing (agents behind one NAT address)
    ASSERT_EQ(l.admit("10.0.0.1", kT0), V::kAdmit);
    l.done("10.0.0.1", /*failed=*/false, kT0);
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(l.admit("10.0.0.1", kT0), V::kAdmit) << i;
    l.done("10.0.0.1", /*failed=*/true, kT0);
  }
  EXPECT_EQ(l.admit("10.0.0.1", kT0), V::kSourceFailures);
  EXPECT_EQ(l.admit("10.0.0.2", kT0), V::kAdmit) << "another source has its own bucket";
  EXPECT_EQ(l.admit("10.0.0.1", kT0 + milliseconds(400)), V::kSourceFailures) << "0.8 tokens";
  EXPECT_EQ(l.admit("10.0.0.1", kT0 + milliseconds(600)), V::kAdmit) << "1.2 tokens after 0.6 s";
  l.done("10.0.0.1", true, kT0 + milliseconds(600));
  EXPECT_EQ(l.admit("10.0.0.1", kT0 + milliseconds(600)), V::kSourceFailures);
  // Never more than the burst, however long the source waited.
  auto later = kT0 + std::chrono::hours(1);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(l.admit("10.0.0.1", later), V::kAdmit);
    l.done("10.0.0.1", true, later);
  }
  EXPECT_EQ(l.admit("10.0.0.1", later), V::kSourceFailures);
}

TEST(AuthLimiter, PendingPerSourceAndInAll) {
  AuthLimiter l({/*maxPendingPerSource=*/2, /*failureBurst=*/0, /*failureRate=*/0,
                 /*maxPending=*/3});
  EXPECT_EQ(l.admit("a", kT0), V::kAdmit);
  EXPECT_EQ(l.admit("a", kT0), V::kAdmit);
  EXPECT_EQ(l.admit("a", kT0), V::kSourcePending);
  EXPECT_EQ(l.admit("b", kT0), V::kAdmit);
  EXPECT_EQ(l.admit("c", kT0), V::kBusy) << "3 pending in all";
  EXPECT_EQ(l.pending(), 3u);
  l.done("a", false, kT0);
  EXPECT_EQ(l.admit("a", kT0), V::kAdmit);
  l.done("b", false, kT0);
  EXPECT_EQ(l.admit("", kT0), V::kAdmit) << "no source: only the global cap";
  EXPECT_EQ(l.admit("", kT0), V::kBusy);
}

TEST(AuthLimiter, NoSourceMeansNoPerSourceRules) {
  AuthLimiter l({/*maxPendingPerSource=*/1, /*failureBurst=*/1, /*failureRate=*/0,
                 /*maxPending=*/0});
  for (int i = 0; i < 100; ++i) ASSERT_EQ(l.admit("", kT0), V::kAdmit);
  for (int i = 0; i < 100; ++i) l.done("", true, kT0);
  EXPECT_EQ(l.sources(), 0u);
  EXPECT_EQ(l.pending(), 0u);
}

TEST(AuthLimiter, TheSourceTableStaysBounded) {
  AuthLimiter l({/*maxPendingPerSource=*/4, /*failureBurst=*/2, /*failureRate=*/0,
                 /*maxPending=*/0, /*maxSources=*/8});
  for (int i = 0; i < 1000; ++i) {
    std::string s = "src-" + std::to_string(i);
    ASSERT_EQ(l.admit(s, kT0), V::kAdmit);
    l.done(s, true, kT0);
    EXPECT_LE(l.sources(), 8u);
  }
  // A source with calls pending is never forgotten (its count must come back down).
  ASSERT_EQ(l.admit("busy", kT0), V::kAdmit);
  for (int i = 0; i < 20; ++i) {
    std::string s = "more-" + std::to_string(i);
    l.admit(s, kT0);
    l.done(s, false, kT0);
  }
  l.done("busy", false, kT0);
  EXPECT_EQ(l.pending(), 0u);
}

}  // namespace
}  // namespace aa
