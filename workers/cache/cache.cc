// The cache worker. Principal: every agent's delivery state (ipc/agentstate.capnp AgentStore),
// so that listener workers own only live streams and a listener crash loses nothing
// (ARCHITECTURE.md decision 17): per agent, the EventWriter of events not yet sent or not yet
// acknowledged, the receive ledger that suppresses re-applied duplicates, the sink of applied
// events (--event-log) and the synthetic source's position (--synthetic-events). In memory, and
// with --redis-server-address in Redis too (agent_journal.h), loaded at start.
// With --redis-server-address it writes Argo CD's cluster info per agent (redis_link.h,
// cluster_info.h) at connect, at disconnect and every 3 minutes.
// Agent side: a supervised skeleton (its Redis cache is a later issue too).
//
// Single-threaded: everything runs on the worker's KJ loop; one kj timer per waiting session.
#include <cstring>
#include <map>
#include <set>

#include <hiredis/read.h>
#include <kj/debug.h>

#include "eventstream.pb.h"
#include "ipc/agentstate.capnp.h"
#include "ipc/runtime/log.h"
#include "workers/cache/agent_journal.h"
#include "workers/cache/cluster_info.h"
#include "workers/cache/redis_link.h"
#include "workers/common/cloudevents.h"
#include "workers/common/gzip.h"
#include "workers/common/role.h"
#include "workers/common/service_link.h"
#include "workers/common/synthetic.h"

namespace aa {
namespace {

using delivery::Clock;
// A waiting next() is answered empty after this long and asked again. Nothing needs the answer (a
// broken link fails the call at once); it only bounds how long one call stays open. Each answer
// is a round trip per idle stream: at 30 s that was ~330 a second for 10,000 idle agents.
constexpr auto kIdleNext = 300 * kj::SECONDS;
constexpr uint32_t kMaxBatch = 1024;
// Leasing ahead (AgentSession.next): at most this many per resource, and per stream in all (what
// a listener holds for one busy stream: 256 events, 4 MiB at 16 KiB each).
constexpr uint32_t kMaxAheadPerResource = 16;
constexpr size_t kMaxAhead = 256;
constexpr auto kRestoreWait = 10 * kj::SECONDS;  // streams wait this long for Redis at start
// The agent's cache worker keeps one state, of its stream from the principal, under this name.
constexpr const char* kPeer = "principal";

kj::Duration toKj(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count() * kj::NANOSECONDS;
}

class SessionImpl;

struct AgentState {
  AgentState(const std::string& n, const Config& c)
      : name(n), writer(delivery::WriterOptions{static_cast<size_t>(c.common.sendQueueSize)}) {}
  std::string name;
  delivery::EventWriter writer;
  delivery::ReceiveLedger ledger;
  SessionImpl* session = nullptr;  // the newest stream's lease, if any
  std::string listener;            // where that stream is
  uint64_t sourceNext = 0;         // the synthetic source's position: next event to produce
  uint32_t streams = 0;            // streams opened (reconnects + 1), across listener restarts
  bool sourceStarted = false, sourceReported = false;
  Clock::time_point sourceStart{};
};

class Store;

class SessionImpl final : public ipc::AgentSession::Server {
 public:
  // Holds the store: at exit, pending calls (and so sessions) outlive the role and are destroyed
  // only with the event loop.
  SessionImpl(std::shared_ptr<Store> store, AgentState& agent)
      : keep_(store), store_(*store), agent_(agent) {}
  ~SessionImpl() noexcept(false);

  kj::Promise<void> next(NextContext context) override;
  kj::Promise<void> acked(AckedContext context) override;
  kj::Promise<void> received(ReceivedContext context) override;

  // Something may be due now (an ACK freed a resource, the source produced, a re-send is due).
  void kick();
  void supersede() {
    superseded_ = true;
    wake();
  }

