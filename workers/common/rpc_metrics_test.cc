#include "workers/common/rpc_metrics.h"

#include <gtest/gtest.h>

namespace aa {
namespace {

TEST(LabelledHistogram, CountsEachObservationInTheFirstBucketAtOrAboveIt) {
  LabelledHistogram h("t_seconds", "help", {"status", "target"});
  h.observe({"success", "heartbeat"}, 0.005);  // le="0.005" includes its bound
  h.observe({"success", "heartbeat"}, 0.0051);
  h.observe({"success", "heartbeat"}, 11);  // only +Inf
  h.observe({"failure", "application"}, 0);
  std::vector<MetricSample> out;
  h.samples(out);
  ASSERT_EQ(out.size(), 2u);
  const MetricSample* hb = nullptr;
  for (const auto& s : out) {
    if (s.labels == std::vector<std::pair<std::string, std::string>>{{"status", "success"},
                                                                     {"target", "heartbeat"}}) {
      hb = &s;
    }
  }
  ASSERT_NE(hb, nullptr);
  EXPECT_EQ(hb->name, "t_seconds");
  EXPECT_EQ(hb->value, 3);  // the count, +Inf included
  EXPECT_DOUBLE_EQ(hb->sum, 0.005 + 0.0051 + 11);
  ASSERT_EQ(hb->bounds.size(), LabelledHistogram::kBuckets);
  ASSERT_EQ(hb->cumulative.size(), LabelledHistogram::kBuckets);
  EXPECT_EQ(hb->cumulative[0], 1);      // 0.005
  EXPECT_EQ(hb->cumulative[1], 2);      // 0.01
  EXPECT_EQ(hb->cumulative.back(), 2);  // 10: the 11 s one is above every bound
}

TEST(LabelledCounter, AddsPerLabelSet) {
  LabelledCounter c("errors", "help", {"resource_type"});
  c.add({"application"});
  c.add({"application"}, 2);
  c.add({""});
  std::vector<MetricSample> out;
  c.samples(out);
  ASSERT_EQ(out.size(), 2u);
  for (const auto& s : out) {
    ASSERT_EQ(s.labels.size(), 1u);
    EXPECT_TRUE(s.counter);
    EXPECT_EQ(s.value, s.labels[0].second == "application" ? 3 : 1) << s.labels[0].second;
  }
}

}  // namespace
}  // namespace aa
