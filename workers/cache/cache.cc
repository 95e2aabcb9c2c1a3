// The cache worker. Principal: every agent's delivery state (ipc/agentstate.capnp AgentStore),
// so that listener workers own only live streams and a listener crash loses nothing
// (ARCHITECTURE.md decision 17): per agent, the EventWriter of events not yet sent or not yet
// acknowledged, the receive ledger that suppresses re-applied duplicates, the sink of applied
// events (--event-log) and the synthetic source's position (--synthetic-events). In memory: a
// crash of this worker loses that state (keeping it in Redis is a later step, see README.md).
// With --redis-server-address it writes Argo CD's cluster info per agent (redis_link.h,
// cluster_info.h) at connect, at disconnect and every 3 minutes.
// Agent side: a supervised skeleton (its Redis cache is a later issue too).
//
// Single-threaded: everything runs on the worker's KJ loop; one kj timer per waiting session.
#include <map>

#include <kj/debug.h>

#include "eventstream.pb.h"
#include "ipc/agentstate.capnp.h"
#include "ipc/runtime/log.h"
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
constexpr auto kIdleNext = 30 * kj::SECONDS;  // an empty answer keeps next() from ageing out
constexpr uint32_t kMaxBatch = 1024;

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
  bool fill(NextContext& context, uint32_t max);
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
  Store(const Config& config, kj::Timer& timer, kj::UnixEventPort& port,
        const std::string& runtimeDir)
      : config_(config), timer_(timer), sink_(config.common.eventLog) {
    if (!config.principal.syntheticEvents.empty()) {
      synthetic_ = delivery::parseSyntheticSpec(config.principal.syntheticEvents);
    }
    const auto& p = config.principal;
    if (!p.redisAddress.empty()) {
      RedisLink::Options o;
      o.host = p.redisHost;
      o.port = p.redisPort;
      o.password = p.redisPassword;
      o.username = p.redisUsername;
      o.tls = p.redisTls;
      o.tlsCaPath = p.redisCaPath;
      o.tlsInsecure = p.redisTlsInsecure;
      o.tlsSocket = runtimeDir + "/redis-tls.sock";
      redis_ = std::make_unique<RedisLink>(port, timer, std::move(o),
                                           [this]() { writeAllClusterInfo(); });
      rewrite_ = rewriteLoop().eagerlyEvaluate(nullptr);
    }
  }

  // Argo CD's cluster info for `a` (connected: it has a stream), when Redis is configured.
  void writeClusterInfo(const AgentState& a) {
    if (!redis_ || !redis_->ready()) return;
    const auto& p = config_.principal;
    std::string value =
        clusterinfo::value(a.name, a.session != nullptr, std::chrono::system_clock::now());
    if (p.redisGzip) value = gzip::compress(value);
    redis_->setex(
        clusterinfo::key(clusterinfo::serverUrl(p.resourceProxyAddress, a.name), p.redisGzip),
        value, static_cast<int>(clusterinfo::kTtl.count()));
  }
  // After every (re)connect: Redis may have lost everything.
  void writeAllClusterInfo() {
    for (auto& [n, a] : agents_) writeClusterInfo(*a);
  }

  kj::Timer& timer() { return timer_; }
  delivery::MemorySink& sink() { return sink_; }

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
    while (a.sourceNext < synthetic_->count && !a.writer.full()) {
      a.writer.enqueue(delivery::syntheticEvent(*synthetic_, a.sourceNext++));
    }
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
  kj::Timer& timer_;
  delivery::MemorySink sink_;
  std::optional<delivery::SyntheticSpec> synthetic_;
  std::map<std::string, std::unique_ptr<AgentState>> agents_;
  std::unique_ptr<RedisLink> redis_;  // --redis-server-address
  kj::Promise<void> rewrite_ = nullptr;

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

bool SessionImpl::fill(NextContext& context, uint32_t max) {
  auto due = agent_.writer.takeDue(Clock::now(), std::min(max, kMaxBatch));
  if (due.empty()) return false;  // no results yet: a waiting call holds no answer message
  std::vector<eventstreamapi::Event> msgs(due.size());
  size_t words = 8;
  for (size_t i = 0; i < due.size(); ++i) {
    *msgs[i].mutable_event() = std::move(due[i]);
    words += msgs[i].ByteSizeLong() / 8 + 2;  // caches the size for the serialisation below
  }
  // Sized to fit (without a hint every answer starts with an 8 KiB segment); each event is
  // serialised straight into its Data field.
  auto list = context.getResults(capnp::MessageSize{words, 0}).initEvents(due.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    auto data = list.init(i, static_cast<unsigned>(msgs[i].GetCachedSize()));
    msgs[i].SerializeWithCachedSizesToArray(data.begin());
  }
  return true;
}