 private:
  bool fill(NextContext& context, uint32_t max, uint32_t ahead);
  void wake() {
    KJ_IF_MAYBE (f, waiting_) {
      (*f)->fulfill();
      waiting_ = nullptr;
    }
  }
  std::shared_ptr<Store> keep_;
  Store& store_;
  AgentState& agent_;
  bool superseded_ = false;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> waiting_;
};

class StoreImpl;

class Store {
 public:
  // The principal's store holds every agent's state (and writes Argo CD's cluster info); the
  // agent's holds its own, under the name "principal": what it received and applied.
  Store(const Config& config, kj::Timer& timer, kj::UnixEventPort& port,
        const std::string& runtimeDir)
      : config_(config),
        principal_(config.side == Side::kPrincipal),
        redisConfig_(principal_ ? config.principal.redis : config.agent.redis),
        timer_(timer),
        sink_(config.common.eventLog) {
    if (principal_ && !config.principal.syntheticEvents.empty()) {
      synthetic_ = delivery::parseSyntheticSpec(config.principal.syntheticEvents);
    }
    const RedisConfig& r = redisConfig_;
    if (!r.address.empty()) {
      RedisLink::Options o;
      o.host = r.host;
      o.port = r.port;
      o.password = r.password;
      o.username = r.username;
      o.tls = r.tls;
      o.tlsCaPath = r.caPath;
      o.tlsInsecure = r.tlsInsecure;
      o.tlsSocket = runtimeDir + "/redis-tls.sock";
      auto restored = kj::newPromiseAndFulfiller<void>();
      restored_ = restored.promise.fork();
      restoredFulfiller_ = kj::mv(restored.fulfiller);
      redis_ = std::make_unique<RedisLink>(port, timer, std::move(o), [this]() { onRedisReady(); });
      rewrite_ = rewriteLoop().eagerlyEvaluate(nullptr);
      // Streams wait for the state kept in Redis, but not for ever: an unreachable Redis at
      // start must not keep agents out.
      tasks_.add(timer_.afterDelay(kRestoreWait).then([this]() {
        if (restoredFulfiller_->isWaiting()) {
          spdlog::warn(
              "agent state: Redis did not answer within {}s; serving from memory. Agents that "
              "have not connected yet get their state from Redis once it answers",
              kRestoreWait / kj::SECONDS);
          restoredFulfiller_->fulfill();
        }
      }));
    }
  }

  // Resolves once the agents' state kept in Redis is loaded (at once without Redis, and after
  // kRestoreWait at most): streams are opened only then.
  kj::Promise<void> restored() { return redis_ ? restored_.addBranch() : kj::READY_NOW; }

  // SIGTERM: what is pipelined to Redis reaches it before the worker exits (bounded).
  kj::Promise<void> flush(kj::TimePoint deadline) {
    if (!redis_ || !redis_->ready() || redis_->pendingWrites() == 0 || timer_.now() >= deadline) {
      return kj::READY_NOW;
    }
    return timer_.afterDelay(10 * kj::MILLISECONDS).then([this, deadline]() {
      return flush(deadline);
    });
  }

  // ---- the agents' delivery state in Redis (agent_journal.h); all no-ops without Redis ----

  // The writer changed for `resources` (enqueued, acknowledged): their tracked events, or their
  // field deleted once nothing is tracked; with the source's position when `withSource`.
  void journalOutbox(const AgentState& a, const std::set<std::string>& resources, bool withSource) {
    if (!redis_ || !redis_->ready()) return;
    std::string key = journal::key(a.name);
    std::vector<std::string> hset = {"HSET", key}, hdel = {"HDEL", key};
    for (const auto& r : resources) {
      auto events = a.writer.trackedEvents(r);
      if (events.empty()) {
        hdel.push_back(journal::outField(r));
      } else {
        hset.push_back(journal::outField(r));
        hset.push_back(journal::encodeEvents(events, redisConfig_.gzip));
      }
    }
    if (withSource) {
      hset.push_back("source");
      hset.push_back(std::to_string(a.sourceNext));
    }
    if (hset.size() > 2) redis_->send(hset);
    if (hdel.size() > 2) redis_->send(hdel);
  }

