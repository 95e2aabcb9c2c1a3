// The agent's delivery state lives in its cache worker, not in the transport: every event from
// the principal is applied there, through the cache worker's receive ledger, and ACKed only once
// the cache worker answered (ipc/agentstate.capnp AgentStore, the contract the principal's
// listeners use, under the name "principal"). A crash of the transport therefore loses nothing
// it acknowledged and re-applies nothing: what the principal re-sends after the crash meets the
// same ledger. A broken link to the cache worker holds the ACKs (the stream stays up; the
// principal re-sends what stays unacknowledged) and the batch is sent again once it is back.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <kj/async-io.h>

#include "ipc/agentstate.capnp.h"
#include "workers/common/mailbox.h"
#include "workers/common/service_link.h"
#include "workers/common/stream_pump.h"

namespace aa {

class CacheSink final : public delivery::Sink, private kj::TaskSet::ErrorHandler {
 public:
  // KJ thread. `socketPath`: the cache worker's service socket.
  CacheSink(kj::AsyncIoContext& io, kj::Timer& timer, std::string socketPath);

  // Sink: always deferred.
  Result apply(const delivery::Event&, std::string& problem) override {
    problem = "the transport applies through its cache worker";
    return Result::kRetry;
  }
  bool deferred() const override { return true; }
  // Any thread: queued for the KJ thread, which sends it in the next batch.
  void applyLater(const delivery::Event& event, Done done) override;

  // For the status line (any thread).
  std::string describe() const;

  // Events held at most while the cache worker does not answer; more get no ACK (re-sent by
  // the principal later).
  static constexpr size_t kMaxWaiting = 10000;
  // Batches sent and not yet answered at once.
  static constexpr size_t kMaxOutstanding = 8;

 private:
  struct Pending {
    std::string resource, eventId, bytes;
    Done done;
  };
  void taskFailed(kj::Exception&& e) override;
  void flush();  // KJ thread
  kj::Promise<ipc::AgentSession::Client> session();
  void linkBroke(const kj::Exception& e);

  kj::Timer& timer_;
  Mailbox mailbox_;
  ServiceLink cache_;
  kj::Maybe<ipc::AgentSession::Client> session_;          // KJ thread
  std::vector<Pending> waiting_;                          // KJ thread: for the next batch
  std::map<uint64_t, std::vector<Pending>> outstanding_;  // KJ thread: sent, not answered
  uint64_t nextSeq_ = 0;                                  // KJ thread
  bool down_ = false;                                     // KJ thread
  bool retryWait_ = false;                                // KJ thread: a retry is scheduled
  std::chrono::milliseconds retryDelay_{0};               // KJ thread: doubles while it fails
  std::chrono::steady_clock::time_point downSince_{};
  mutable std::mutex mu_;  // the counters below, for describe()
  uint64_t applied_ = 0, duplicates_ = 0, held_ = 0, dropped_ = 0;
  kj::Promise<void> loop_ = nullptr;
  kj::TaskSet tasks_{*this};
};

}  // namespace aa