kj::Promise<void> SessionImpl::next(NextContext context) {
  // A listener that ends the stream drops this call: the wait ends at once and, with no call
  // left, the session goes (and Argo CD's cluster info says disconnected) without waiting for
  // the idle answer.
  context.allowCancellation();
  if (superseded_) return KJ_EXCEPTION(DISCONNECTED, "a newer stream of this agent took over");
  uint32_t max = std::max<uint32_t>(1, context.getParams().getMax());
  if (fill(context, max)) return kj::READY_NOW;
  // Wait for input, the next re-send or the idle limit, whichever comes first.
  auto now = Clock::now();
  auto deadline = agent_.writer.nextDeadline(now);
  kj::Duration wait = kIdleNext;
  if (deadline) wait = std::min(wait, toKj(*deadline - now) + 1 * kj::MILLISECONDS);
  auto paf = kj::newPromiseAndFulfiller<void>();
  waiting_ = kj::mv(paf.fulfiller);
  return paf.promise.exclusiveJoin(store_.timer().afterDelay(wait))
      .then([this, context, max]() mutable -> kj::Promise<void> {
        waiting_ = nullptr;
        if (superseded_) {
          return KJ_EXCEPTION(DISCONNECTED, "a newer stream of this agent took over");
        }
        // Woken with nothing due (an ACK that freed nothing) or idle: an empty answer, and the
        // listener asks again.
        if (!fill(context, max)) context.getResults(capnp::MessageSize{4, 0}).initEvents(0);
        return kj::READY_NOW;
      });
}

kj::Promise<void> SessionImpl::acked(AckedContext context) {
  if (superseded_) return kj::READY_NOW;  // the newer stream re-sends what is still unacknowledged
  bool any = false;
  for (auto a : context.getParams().getAcks()) {
    any |= agent_.writer.ack(a.getResourceId(), a.getEventId());
  }
  if (any) {
    store_.produce(agent_);
    kick();
  }
  return kj::READY_NOW;
}

kj::Promise<void> SessionImpl::received(ReceivedContext context) {
  auto in = context.getParams().getEvents();
  auto verdicts = context.getResults().initVerdicts(in.size());
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
        verdicts.set(i, ipc::Verdict::APPLIED);
        break;
      case delivery::Sink::Result::kRetry:
        verdicts.set(i, ipc::Verdict::RETRY);
        break;
      case delivery::Sink::Result::kRejected:
        spdlog::error("agent {}: event type '{}' for resource '{}' not applied: {}", agent_.name,
                      e.type(), resource.substr(0, 128), problem);
        verdicts.set(i, ipc::Verdict::REJECTED);
        break;
    }
  }
  return kj::READY_NOW;
}

class StoreImpl final : public ipc::AgentStore::Server {
 public:
  explicit StoreImpl(std::shared_ptr<Store> store) : keep_(store), store_(*store) {}

  kj::Promise<void> open(OpenContext context) override {
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
    auto session = kj::heap<SessionImpl>(keep_, a);
    a.session = session.get();
    a.listener = p.getListener();
    controls_[name] = p.getControl();
    a.writer.onReconnect(Clock::now());  // what was in flight is due again at once
    store_.produce(a);
    store_.writeClusterInfo(a);  // connected
    context.getResults().setSession(kj::mv(session));
    return kj::READY_NOW;
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
    if (env_.args.side == Side::kPrincipal) {
      store_ = std::make_shared<Store>(env_.config, env_.timer, env_.io.unixEventPort,
                                       env_.args.runtimeDir);
      const auto& p = env_.config.principal;
      if (p.redisAddress.empty()) {
        spdlog::info(
            "agent state in memory; no Redis configured (--redis-server-address): "
            "Argo CD's cluster info is not written");
      } else {
        spdlog::info("agent state in memory; Argo CD's cluster info in Redis at {} ({}{})",
                     p.redisAddress, p.redisGzip ? "gzip" : "no compression",
                     !p.redisTls             ? ""
                     : p.redisTlsInsecure    ? ", TLS NOT VERIFIED (--redis-tls-insecure)"
                     : p.redisCaPath.empty() ? ", TLS verified against the system's CAs"
                                             : ", TLS verified against --redis-ca-path");
        if (p.redisTls && p.redisTlsInsecure) {
          spdlog::warn("INSECURE: not verifying Redis's TLS certificate (--redis-tls-insecure)");
        }
      }
      serving_ = serveServiceSocket(env_.io, kj::heap<StoreImpl>(store_))
                     .eagerlyEvaluate([](kj::Exception&& e) {
                       spdlog::error("agent store: {}", e.getDescription().cStr());
                     });
    }
    return kj::READY_NOW;
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
                     "Writes sent to Redis",
                     true,
                     {},
                     static_cast<double>(r->writes())});
      out.push_back({"aa_cache_redis_dropped_writes_total",
                     "Writes not sent (Redis down) or refused by Redis",
                     true,
                     {},
                     static_cast<double>(r->failedWrites())});
    }
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