  // The ledger of `resources` changed (events applied): resolves once Redis has it, so that an
  // ACK the listener sends afterwards stands for a durable state (at once while Redis is down:
  // degraded, memory only).
  kj::Promise<void> journalLedger(const AgentState& a, const std::set<std::string>& resources) {
    if (!redis_ || !redis_->ready() || resources.empty()) return kj::READY_NOW;
    std::vector<std::string> hset = {"HSET", journal::key(a.name)};
    for (const auto& r : resources) {
      if (const auto* ids = a.ledger.recent(r)) {
        hset.push_back(journal::inField(r));
        hset.push_back(journal::encodeIds(*ids, redisConfig_.gzip));
      }
    }
    return redis_->command(std::move(hset)).ignoreResult();
  }

  void journalStreams(const AgentState& a) {
    if (!redis_ || !redis_->ready()) return;
    redis_->send({"HSET", journal::key(a.name), "streams", std::to_string(a.streams)});
  }

  // Every agent's whole state, replacing what Redis holds (after a reconnect: writes during the
  // outage were dropped).
  void journalAll() {
    if (!redis_ || !redis_->ready()) return;
    for (auto& [name, a] : agents_) {
      std::string key = journal::key(name);
      std::vector<std::string> hset = {"HSET",    key,
                                       "source",  std::to_string(a->sourceNext),
                                       "streams", std::to_string(a->streams)};
      for (const auto& r : a->writer.trackedResources()) {
        hset.push_back(journal::outField(r));
        hset.push_back(journal::encodeEvents(a->writer.trackedEvents(r), redisConfig_.gzip));
      }
      a->ledger.forEach([&](const std::string& r, const std::deque<std::string>& ids) {
        hset.push_back(journal::inField(r));
        hset.push_back(journal::encodeIds(ids, redisConfig_.gzip));
      });
      redis_->send({"DEL", key});
      redis_->send(hset);
    }
  }

  // Argo CD's cluster info for `a` (connected: it has a stream), when Redis is configured.
  void writeClusterInfo(const AgentState& a) {
    if (!principal_ || !redis_ || !redis_->ready()) return;
    const auto& p = config_.principal;
    std::string value =
        clusterinfo::value(a.name, a.session != nullptr, std::chrono::system_clock::now());
    if (p.redis.gzip) value = gzip::compress(value);
    redis_->setex(
        clusterinfo::key(clusterinfo::serverUrl(p.resourceProxyAddress, a.name), p.redis.gzip),
        value, static_cast<int>(clusterinfo::kTtl.count()));
  }
  // After every (re)connect: Redis may have lost everything.
  void writeAllClusterInfo() {
    for (auto& [n, a] : agents_) writeClusterInfo(*a);
  }

  void onRedisReady() {
    writeAllClusterInfo();
    if (restoreStarted_) {
      journalAll();
      return;
    }
    restoreStarted_ = true;
    auto tally = std::make_shared<RestoreTally>();
    tasks_.add(restoreFrom("0", tally)
                   .then(
                       [this, tally]() {
                         spdlog::info(
                             "agent state: restored {} agent(s) from Redis ({} unacknowledged "
                             "event(s), {} skipped: newer in memory){}",
                             tally->agents, tally->events, tally->skipped,
                             tally->problems ? ", " + std::to_string(tally->problems) +
                                                   " unreadable value(s) left out"
                                             : std::string());
                       },
                       [](kj::Exception&& e) {
                         spdlog::warn("agent state: restoring from Redis failed: {}",
                                      e.getDescription().cStr());
                       })
                   .then([this]() {
                     journalAll();  // what connected meanwhile, and the restored, in one form
                     if (restoredFulfiller_->isWaiting()) restoredFulfiller_->fulfill();
                   }));
  }

  kj::Timer& timer() { return timer_; }
  delivery::MemorySink& sink() { return sink_; }
  bool principalSide() const { return principal_; }
  const RedisConfig& redisConfig() const { return redisConfig_; }

  AgentState& agent(const std::string& name) {
    auto& a = agents_[name];
    if (!a) a = std::make_unique<AgentState>(name, config_);
    return *a;
  }

