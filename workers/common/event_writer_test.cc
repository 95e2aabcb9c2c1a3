// Unit tests of the acknowledged-delivery rules (event_writer.h), with injected time.
#include "workers/common/event_writer.h"

#include <gtest/gtest.h>

#include "workers/common/cloudevents.h"

namespace aa::delivery {
namespace {

using namespace std::chrono_literals;
const Clock::time_point t0{};

Event ev(const std::string& type, const std::string& res, const std::string& id) {
  Event e;
  e.set_spec_version("1.0");
  e.set_type(std::string(ce::kTypePrefix) + type);
  (*e.mutable_attributes())["dataschema"].set_ce_uri("application");
  (*e.mutable_attributes())["resourceid"].set_ce_string(res);
  (*e.mutable_attributes())["eventid"].set_ce_string(id);
  return e;
}

std::vector<std::string> ids(const std::vector<Event>& v) {
  std::vector<std::string> out;
  for (const auto& e : v) out.push_back(ce::stringAttr(e, "eventid"));
  return out;
}

WriterOptions noJitter() {
  WriterOptions o;
  o.jitter = 0;
  return o;
}

TEST(EventWriter, StopAndWaitPerResourceButResourcesIndependent) {
  EventWriter w(noJitter(), 1);
  w.enqueue(ev("create", "a", "a1"));
  w.enqueue(ev("create", "a", "a2"));
  w.enqueue(ev("create", "b", "b1"));
  EXPECT_EQ(ids(w.takeDue(t0)), (std::vector<std::string>{"a1", "b1"}));
  EXPECT_TRUE(w.takeDue(t0 + 1s).empty());  // a2 waits for a1's ACK
  EXPECT_FALSE(w.ack("a", "a2"));           // wrong event id: no effect
  EXPECT_TRUE(w.ack("a", "a1"));
  EXPECT_EQ(ids(w.takeDue(t0 + 1s)), (std::vector<std::string>{"a2"}));
  EXPECT_EQ(w.tracked(), 2u);
}

TEST(EventWriter, ResendsWithExponentialBackoffUntilAcked) {
  EventWriter w(noJitter(), 1);
  w.enqueue(ev("create", "a", "a1"));
  ASSERT_EQ(w.takeDue(t0).size(), 1u);
  std::vector<Clock::time_point> resent;
  auto now = t0;
  for (int i = 0; i < 6; ++i) {
    auto next = w.nextDeadline(now);
    ASSERT_TRUE(next);
    EXPECT_TRUE(w.takeDue(*next - 1ms).empty());
    now = *next;
    ASSERT_EQ(w.takeDue(now).size(), 1u);
    resent.push_back(now);
  }
  std::vector<Clock::time_point> want = {t0 + 5s,   t0 + 25s,  t0 + 105s,
                                         t0 + 225s, t0 + 345s, t0 + 465s};
  EXPECT_EQ(resent, want);  // 5 s, x4, capped at 2 min
  EXPECT_TRUE(w.ack("a", "a1"));
  EXPECT_FALSE(w.nextDeadline(now).has_value() && w.takeDue(now + 1h).size() > 0);
  EXPECT_EQ(w.stats().resent, 6u);
}

TEST(EventWriter, JitterStretchesButNeverBeyondCap) {
  WriterOptions o;  // jitter 1.0
  EventWriter w(o, 42);
  w.enqueue(ev("create", "a", "a1"));
  w.takeDue(t0);
  auto d = *w.nextDeadline(t0) - t0;
  EXPECT_GE(d, 5s);
  EXPECT_LE(d, 10s);
  auto now = t0;
  for (int i = 0; i < 10; ++i) {
    now = *w.nextDeadline(now);
    w.takeDue(now);
  }
  EXPECT_LE(*w.nextDeadline(now) - now, 120s);
}

TEST(EventWriter, UpdatesCoalesceAndDeleteSupersedes) {
  EventWriter w(noJitter(), 1);
  w.enqueue(ev("create", "a", "c"));
  w.takeDue(t0);  // c in flight
  EXPECT_EQ(w.enqueue(ev("spec-update", "a", "s1")), EnqueueResult::kQueued);
  EXPECT_EQ(w.enqueue(ev("status-update", "a", "u1")), EnqueueResult::kQueued);
  EXPECT_EQ(w.enqueue(ev("spec-update", "a", "s2")), EnqueueResult::kCoalesced);
  EXPECT_EQ(w.enqueue(ev("status-update", "a", "u2")), EnqueueResult::kCoalesced);
  w.ack("a", "c");
  EXPECT_EQ(ids(w.takeDue(t0)), (std::vector<std::string>{"s2"}));
  w.ack("a", "s2");
  EXPECT_EQ(ids(w.takeDue(t0)), (std::vector<std::string>{"u2"}));
  // A delete drops the in-flight u2 and anything unsent, and goes out at once.
  w.enqueue(ev("spec-update", "a", "s3"));
  EXPECT_EQ(w.enqueue(ev("delete", "a", "d")), EnqueueResult::kSuperseded);
  EXPECT_EQ(ids(w.takeDue(t0)), (std::vector<std::string>{"d"}));
  EXPECT_FALSE(w.ack("a", "u2"));
  EXPECT_EQ(w.tracked(), 1u);
  EXPECT_EQ(w.stats().superseded, 2u);
}

TEST(EventWriter, LeasesAheadPerResourceAndNeverHandsAnEventTwice) {
  EventWriter w(noJitter(), 1);
  w.setLeaseAhead(2, 3);
  for (auto id : {"a1", "a2", "a3", "a4"}) w.enqueue(ev("create", "a", id));
  w.enqueue(ev("create", "b", "b1"));
  w.enqueue(ev("create", "b", "b2"));
  std::vector<Handed> why;
  EXPECT_EQ(ids(w.takeDue(t0, SIZE_MAX, &why)), (std::vector<std::string>{"a1", "b1"}));
  EXPECT_EQ(why, (std::vector<Handed>{Handed::kFirst, Handed::kFirst}));
  EXPECT_EQ(w.nextDeadline(t0), t0);  // something to lease ahead
  // Two per resource, three in all: a2 a3 b2.
  EXPECT_EQ(ids(w.takeAhead()), (std::vector<std::string>{"a2", "a3", "b2"}));
  EXPECT_EQ(w.leasedAhead(), 3u);
  EXPECT_TRUE(w.takeAhead().empty());
  EXPECT_NE(w.nextDeadline(t0), t0);  // only the re-sends are left to wait for
  // The edge sent a2 on a1's ACK, and a2's ACK arrived before anything was taken: it matches.
  EXPECT_TRUE(w.ack("a", "a1"));
  EXPECT_TRUE(w.ack("a", "a2", t0, 250us));
  EXPECT_EQ(w.stats().ackLatency.count(), 2u);
  // a3 becomes in flight without being handed out again; a4 may now be leased ahead.
  why.clear();
  EXPECT_TRUE(w.takeDue(t0, SIZE_MAX, &why).empty());
  EXPECT_EQ(ids(w.takeAhead()), (std::vector<std::string>{"a4"}));
  EXPECT_TRUE(w.ack("a", "a3"));
  EXPECT_TRUE(w.ack("a", "a4"));
  EXPECT_FALSE(w.ack("a", "a4"));  // twice: no effect
  EXPECT_EQ(w.tracked(), 2u);      // b1 in flight, b2 leased ahead
  EXPECT_EQ(w.stats().sent, 6u);   // each event counted once
}

TEST(EventWriter, CoalescingSparesWhatWasLeasedAheadAndDeleteOrReconnectReturnsIt) {
  EventWriter w(noJitter(), 1);
  w.setLeaseAhead(4, 100);
  w.enqueue(ev("create", "a", "c"));
  w.takeDue(t0);
  w.enqueue(ev("spec-update", "a", "s1"));
  EXPECT_EQ(ids(w.takeAhead()), (std::vector<std::string>{"s1"}));
  // s1 is at the edge: s2 queues behind it instead of replacing it.
  EXPECT_EQ(w.enqueue(ev("spec-update", "a", "s2")), EnqueueResult::kQueued);
  EXPECT_EQ(w.enqueue(ev("spec-update", "a", "s3")), EnqueueResult::kCoalesced);
  // A new stream: nothing is leased ahead any more, c is due again, s1 and s3 can be leased.
  w.onReconnect(t0);
  EXPECT_EQ(w.leasedAhead(), 0u);
  std::vector<Handed> why;
  EXPECT_EQ(ids(w.takeDue(t0, SIZE_MAX, &why)), (std::vector<std::string>{"c"}));
  EXPECT_EQ(why, (std::vector<Handed>{Handed::kResend}));
  EXPECT_EQ(ids(w.takeAhead()), (std::vector<std::string>{"s1", "s3"}));
  // A delete supersedes the in-flight event and what was leased ahead, and is handed first.
  EXPECT_EQ(w.enqueue(ev("delete", "a", "d")), EnqueueResult::kSuperseded);
  EXPECT_EQ(w.leasedAhead(), 0u);
  why.clear();
  EXPECT_EQ(ids(w.takeDue(t0, SIZE_MAX, &why)), (std::vector<std::string>{"d"}));
  EXPECT_EQ(why, (std::vector<Handed>{Handed::kFirst}));
  EXPECT_FALSE(w.ack("a", "s1"));
  EXPECT_TRUE(w.ack("a", "d"));
  EXPECT_EQ(w.tracked(), 0u);
}

TEST(EventWriter, UntrackedGoFirstAndAreNotTracked) {
  EventWriter w(noJitter(), 1);
  for (int i = 0; i < 5; ++i) w.enqueue(ev("create", "r" + std::to_string(i), "e"));
  Event hb;
  hb.set_type(std::string(ce::kPing));
  w.enqueueUntracked(hb);
  auto out = w.takeDue(t0, 2);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].type(), ce::kPing);
  EXPECT_EQ(w.tracked(), 5u);
}

