// The transport's side of the agent's delivery state (state_link.h).
#include "workers/transport/state_link.h"

#include <algorithm>

#include <kj/debug.h>

#include "ipc/runtime/log.h"
#include "workers/common/cloudevents.h"

namespace aa {
namespace {

// Longer than the cache worker's wait for Redis at start (10 s): an open waits for the restore.
constexpr auto kOpenDeadline = 15 * kj::SECONDS;
constexpr std::chrono::milliseconds kBackoffFirst{100}, kBackoffMax{2000};

// The agent has one stream; the cache worker never needs to close it.
class NoControl final : public ipc::StreamControl::Server {
 protected:
  kj::Promise<void> close(CloseContext) override { return kj::READY_NOW; }
};

}  // namespace

CacheSink::CacheSink(kj::AsyncIoContext& io, kj::Timer& timer, std::string socketPath)
    : timer_(timer), mailbox_(io.unixEventPort), cache_(io, std::move(socketPath), "cache") {
  loop_ = mailbox_.run([this]() { flush(); }).eagerlyEvaluate([](kj::Exception&& e) {
    spdlog::error("transport: the cache link's mailbox failed: {}", e.getDescription().cStr());
  });
}

void CacheSink::taskFailed(kj::Exception&& e) {
  spdlog::error("transport: cache link: {}", e.getDescription().cStr());
}

void CacheSink::applyLater(const delivery::Event& event, Done done) {
  Pending p{
      ce::stringAttr(event, "resourceid"), ce::stringAttr(event, "eventid"), {}, std::move(done)};
  event.SerializeToString(&p.bytes);
  mailbox_.post([this, p = std::move(p)]() mutable {
    if (waiting_.size() >= kMaxWaiting) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++dropped_;
      }
      p.done(Result::kRetry);  // no ACK: the principal sends it again
      return;
    }
    waiting_.push_back(std::move(p));
  });
}

kj::Promise<ipc::AgentSession::Client> CacheSink::session() {
  KJ_IF_MAYBE (s, session_) {
    return *s;
  }
  auto opening = cache_.get().then([](capnp::Capability::Client cap) {
    auto req = cap.castAs<ipc::AgentStore>().openRequest();
    req.setAgent("principal");
    req.setListener("transport");
    req.setControl(kj::heap<NoControl>());
    return req.send();
  });
  return timer_.timeoutAfter(kOpenDeadline, kj::mv(opening))
      .then([this](capnp::Response<ipc::AgentStore::OpenResults> r) {
        ipc::AgentSession::Client s = r.getSession();
        session_ = s;
        return s;
      });
}

void CacheSink::flush() {
  // Batches are pipelined (the cache worker answers them in order: one capability, E-order), up
  // to kMaxOutstanding; the first one also opens the session, and the others wait for it.
  if (retryWait_ || waiting_.empty() || outstanding_.size() >= kMaxOutstanding) return;
  if (session_ == nullptr && !outstanding_.empty()) return;
  uint64_t seq = nextSeq_++;
  outstanding_.emplace(seq, std::move(waiting_));
  waiting_.clear();
  tasks_.add(session()
                 .then([this, seq](ipc::AgentSession::Client s) {
                   auto req = s.receivedRequest();
                   auto it = outstanding_.find(seq);
                   KJ_REQUIRE(it != outstanding_.end(), "batch requeued");
                   auto& b = it->second;
                   auto list = req.initEvents(b.size());
                   for (size_t i = 0; i < b.size(); ++i) {
                     list[i].setResourceId(b[i].resource);
                     list[i].setEventId(b[i].eventId);
                     list[i].setEvent(kj::arrayPtr(
                         reinterpret_cast<const kj::byte*>(b[i].bytes.data()), b[i].bytes.size()));
                   }
                   auto sent = req.send();
                   flush();  // the session exists now: what waits may follow at once
                   return sent;
                 })
                 .then(
                     [this, seq](capnp::Response<ipc::AgentSession::ReceivedResults> r) {
                       auto it = outstanding_.find(seq);
                       if (it == outstanding_.end()) return;  // requeued by a broken link
                       auto b = std::move(it->second);
                       outstanding_.erase(it);
                       auto verdicts = r.getVerdicts();
                       if (down_) {
                         spdlog::info("cache worker link back after {}ms: acknowledging again",
                                      std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::steady_clock::now() - downSince_)
                                          .count());
                         down_ = false;
                       }
                       retryDelay_ = std::chrono::milliseconds(0);
                       uint64_t applied = 0, duplicates = 0;
                       for (size_t i = 0; i < b.size(); ++i) {
                         auto v = i < verdicts.size() ? verdicts[i] : ipc::Verdict::RETRY;
                         Result result = v == ipc::Verdict::APPLIED     ? Result::kApplied
                                         : v == ipc::Verdict::DUPLICATE ? Result::kDuplicate
                                         : v == ipc::Verdict::REJECTED  ? Result::kRejected
                                                                        : Result::kRetry;
                         applied += result == Result::kApplied;
                         duplicates += result == Result::kDuplicate;
                         b[i].done(result);
                       }
                       {
                         std::lock_guard<std::mutex> lock(mu_);
                         applied_ += applied;
                         duplicates_ += duplicates;
                         held_ = 0;
                       }
                       flush();
                     },
                     [this, seq](kj::Exception&& e) {
                       if (outstanding_.count(seq) != 0) linkBroke(e);
                     }));
}

void CacheSink::linkBroke(const kj::Exception& e) {
  session_ = nullptr;
  cache_.reset();
  if (!down_) {
    down_ = true;
    downSince_ = std::chrono::steady_clock::now();
    spdlog::warn(
        "the link to the cache worker broke ({}): the stream stays up, events from the "
        "principal wait for their ACK until it is back",
        e.getDescription().cStr());
  }
  // Every batch not answered goes first again, in its order; the ledger there tells what it
  // applied already.
  std::vector<Pending> again;
  for (auto& [seq, b] : outstanding_) {
    again.insert(again.end(), std::make_move_iterator(b.begin()), std::make_move_iterator(b.end()));
  }
  outstanding_.clear();
  again.insert(again.end(), std::make_move_iterator(waiting_.begin()),
               std::make_move_iterator(waiting_.end()));
  waiting_ = std::move(again);
  {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = waiting_.size();
  }
  retryDelay_ = std::min(kBackoffMax, retryDelay_.count() == 0 ? kBackoffFirst : retryDelay_ * 2);
  retryWait_ = true;
  tasks_.add(timer_.afterDelay(retryDelay_.count() * kj::MILLISECONDS).then([this]() {
    retryWait_ = false;
    flush();
  }));
}

std::string CacheSink::describe() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string s = "state in the cache worker: " + std::to_string(applied_) + " applied, " +
                  std::to_string(duplicates_) + " duplicates";
  if (held_ > 0) s += ", " + std::to_string(held_) + " held while the link was down";
  if (dropped_ > 0) s += ", " + std::to_string(dropped_) + " left unacknowledged (queue full)";
  return s;
}

}  // namespace aa