  // Tops the agent's writer up from the synthetic source; logs once everything was ACKed.
  void produce(AgentState& a) {
    if (!synthetic_ || a.name.rfind(synthetic_->agentPrefix, 0) != 0) return;
    if (!a.sourceStarted) {
      a.sourceStarted = true;
      a.sourceStart = Clock::now();
    }
    std::set<std::string> touched;
    while (a.sourceNext < synthetic_->count && !a.writer.full()) {
      auto e = delivery::syntheticEvent(*synthetic_, a.sourceNext++);
      if (redis_) touched.insert(ce::stringAttr(e, "resourceid"));
      a.writer.enqueue(std::move(e));
    }
    if (!touched.empty()) journalOutbox(a, touched, /*withSource=*/true);
    if (a.sourceNext == synthetic_->count && a.writer.tracked() == 0 && !a.sourceReported) {
      a.sourceReported = true;
      auto ms = std::chrono::duration<double, std::milli>(Clock::now() - a.sourceStart);
      const auto& st = a.writer.stats();
      spdlog::info(
          "synthetic source: {} events acknowledged by agent {} in {:.0f}ms ({:.0f} "
          "events/s); ACK latency p50 {}us p99 {}us; re-sent {}",
          synthetic_->count, a.name, ms.count(),
          synthetic_->count * 1000.0 / std::max(ms.count(), 1.0),
          st.ackLatency.quantile(0.5).count(), st.ackLatency.quantile(0.99).count(), st.resent);
    }
  }

  std::vector<AgentDirectory::AgentView> views() {
    std::vector<AgentDirectory::AgentView> out;
    for (auto& [name, a] : agents_) {
      AgentDirectory::AgentView v;
      v.name = name;
      v.unacknowledged = a->writer.tracked();
      v.streams = a->streams;
      out.push_back(std::move(v));
    }
    return out;
  }

  std::string describe() {
    if (!principal_) {
      auto it = agents_.find(kPeer);
      return "events from the principal applied: " + std::to_string(sink_.applied()) + " (" +
             std::to_string(sink_.resources()) + " resources), streams: " +
             std::to_string(it == agents_.end() ? 0 : it->second->streams) +
             " (in memory), Redis: " + (redis_ ? redis_->state() : "none configured");
    }
    uint64_t tracked = 0, leased = 0;
    for (auto& [n, a] : agents_) {
      tracked += a->writer.tracked();
      if (a->session != nullptr) leased++;
    }
    return "agents: " + std::to_string(agents_.size()) + ", streams: " + std::to_string(leased) +
           ", unacknowledged: " + std::to_string(tracked) +
           " (in memory), Redis: " + (redis_ ? redis_->state() : "none configured");
  }

  const RedisLink* redis() const { return redis_.get(); }

  const std::map<std::string, std::unique_ptr<AgentState>>& agents() const { return agents_; }

 private:
  const Config& config_;
  bool principal_;
  const RedisConfig& redisConfig_;  // the side's
  kj::Timer& timer_;
  delivery::MemorySink sink_;
  std::optional<delivery::SyntheticSpec> synthetic_;
  std::map<std::string, std::unique_ptr<AgentState>> agents_;
  std::unique_ptr<RedisLink> redis_;  // --redis-server-address
  kj::Promise<void> rewrite_ = nullptr;
  kj::ForkedPromise<void> restored_ = kj::Promise<void>(kj::READY_NOW).fork();
  kj::Own<kj::PromiseFulfiller<void>> restoredFulfiller_;
  bool restoreStarted_ = false;
  struct Ignore : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override {
      spdlog::warn("agent state: {}", e.getDescription().cStr());
    }
  } ignore_;
  kj::TaskSet tasks_{ignore_};

  struct RestoreTally {
    uint64_t agents = 0, events = 0, skipped = 0, problems = 0;
  };

  // SCAN for the agents' hashes, then each one's HGETALL, one after the other.
  kj::Promise<void> restoreFrom(std::string cursor, std::shared_ptr<RestoreTally> tally) {
    return redis_
        ->command({"SCAN", cursor, "MATCH", std::string(journal::kKeyPrefix) + "*", "COUNT", "500"})
        .then([this, tally](RedisLink::Reply r) -> kj::Promise<void> {
          if (r.error() || r.elements.size() != 2) {
            return KJ_EXCEPTION(FAILED,
                                "SCAN: " + (r.str.empty() ? std::string("no reply") : r.str));
          }
          auto keys = std::make_shared<std::vector<std::string>>();
          for (const auto& k : r.elements[1].elements) keys->push_back(k.str);
          std::string next = r.elements[0].str;
          return restoreKeys(keys, 0, tally).then([this, next, tally]() -> kj::Promise<void> {
            if (next == "0") return kj::READY_NOW;
            return restoreFrom(next, tally);
          });
        });
  }

