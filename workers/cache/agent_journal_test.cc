// The agents' state in Redis: encoding round trips and a corrupted value costs only itself.
#include "workers/cache/agent_journal.h"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "workers/common/cloudevents.h"
#include "workers/common/synthetic.h"

namespace aa::journal {
namespace {

delivery::Event event(const std::string& resource, int seq, size_t bytes = 64) {
  SyntheticSpec spec;
  spec.count = 1000;
  spec.resources = 1;
  spec.bytes = bytes;
  auto e = delivery::syntheticEvent(spec, static_cast<uint64_t>(seq));
  (*e.mutable_attributes())["resourceid"].set_ce_string(resource);
  return e;
}

TEST(AgentJournal, EventsAndIdsRoundTripPlainAndGzipped) {
  for (bool gzip : {false, true}) {
    auto a = event("res-1", 1, 2048), b = event("res-1", 2, 64);
    std::string v = encodeEvents({&a, &b}, gzip);
    EXPECT_EQ(v[0], gzip ? 'z' : 'p');  // 2 KiB of payload is compressed with gzip on
    std::deque<std::string> ids = {"res-1_1", "res-1_2"};
    std::vector<std::string> problems;
    auto got = parse("agent-a",
                     {{"source", "17"},
                      {"streams", "3"},
                      {outField("res-1"), v},
                      {inField("res-1"), encodeIds(ids, gzip)}},
                     problems);
    EXPECT_TRUE(problems.empty()) << problems.front();
    EXPECT_EQ(got.name, "agent-a");
    EXPECT_EQ(got.source, 17u);
    EXPECT_EQ(got.streams, 3u);
    ASSERT_EQ(got.outbox.size(), 1u);
    EXPECT_EQ(got.outbox[0].first, "res-1");
    ASSERT_EQ(got.outbox[0].second.size(), 2u);
    using google::protobuf::util::MessageDifferencer;
    EXPECT_TRUE(MessageDifferencer::Equals(got.outbox[0].second[0], a));
    EXPECT_TRUE(MessageDifferencer::Equals(got.outbox[0].second[1], b));
    ASSERT_EQ(got.ledger.size(), 1u);
    EXPECT_EQ(got.ledger[0].second, std::vector<std::string>(ids.begin(), ids.end()));
  }
  EXPECT_EQ(encodeIds({"x"}, true)[0], 'p') << "small values are not worth gzip";
}

TEST(AgentJournal, EachCorruptedFieldIsNamedAndLeftOutAlone) {
  auto good = event("res-ok", 5);
  auto other = event("res-other", 6);
  std::vector<std::string> problems;
  auto got = parse("agent-a",
                   {{"source", "12x"},
                    {"streams", ""},
                    {outField("res-ok"), encodeEvents({&good}, false)},
                    {outField("res-1"), "x"},
                    {outField("res-2"), std::string("p\0\0\0\x09short", 10)},
                    {outField("res-3"), "z not gzip"},
                    {outField("res-4"), encodeEvents({&other}, false)},  // another resource's
                    {inField("res-5"), std::string("p\0\0", 3)},
                    {"bogus", "1"}},
                   problems);
  ASSERT_EQ(got.outbox.size(), 1u);
  EXPECT_EQ(got.outbox[0].first, "res-ok");
  EXPECT_TRUE(got.ledger.empty());
  EXPECT_EQ(got.source, 0u);
  std::vector<std::string> want = {
      "field source: not a number",
      "field streams: not a number",
      "field out|res-1: unknown format byte",
      "field out|res-2: item longer than the value",
      "field out|res-3: not gzip: incorrect header check",
      "field out|res-4: item 0 is not an event of this resource",
      "field in|res-5: truncated item length",
      "field bogus: unknown field",
  };
  EXPECT_EQ(problems, want);
}

TEST(AgentJournal, KeyAndFieldNames) {
  EXPECT_EQ(key("agent-a"), "argocd-agent|state|agent-a");
  EXPECT_EQ(outField("r"), "out|r");
  EXPECT_EQ(inField("r"), "in|r");
}

}  // namespace
}  // namespace aa::journal
