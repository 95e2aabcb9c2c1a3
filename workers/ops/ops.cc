// The ops worker (principal and agent): GET /healthz on --healthz-port and Prometheus text at
// /metrics on --metrics-port, both on all interfaces. It is the only role that parses HTTP from the
// network (civetweb: directly for /healthz, through prometheus-cpp's Exposer for /metrics), so it
// runs apart from every other role, and it can read the side only through the Observe capability
// (ipc/observe.capnp) that its supervisor link hands to this role alone. A crash here costs the
// probes and a scrape, never an agent's stream.
#include <CivetServer.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <kj/async.h>
#include <kj/debug.h>

#include "ipc/observe.capnp.h"
#include "ipc/runtime/log.h"
#include "workers/common/role.h"

#ifndef ARGOCD_AGENT_GIT_REVISION
#define ARGOCD_AGENT_GIT_REVISION "unknown"
#endif

namespace aa {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// A family per metric name, in first-seen order.
class Families {
 public:
  void add(const std::string& name, const std::string& help, MetricType type,
           std::vector<ClientMetric::Label> labels, double value) {
    auto it = index_.find(name);
    if (it == index_.end()) {
      it = index_.emplace(name, out_.size()).first;
      out_.push_back(MetricFamily{name, help, type, {}});
    }
    ClientMetric m;
    m.label = std::move(labels);
    if (type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    out_[it->second].metric.push_back(std::move(m));
  }
  void addHistogram(const std::string& name, const std::string& help,
                    std::vector<ClientMetric::Label> labels, ipc::Sample::Reader sample) {
    auto it = index_.find(name);
    if (it == index_.end()) {
      it = index_.emplace(name, out_.size()).first;
      out_.push_back(MetricFamily{name, help, MetricType::Histogram, {}});
    }
    ClientMetric m;
    m.label = std::move(labels);
    auto count = static_cast<uint64_t>(sample.getValue());
    m.histogram.sample_count = count;
    m.histogram.sample_sum = sample.getSum();
    auto bounds = sample.getBounds();
    auto cumulative = sample.getCumulative();
    for (size_t i = 0; i < bounds.size() && i < cumulative.size(); ++i) {
      m.histogram.bucket.push_back({static_cast<uint64_t>(cumulative[i]), bounds[i]});
    }
    m.histogram.bucket.push_back({count, std::numeric_limits<double>::infinity()});
    out_[it->second].metric.push_back(std::move(m));
  }
  std::vector<MetricFamily> take() { return std::move(out_); }

 private:
  std::map<std::string, size_t> index_;
  std::vector<MetricFamily> out_;
};

// Collects on scrape: the civetweb thread asks the worker's KJ thread, which asks the supervisor
// (bounded there per worker), so a scrape shows the side as it is now.
class SideCollector final : public prometheus::Collectable {
 public:
  SideCollector(const kj::Executor& executor, ipc::Observe::Client observe, Side side)
      : executor_(executor), observe_(kj::mv(observe)), side_(side) {}
  ~SideCollector() noexcept override {}

  std::vector<MetricFamily> Collect() const override {
    try {
      return executor_.executeSync([this]() { return gather(); });
    } catch (const kj::Exception& e) {
      spdlog::warn("metrics: the supervisor did not answer: {}", e.getDescription().cStr());
    } catch (const std::exception& e) {
      spdlog::warn("metrics: {}", e.what());
    }
    Families f;
    f.add("aa_scrape_error", "1 when this scrape could not read the side", MetricType::Gauge, {},
          1);
    return f.take();
  }