  kj::Promise<void> restoreKeys(std::shared_ptr<std::vector<std::string>> keys, size_t i,
                                std::shared_ptr<RestoreTally> tally) {
    if (i >= keys->size()) return kj::READY_NOW;
    const std::string& key = (*keys)[i];
    return redis_->command({"HGETALL", key})
        .then([this, keys, i, tally](RedisLink::Reply r) -> kj::Promise<void> {
          const std::string& key = (*keys)[i];
          std::string name = key.substr(strlen(journal::kKeyPrefix));
          if (r.error()) {
            return KJ_EXCEPTION(FAILED, "HGETALL " + key + ": " +
                                            (r.str.empty() ? std::string("no reply") : r.str));
          }
          if (agents_.count(name) != 0) {
            tally->skipped++;  // it connected meanwhile: its state in memory is newer
          } else if (r.type != REDIS_REPLY_ARRAY || r.elements.size() % 2 != 0 || name.empty()) {
            spdlog::warn("agent state: Redis key {} is not a hash of ours; skipped", key);
            tally->problems++;
          } else {
            std::vector<std::pair<std::string, std::string>> fields;
            for (size_t f = 0; f + 1 < r.elements.size(); f += 2) {
              fields.emplace_back(r.elements[f].str, r.elements[f + 1].str);
            }
            std::vector<std::string> problems;
            apply(journal::parse(name, fields, problems), *tally);
            for (const auto& p : problems) {
              spdlog::warn("agent state: Redis key {}: {}; left out", key, p);
            }
            tally->problems += problems.size();
          }
          return restoreKeys(keys, i + 1, tally);
        });
  }

  void apply(journal::Agent&& j, RestoreTally& tally) {
    AgentState& a = agent(j.name);
    a.sourceNext = j.source;
    a.streams = j.streams;
    for (auto& [resource, events] : j.outbox) {
      for (auto& e : events) {
        if (a.writer.enqueue(std::move(e)) == delivery::EnqueueResult::kFull) {
          spdlog::warn("agent {}: restored events exceed --send-queue-size; the rest is dropped",
                       j.name);
          break;
        }
        tally.events++;
      }
    }
    for (auto& [resource, ids] : j.ledger) {
      for (auto& id : ids) a.ledger.record(resource, id);
    }
    tally.agents++;
  }

