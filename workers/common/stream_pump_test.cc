// The Outbox and pumpStream across their threads, against a stand-in for grpc's sync stream:
// producers wait on a full Outbox until the peer's ACKs make room, the pump's writer thread drains
// the Outbox while its reader thread applies the peer's events and queues their ACKs. Nothing
// here orders the threads but the code under test, so ThreadSanitizer (build-tsan/, tools/test.sh)
// sees exactly the Outbox's own synchronisation.
#include "workers/common/stream_pump.h"

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "workers/common/cloudevents.h"

namespace aa::delivery {
namespace {

constexpr auto kTimeout = std::chrono::seconds(60);  // a hang fails the test instead of CTest

// Like a grpc++ ServerReaderWriter/ClientReaderWriter: one thread may Read while another Writes.
class FakeStream {
 public:
  bool Write(const eventstreamapi::Event& msg, const grpc::WriteOptions&) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    written_.push_back(msg.event());
    cv_.notify_all();
    return true;
  }
  bool Read(eventstreamapi::Event* msg) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return closed_ || !toPump_.empty(); });
    if (toPump_.empty()) return false;
    *msg->mutable_event() = std::move(toPump_.front());
    toPump_.pop_front();
    return true;
  }

  // The peer's side.
  void send(Event e) {
    std::lock_guard<std::mutex> lock(mu_);
    toPump_.push_back(std::move(e));
    cv_.notify_all();
  }
  std::optional<Event> next() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, kTimeout, [&] { return !written_.empty(); })) return std::nullopt;
    Event e = std::move(written_.front());
    written_.pop_front();
    return e;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> toPump_, written_;
  bool closed_ = false;
};

class CountingSink final : public Sink {
 public:
  Result apply(const Event&, std::string&) override {
    ++applied;
    return Result::kApplied;
  }
  int applied = 0;  // the pump's reader thread only
};

Event create(const std::string& resource, const std::string& id) {
  return ce::makeResourceEvent("create", "application", "argocd/" + resource, resource, id, "{}",
                               "test");
}

TEST(StreamPump, ProducersWaitForAcksWhileThePeerSendsToo) {
  constexpr int kProducers = 2, kPerProducer = 60, kFromPeer = 30;
  WriterOptions options;
  options.capacity = 4;                              // producers must wait for ACKs
  options.initialResend = std::chrono::minutes(10);  // no re-sends within the test
  Outbox outbox(options);
  FakeStream stream;
  CountingSink sink;
  ReceiveLedger ledger;
  std::mutex ledgerMu;

  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        auto r = outbox.enqueue(create("p" + std::to_string(p) + "-" + std::to_string(i), "e1"),
                                std::chrono::duration_cast<std::chrono::milliseconds>(kTimeout));
        EXPECT_EQ(r, EnqueueResult::kQueued) << "producer " << p << " event " << i;
      }
    });
  }
  // The stream opens only once a producer waits: it then fills up again while ACKs come back.
  auto deadline = std::chrono::steady_clock::now() + kTimeout;
  while (outbox.backpressureWaits() == 0) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no producer waited on a full Outbox";
    std::this_thread::yield();
  }
  PumpStats stats;
  std::thread pump(
      [&] { stats = pumpStream(stream, outbox, sink, ledger, ledgerMu, "test", "peer"); });
  for (int i = 0; i < kFromPeer; ++i) stream.send(create("peer-" + std::to_string(i), "e1"));

  // The peer: ACK every business event, collect the ACKs of its own.
  std::set<std::string> delivered, ackedByPump;
  while (delivered.size() < size_t{kProducers * kPerProducer} || ackedByPump.size() < kFromPeer) {
    auto e = stream.next();
    ASSERT_TRUE(e) << "nothing written for " << kTimeout.count() << " s: " << delivered.size()
                   << " delivered, " << ackedByPump.size() << " ACKs";
    std::string resource = ce::stringAttr(*e, "resourceid");
    if (e->type() == ce::kProcessed) {
      EXPECT_TRUE(ackedByPump.insert(resource).second) << "second ACK for " << resource;
    } else {
      EXPECT_TRUE(delivered.insert(resource).second) << "re-sent " << resource;
      stream.send(ce::makeAck(*e, "peer"));
    }
  }
  for (auto& t : producers) t.join();
  stream.close();
  pump.join();

  EXPECT_EQ(stats.applied, uint64_t{kFromPeer});
  EXPECT_EQ(stats.acksReceived, uint64_t{kProducers * kPerProducer});
  EXPECT_EQ(sink.applied, kFromPeer);
  EXPECT_EQ(outbox.stats().acked, uint64_t{kProducers * kPerProducer});
  EXPECT_EQ(outbox.tracked(), 0u);
}