 private:
  // Runs on the KJ thread.
  kj::Promise<std::vector<MetricFamily>> gather() const {
    auto samples = observe_.samplesRequest().send();
    kj::Promise<kj::Maybe<capnp::Response<ipc::Observe::AgentsResults>>> agents = nullptr;
    if (side_ == Side::kPrincipal) {
      agents = observe_.agentsRequest().send().then(
          [](auto r) -> kj::Maybe<capnp::Response<ipc::Observe::AgentsResults>> {
            return kj::mv(r);
          },
          [](kj::Exception&&) -> kj::Maybe<capnp::Response<ipc::Observe::AgentsResults>> {
            return nullptr;  // no listener right now: no per-agent series
          });
    } else {
      agents = kj::Maybe<capnp::Response<ipc::Observe::AgentsResults>>(nullptr);
    }
    return samples.then([agents = kj::mv(agents)](auto s) mutable {
      return agents.then([s = kj::mv(s)](auto a) mutable {
        Families f;
        f.add("argocd_agent_build_info", "Build information", MetricType::Gauge,
              {{"version", ARGOCD_AGENT_VERSION}, {"git_revision", ARGOCD_AGENT_GIT_REVISION}}, 1);
        for (auto sample : s.getSamples()) {
          std::vector<ClientMetric::Label> labels;
          for (auto l : sample.getLabels()) labels.push_back({l.getName(), l.getValue()});
          if (sample.getKind() == ipc::Sample::Kind::HISTOGRAM) {
            f.addHistogram(sample.getName(), sample.getHelp(), std::move(labels), sample);
            continue;
          }
          f.add(sample.getName(), sample.getHelp(),
                sample.getKind() == ipc::Sample::Kind::COUNTER ? MetricType::Counter
                                                               : MetricType::Gauge,
                std::move(labels), sample.getValue());
        }
        KJ_IF_MAYBE (r, a) {
          for (auto agent : r->getAgents()) {
            std::string name = agent.getName();
            f.add("aa_agent_last_heard_seconds",
                  "Seconds since anything (event, ACK, heartbeat) arrived from the agent",
                  MetricType::Gauge, {{"agent_name", name}}, agent.getLastHeardMs() / 1000.0);
            f.add("aa_agent_unacknowledged_events",
                  "Events sent or queued to the agent and not yet acknowledged", MetricType::Gauge,
                  {{"agent_name", name}}, static_cast<double>(agent.getUnacknowledged()));
            f.add("aa_agent_heartbeats_total", "Heartbeats received from the agent",
                  MetricType::Counter, {{"agent_name", name}},
                  static_cast<double>(agent.getHeartbeats()));
            if (agent.getHeartbeatRttUs() > 0) {
              f.add("aa_agent_heartbeat_rtt_seconds",
                    "The agent's last heartbeat round trip as it reported it", MetricType::Gauge,
                    {{"agent_name", name}}, agent.getHeartbeatRttUs() / 1e6);
            }
            f.add("aa_agent_state",
                  "1 for the agent's current state: connected, stale or disconnected",
                  MetricType::Gauge, {{"agent_name", name}, {"state", agent.getState()}}, 1);
          }
        }
        return f.take();
      });
    });
  }

  const kj::Executor& executor_;
  mutable ipc::Observe::Client observe_;  // used on the KJ thread only (gather)
  Side side_;
};

// GET /healthz: 200 with an empty body when the side is ready (as upstream), 503 with the reason.
class HealthHandler final : public CivetHandler {
 public:
  HealthHandler(const kj::Executor& executor, ipc::Observe::Client observe)
      : executor_(executor), observe_(kj::mv(observe)) {}
  ~HealthHandler() noexcept override {}

  bool handleGet(CivetServer*, mg_connection* conn) override {
    const mg_request_info* req = mg_get_request_info(conn);
    if (req == nullptr || req->local_uri == nullptr ||
        std::string_view(req->local_uri) != "/healthz") {
      mg_send_http_error(conn, 404, "%s", "not found\n");  // civetweb matches handlers by prefix
      return true;
    }
    bool ready = false;
    std::string reason;
    try {
      auto r = executor_.executeSync([this]() {
        return observe_.healthRequest().send().then(
            [](auto h) { return std::make_pair(h.getReady(), std::string(h.getReason().cStr())); });
      });
      ready = r.first;
      reason = r.second;
    } catch (const kj::Exception&) {
      reason = "the supervisor did not answer";
    }
    if (ready) {
      mg_send_http_ok(conn, "text/plain", 0);
      return true;
    }
    reason += "\n";
    mg_printf(conn,
              "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
              "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
              reason.size(), reason.c_str());
    return true;
  }