  // Connected agents' entries again every 3 minutes, before Argo CD's 10-minute expiry.
  kj::Promise<void> rewriteLoop() {
    return timer_.afterDelay(clusterinfo::kRewrite.count() * kj::SECONDS).then([this]() {
      for (auto& [n, a] : agents_) {
        if (a->session != nullptr) writeClusterInfo(*a);
      }
      return rewriteLoop();
    });
  }
};

SessionImpl::~SessionImpl() noexcept(false) {
  if (agent_.session == this) {
    agent_.session = nullptr;
    agent_.listener.clear();
    store_.writeClusterInfo(agent_);  // disconnected (no newer stream took over)
  }
}

void SessionImpl::kick() { wake(); }

bool SessionImpl::fill(NextContext& context, uint32_t max, uint32_t ahead) {
  max = std::min(max, kMaxBatch);
  std::vector<delivery::Handed> why;
  auto due = agent_.writer.takeDue(Clock::now(), max, &why);
  if (ahead > 0 && due.size() < max) {
    auto more = agent_.writer.takeAhead(max - due.size());
    why.resize(due.size() + more.size(), delivery::Handed::kAhead);
    for (auto& e : more) due.push_back(std::move(e));
  }
  if (due.empty()) return false;  // no results yet: a waiting call holds no answer message
  std::vector<eventstreamapi::Event> msgs(due.size());
  size_t words = 8;
  for (size_t i = 0; i < due.size(); ++i) {
    *msgs[i].mutable_event() = std::move(due[i]);
    words += msgs[i].ByteSizeLong() / 8 + 2;  // caches the size for the serialisation below
  }
  // Sized to fit (without a hint every answer starts with an 8 KiB segment); each event is
  // serialised straight into its Data field.
  auto results = context.getResults(capnp::MessageSize{words + 16 * due.size(), 0});
  auto list = results.initEvents(due.size());
  auto leases = results.initLeases(due.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    auto data = list.init(i, static_cast<unsigned>(msgs[i].GetCachedSize()));
    msgs[i].SerializeWithCachedSizesToArray(data.begin());
    const auto& e = msgs[i].event();
    auto l = leases[i];
    l.setResourceId(ce::stringAttr(e, "resourceid"));
    l.setEventId(ce::stringAttr(e, "eventid"));
    switch (why[i]) {
      case delivery::Handed::kUntracked:
        l.setHanded(ipc::Handed::UNTRACKED);
        break;
      case delivery::Handed::kFirst:
        l.setHanded(ipc::Handed::FIRST);
        break;
      case delivery::Handed::kResend:
        l.setHanded(ipc::Handed::RESEND);
        break;
      case delivery::Handed::kAhead:
        l.setHanded(ipc::Handed::AHEAD);
        break;
    }
  }
  return true;
}

kj::Promise<void> SessionImpl::next(NextContext context) {
  // A listener that ends the stream drops this call: the wait ends at once and, with no call
  // left, the session goes (and Argo CD's cluster info says disconnected) without waiting for
  // the idle answer.
  context.allowCancellation();
  // FAILED, not DISCONNECTED: the listener keeps a stream whose cache link broke (DISCONNECTED)
  // and re-opens its state, but ends one that was superseded.
  if (superseded_) return KJ_EXCEPTION(FAILED, "a newer stream of this agent took over");
  uint32_t max = std::max<uint32_t>(1, context.getParams().getMax());
  uint32_t ahead = std::min(context.getParams().getAhead(), kMaxAheadPerResource);
  agent_.writer.setLeaseAhead(ahead, ahead > 0 ? kMaxAhead : 0);
  if (fill(context, max, ahead)) return kj::READY_NOW;
  // Wait for input, the next re-send or the idle limit, whichever comes first.
  auto now = Clock::now();
  auto deadline = agent_.writer.nextDeadline(now);
  kj::Duration wait = kIdleNext;
  if (deadline) wait = std::min(wait, toKj(*deadline - now) + 1 * kj::MILLISECONDS);
  auto paf = kj::newPromiseAndFulfiller<void>();
  waiting_ = kj::mv(paf.fulfiller);
  return paf.promise.exclusiveJoin(store_.timer().afterDelay(wait))
      .then([this, context, max, ahead]() mutable -> kj::Promise<void> {
        waiting_ = nullptr;
        if (superseded_) return KJ_EXCEPTION(FAILED, "a newer stream of this agent took over");
        // Woken with nothing due (an ACK that freed nothing) or idle: an empty answer, and the
        // listener asks again.
        if (!fill(context, max, ahead)) context.getResults(capnp::MessageSize{4, 0}).initEvents(0);
        return kj::READY_NOW;
      });
}

kj::Promise<void> SessionImpl::acked(AckedContext context) {
  if (superseded_) return kj::READY_NOW;  // the newer stream re-sends what is still unacknowledged
  bool any = false;
  std::set<std::string> freed;
  auto now = Clock::now();
  for (auto a : context.getParams().getAcks()) {
    if (agent_.writer.ack(a.getResourceId(), a.getEventId(), now,
                          std::chrono::microseconds(a.getLatencyUs()))) {
      any = true;
      freed.insert(a.getResourceId());
    }
  }
  if (any) {
    store_.journalOutbox(agent_, freed, /*withSource=*/false);
    store_.produce(agent_);
    kick();
  }
  return kj::READY_NOW;
}

kj::Promise<void> SessionImpl::received(ReceivedContext context) {
  auto in = context.getParams().getEvents();
  auto verdicts = context.getResults().initVerdicts(in.size());
  std::set<std::string> applied;
  for (size_t i = 0; i < in.size(); ++i) {
    auto r = in[i];
    std::string resource = r.getResourceId(), eventId = r.getEventId();
    if (agent_.ledger.seen(resource, eventId)) {
      verdicts.set(i, ipc::Verdict::DUPLICATE);
      continue;
    }
    delivery::Event e;
    auto bytes = r.getEvent();
    if (!e.ParseFromArray(bytes.begin(), static_cast<int>(bytes.size()))) {
      verdicts.set(i, ipc::Verdict::REJECTED);
      continue;
    }
    std::string problem;
    switch (store_.sink().apply(e, problem)) {
      case delivery::Sink::Result::kApplied:
        agent_.ledger.record(resource, eventId);
        applied.insert(resource);
        verdicts.set(i, ipc::Verdict::APPLIED);
        break;
      case delivery::Sink::Result::kDuplicate:
        verdicts.set(i, ipc::Verdict::DUPLICATE);
        break;
      case delivery::Sink::Result::kRetry:
        verdicts.set(i, ipc::Verdict::RETRY);
        break;
      case delivery::Sink::Result::kRejected:
        // On the agent, the one state is the stream from the principal.
        spdlog::error(
            "{}: event type '{}' for resource '{}' not applied: {}",
            store_.principalSide() ? "agent " + agent_.name : std::string("from the principal"),
            e.type(), resource.substr(0, 128), problem);
        verdicts.set(i, ipc::Verdict::REJECTED);
        break;
    }
  }
  // The listener ACKs APPLIED events once this answers: only when Redis has the ledger.
  return store_.journalLedger(agent_, applied);
}

class StoreImpl final : public ipc::AgentStore::Server {
 public:
  explicit StoreImpl(std::shared_ptr<Store> store) : keep_(store), store_(*store) {}