// A deferred sink answers later, from its own thread (as the agent's cache worker link does).
class DeferredSink final : public Sink {
 public:
  Result apply(const Event&, std::string&) override { return Result::kRetry; }
  bool deferred() const override { return true; }
  void applyLater(const Event& e, Done done) override {
    std::lock_guard<std::mutex> lock(mu);
    pending.emplace_back(ce::stringAttr(e, "resourceid"), std::move(done));
    cv.notify_all();
  }
  // Waits for `n` pending events and answers each with what `verdict` says for its resource.
  void answer(size_t n, const std::function<Result(const std::string&)>& verdict) {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kTimeout, [&] { return pending.size() >= n; }));
    auto taken = std::move(pending);
    pending.clear();
    lock.unlock();
    std::thread([&taken, &verdict] {
      for (auto& [resource, done] : taken) done(verdict(resource));
    }).join();
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<std::string, Done>> pending;
};

TEST(StreamPump, ADeferredSinkIsAckedOnlyWhenItAnswersAndNeverForRetry) {
  Outbox outbox;
  FakeStream stream;
  DeferredSink sink;
  ReceiveLedger ledger;
  std::mutex ledgerMu;
  std::vector<std::tuple<std::string, Processed>> outcomes;
  std::mutex outcomesMu;
  PumpStats stats;
  std::thread pump([&] {
    stats = pumpStream(stream, outbox, sink, ledger, ledgerMu, "test", "peer", nullptr, nullptr,
                       [&](const std::string& target, Processed p, std::chrono::nanoseconds) {
                         std::lock_guard<std::mutex> lock(outcomesMu);
                         outcomes.emplace_back(target, p);
                       });
  });
  for (const char* r : {"applied", "duplicate", "retry", "rejected"}) stream.send(create(r, "e1"));
  stream.send(create("applied", "e1"));  // the same event again: the sink decides, not the pump
  sink.answer(5, [](const std::string& r) {
    return r == "applied"     ? Sink::Result::kApplied
           : r == "duplicate" ? Sink::Result::kDuplicate
           : r == "retry"     ? Sink::Result::kRetry
                              : Sink::Result::kRejected;
  });
  std::multiset<std::string> acked;
  for (int i = 0; i < 4; ++i) {
    auto e = stream.next();
    ASSERT_TRUE(e) << "only " << acked.size() << " ACKs";
    EXPECT_EQ(e->type(), ce::kProcessed);
    acked.insert(ce::stringAttr(*e, "resourceid"));
  }
  stream.close();
  pump.join();
  EXPECT_EQ(acked, (std::multiset<std::string>{"applied", "applied", "duplicate", "rejected"}));
  EXPECT_EQ(stats.deferred, 5u);
  EXPECT_EQ(stats.applied, 0u);  // the pump applied nothing itself
  std::lock_guard<std::mutex> lock(outcomesMu);
  ASSERT_EQ(outcomes.size(), 5u);
  int success = 0, discarded = 0, failure = 0;
  for (const auto& [target, p] : outcomes) {
    EXPECT_EQ(target, "application");
    success += p == Processed::kSuccess;
    discarded += p == Processed::kDiscarded;
    failure += p == Processed::kFailure;
  }
  EXPECT_EQ(success, 2);
  EXPECT_EQ(discarded, 1);
  EXPECT_EQ(failure, 2);  // retry and rejected
}

}  // namespace
}  // namespace aa::delivery