TEST(EventWriter, StampsSentatOnEverySendOfATrackedEventOnly) {
  EventWriter w(noJitter(), 1);
  w.enqueue(ev("create", "a", "a1"));
  Event hb;
  hb.set_type(std::string(ce::kPing));
  w.enqueueUntracked(hb);
  auto before = std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  auto out = w.takeDue(t0);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(ce::stringAttr(out[0], "sentat"), "") << "a heartbeat (untracked) is not stamped";
  auto first = ce::parseRfc3339Nanos(ce::stringAttr(out[1], "sentat"));
  ASSERT_TRUE(first) << ce::stringAttr(out[1], "sentat");
  EXPECT_GE(*first, before);
  auto resent = w.takeDue(t0 + 1h);  // its re-send, stamped anew
  ASSERT_EQ(resent.size(), 1u);
  auto second = ce::parseRfc3339Nanos(ce::stringAttr(resent[0], "sentat"));
  ASSERT_TRUE(second);
  EXPECT_GE(*second, *first);
}

TEST(EventWriter, BoundedWithoutDroppingAnything) {
  WriterOptions o = noJitter();
  o.capacity = 3;
  EventWriter w(o, 1);
  EXPECT_EQ(w.enqueue(ev("create", "a", "1")), EnqueueResult::kQueued);
  EXPECT_EQ(w.enqueue(ev("create", "b", "1")), EnqueueResult::kQueued);
  EXPECT_EQ(w.enqueue(ev("spec-update", "c", "1")), EnqueueResult::kQueued);
  EXPECT_EQ(w.enqueue(ev("create", "d", "1")), EnqueueResult::kFull);
  EXPECT_EQ(w.enqueue(ev("spec-update", "c", "2")), EnqueueResult::kCoalesced);  // no growth
  EXPECT_TRUE(w.full());
  EXPECT_EQ(ids(w.takeDue(t0)), (std::vector<std::string>{"1", "1", "2"}));  // nothing lost
  w.ack("a", "1");
  EXPECT_EQ(w.enqueue(ev("create", "d", "1")), EnqueueResult::kQueued);
  EXPECT_EQ(w.stats().rejectedFull, 1u);
}