  kj::Promise<void> open(OpenContext context) override {
    return store_.restored().then([this, context]() mutable { openNow(context); });
  }

  void openNow(OpenContext& context) {
    auto p = context.getParams();
    std::string name = p.getAgent();
    AgentState& a = store_.agent(name);
    if (a.session != nullptr) {
      spdlog::info("agent {}: a new stream on {} takes over from the one on {}", name,
                   std::string(p.getListener()), a.listener);
      a.session->supersede();
      KJ_IF_MAYBE (c, controls_[name]) {
        auto req = c->closeRequest();
        req.setReason("a newer stream of this agent took over");
        tasks_.add(req.send().ignoreResult().catch_([](kj::Exception&&) {}));
      }
    }
    a.streams++;
    store_.journalStreams(a);
    auto session = kj::heap<SessionImpl>(keep_, a);
    a.session = session.get();
    a.listener = p.getListener();
    controls_[name] = p.getControl();
    a.writer.onReconnect(Clock::now());  // what was in flight is due again at once
    store_.produce(a);
    store_.writeClusterInfo(a);  // connected
    context.getResults().setSession(kj::mv(session));
  }

  kj::Promise<void> unacknowledged(UnacknowledgedContext context) override {
    const auto& agents = store_.agents();
    auto list = context.getResults().initAgents(agents.size());
    size_t i = 0;
    for (const auto& [name, a] : agents) {
      list[i].setAgent(name);
      list[i].setCount(a->writer.tracked());
      ++i;
    }
    return kj::READY_NOW;
  }

 private:
  struct Ignore : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&&) override {}
  } ignore_;
  std::shared_ptr<Store> keep_;
  Store& store_;
  std::map<std::string, kj::Maybe<ipc::StreamControl::Client>> controls_;
  kj::TaskSet tasks_{ignore_};
};

class CacheRole final : public Role, public AgentDirectory {
 public:
  explicit CacheRole(WorkerEnv& env) : env_(env) {}