 private:
  const kj::Executor& executor_;
  ipc::Observe::Client observe_;
};

class OpsRole final : public Role {
 public:
  explicit OpsRole(WorkerEnv& env)
      : env_(env), observe_(env.supervisor.observeRequest().send().getObserve()) {}

  ~OpsRole() noexcept(false) override {
    if (stopper_.joinable()) stopper_.join();
    stopServers();
  }

  // Stops the HTTP servers on a thread of their own while this KJ loop keeps running: a request
  // in flight waits in executeSync() for this loop, and stopping civetweb waits for that request.
  kj::Promise<void> drain() override {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto fulfiller =
        std::make_shared<kj::Own<kj::CrossThreadPromiseFulfiller<void>>>(kj::mv(paf.fulfiller));
    stopper_ = std::thread([this, fulfiller]() {
      stopServers();
      (*fulfiller)->fulfill();
    });
    return kj::mv(paf.promise);
  }

  kj::Promise<void> start() override {
    const auto& c = env_.config.common;
    const kj::Executor& executor = kj::getCurrentThreadExecutor();
    // Fail here, not on the first scrape, if the supervisor refuses us the capability.
    return observe_.healthRequest().send().ignoreResult().then([this, &c, &executor]() {
      if (c.healthzPort != 0) {
        healthHandler_ = std::make_unique<HealthHandler>(executor, observe_);
        health_ = serve(c.healthzPort, "--healthz-port",
                        [&](CivetServer& s) { s.addHandler("/healthz", *healthHandler_); });
        spdlog::info("Serving /healthz on port {}", c.healthzPort);
      }
      if (c.metricsPort != 0) {
        collector_ = std::make_shared<SideCollector>(executor, observe_, env_.config.side);
        try {
          exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
              "listening_ports", std::to_string(c.metricsPort), "num_threads", "2"});
        } catch (const std::exception& e) {
          throw ConfigError("cannot serve metrics on --metrics-port " +
                            std::to_string(c.metricsPort) + ": " + e.what());
        }
        exposer_->RegisterCollectable(collector_, "/metrics");
        spdlog::info("Serving /metrics on port {}", c.metricsPort);
      }
    });
  }

  std::string describe() override {
    const auto& c = env_.config.common;
    auto port = [](int p) { return p == 0 ? std::string("off") : std::to_string(p); };
    return "healthz " + port(c.healthzPort) + ", metrics " + port(c.metricsPort);
  }

 private:
  template <class Register>
  std::unique_ptr<CivetServer> serve(int port, const char* flag, Register&& reg) {
    std::unique_ptr<CivetServer> server;
    try {
      server = std::make_unique<CivetServer>(
          std::vector<std::string>{"listening_ports", std::to_string(port), "num_threads", "2"});
    } catch (const std::exception& e) {
      throw ConfigError(std::string("cannot serve /healthz on ") + flag + " " +
                        std::to_string(port) + ": " + e.what());
    }
    reg(*server);
    return server;
  }

  void stopServers() {
    exposer_.reset();
    health_.reset();
  }

  WorkerEnv& env_;
  ipc::Observe::Client observe_;
  std::thread stopper_;
  std::unique_ptr<HealthHandler> healthHandler_;
  std::unique_ptr<CivetServer> health_;
  std::shared_ptr<SideCollector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace

kj::Own<Role> makeOpsRole(WorkerEnv& env) { return kj::heap<OpsRole>(env); }

}  // namespace aa