TEST(EventWriter, ReconnectMakesInFlightDueImmediately) {
  EventWriter w(noJitter(), 1);
  w.enqueue(ev("create", "a", "a1"));
  w.enqueue(ev("create", "b", "b1"));
  w.takeDue(t0);
  w.ack("b", "b1");
  EXPECT_TRUE(w.takeDue(t0 + 1s).empty());
  w.onReconnect(t0 + 1s);
  EXPECT_EQ(ids(w.takeDue(t0 + 1s)), (std::vector<std::string>{"a1"}));
}

TEST(EventWriter, RejectsEventsWithoutIds) {
  EventWriter w;
  Event e = ev("create", "a", "x");
  e.mutable_attributes()->erase("eventid");
  EXPECT_EQ(w.enqueue(e), EnqueueResult::kInvalid);
  Event f = ev("create", "a", "x");
  (*f.mutable_attributes())["resourceid"].set_ce_uri("a");  // wrong kind
  EXPECT_EQ(w.enqueue(f), EnqueueResult::kInvalid);
}

TEST(LatencyHistogram, QuantilesWithinBucketWidth) {
  LatencyHistogram h;
  EXPECT_EQ(h.quantile(0.5).count(), 0);
  for (int i = 1; i <= 1000; ++i) h.record(std::chrono::microseconds(i));
  auto p50 = h.quantile(0.5).count(), p99 = h.quantile(0.99).count();
  EXPECT_GE(p50, 500);
  EXPECT_LE(p50, 530);
  EXPECT_GE(p99, 990);
  EXPECT_LE(p99, 1045);
}

TEST(EventWriter, RecordsAckLatencyFromFirstSend) {
  EventWriter w(noJitter(), 1);
  w.enqueue(ev("create", "a", "a1"));
  w.takeDue(t0);
  w.takeDue(t0 + 5s);  // a re-send does not restart the clock
  w.ack("a", "a1", t0 + 6s);
  EXPECT_EQ(w.stats().ackLatency.count(), 1u);
  EXPECT_GE(w.stats().ackLatency.quantile(0.5), 6s);
}

TEST(ReceiveLedger, DuplicatesAreRecognisedPerResource) {
  ReceiveLedger l(2);
  EXPECT_FALSE(l.seen("a", "1"));
  l.record("a", "1");
  EXPECT_TRUE(l.seen("a", "1"));
  EXPECT_FALSE(l.seen("b", "1"));
  l.record("a", "2");
  l.record("a", "3");
  EXPECT_FALSE(l.seen("a", "1"));  // bounded memory
}

}  // namespace
}  // namespace aa::delivery