  kj::Promise<void> start() override {
    bool principal = env_.args.side == Side::kPrincipal;
    store_ = std::make_shared<Store>(env_.config, env_.timer, env_.io.unixEventPort,
                                     env_.args.runtimeDir);
    const RedisConfig& r = store_->redisConfig();
    const char* caFlag = principal ? "--redis-ca-path" : "--redis-tls-ca-path";
    if (r.address.empty()) {
      spdlog::info(principal
                       ? "agent state in memory; no Redis configured (--redis-server-address): "
                         "Argo CD's cluster info is not written"
                       : "delivery state in memory (what the agent received and applied "
                         "outlives its transport, not this worker); no Redis configured "
                         "(--redis-addr)");
    } else {
      std::string tls = !r.tls             ? ""
                        : r.tlsInsecure    ? ", TLS NOT VERIFIED (--redis-tls-insecure)"
                        : r.caPath.empty() ? ", TLS verified against the system's CAs"
                                           : std::string(", TLS verified against ") + caFlag;
      if (principal) {
        spdlog::info(
            "agent state in memory, kept in Redis too; Argo CD's cluster info in Redis at {} "
            "({}{})",
            r.address, r.gzip ? "gzip" : "no compression", tls);
      } else {
        spdlog::info("delivery state in memory, kept in Redis at {} too (gzip{})", r.address, tls);
      }
      if (r.tls && r.tlsInsecure) {
        spdlog::warn("INSECURE: not verifying Redis's TLS certificate (--redis-tls-insecure)");
      }
    }
    serving_ = serveServiceSocket(env_.io, kj::heap<StoreImpl>(store_))
                   .eagerlyEvaluate([](kj::Exception&& e) {
                     spdlog::error("agent store: {}", e.getDescription().cStr());
                   });
    return kj::READY_NOW;
  }

  kj::Promise<void> drain() override {
    if (!store_) return kj::READY_NOW;
    return store_->flush(env_.timer.now() + 2 * kj::SECONDS);
  }

  std::string describe() override {
    return store_ ? store_->describe() : "redis cache not implemented yet";
  }

  std::vector<AgentView> agents() override {
    return store_ ? store_->views() : std::vector<AgentView>{};
  }

  std::vector<MetricSample> samples() override {
    std::vector<MetricSample> out;
    if (!store_) return out;
    // Here, not in the heartbeat worker: this count must survive listener and heartbeat restarts.
    if (const RedisLink* r = store_->redis()) {
      out.push_back({"aa_cache_redis_up",
                     "1 while the cache worker's Redis connection is ready",
                     false,
                     {},
                     r->ready() ? 1.0 : 0.0});
      out.push_back({"aa_cache_redis_writes_total",
                     "Commands sent to Redis (state and cluster-info writes, a restore's reads)",
                     true,
                     {},
                     static_cast<double>(r->writes())});
      out.push_back({"aa_cache_redis_dropped_writes_total",
                     "Writes not sent (Redis down) or refused by Redis",
                     true,
                     {},
                     static_cast<double>(r->failedWrites())});
    }
    if (env_.args.side != Side::kPrincipal) return out;
    for (const auto& [name, a] : store_->agents()) {
      std::vector<std::pair<std::string, std::string>> agent = {{"agent_name", name}};
      const delivery::WriterStats& w = a->writer.stats();
      out.push_back({"argocd_principal_agent_connections_total",
                     "Event streams opened by the agent", true, agent,
                     static_cast<double>(a->streams)});
      // Delivery and back-pressure (event_writer.h): what waits for the agent, and why.
      out.push_back({"aa_agent_events_resent_total",
                     "Events re-sent to the agent because no ACK came in time or it reconnected",
                     true, agent, static_cast<double>(w.resent)});
      out.push_back(
          {"aa_agent_events_coalesced_total",
           "Events replaced by a newer version of the same resource before they were sent", true,
           agent, static_cast<double>(w.coalesced)});
      out.push_back(
          {"aa_agent_send_queue_full",
           "1 while the agent's send queue is full (--send-queue-size): its producer waits", false,
           agent, a->writer.full() ? 1.0 : 0.0});
      out.push_back({"aa_agent_events_refused_full_total",
                     "Events refused because the agent's send queue was full", true, agent,
                     static_cast<double>(w.rejectedFull)});
    }
    return out;
  }

 private:
  WorkerEnv& env_;
  std::shared_ptr<Store> store_;
  kj::Promise<void> serving_ = nullptr;
};

}  // namespace
kj::Own<Role> makeCacheRole(WorkerEnv& env) { return kj::heap<CacheRole>(env); }
}  // namespace aa
