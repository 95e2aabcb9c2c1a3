// The heartbeat worker. Principal: every agent's liveness across all listener workers
// (ipc/liveness.capnp Liveness): connected since, which listener holds its stream, last heard,
// heartbeats and their RTT, reconnects, and the decisions --agent-stale-after (log it) and
// --agent-disconnect-after (tell the listener to close the stream). `argocd-agentctl agents`
// reads this view (with unacknowledged counts from the cache worker). A listener re-announces its
// live streams after this worker restarted. Agent side: a supervised skeleton.
//
// Single-threaded on the worker's KJ loop; one timer tick a second for all agents.
#include <map>

#include <kj/debug.h>

#include "ipc/liveness.capnp.h"
#include "ipc/runtime/log.h"
#include "workers/common/role.h"
#include "workers/common/service_link.h"

namespace aa {
namespace {

using Clock = std::chrono::steady_clock;

class LiveStreamImpl;

struct Entry {
  std::string listener;  // of the active stream ("" when none)
  Clock::time_point connectedSince{}, lastHeard{};
  uint32_t streams = 0;
  uint64_t heartbeats = 0, messages = 0, rttUs = 0;
  bool stale = false;
  LiveStreamImpl* active = nullptr;
  kj::Maybe<ipc::StreamControl::Client> control;
  bool closeRequested = false;
};

class Directory {
 public:
  std::map<std::string, Entry> agents;
  uint64_t reconnects = 0;
};

class LiveStreamImpl final : public ipc::LiveStream::Server {
 public:
  // Holds the directory: at exit, streams outlive the role until the event loop is destroyed.
  LiveStreamImpl(std::shared_ptr<Directory> d, std::string agent)
      : keep_(d), dir_(*d), agent_(std::move(agent)) {}
  ~LiveStreamImpl() noexcept(false) {
    auto it = dir_.agents.find(agent_);
    if (it != dir_.agents.end() && it->second.active == this) {
      it->second.active = nullptr;
      it->second.listener.clear();
      it->second.control = nullptr;
    }
  }

  kj::Promise<void> heard(HeardContext context) override {
    auto it = dir_.agents.find(agent_);
    if (it == dir_.agents.end() || it->second.active != this) return kj::READY_NOW;
    Entry& e = it->second;
    auto p = context.getParams();
    e.lastHeard = Clock::now();
    e.messages += p.getMessages();
    e.heartbeats += p.getHeartbeats();
    if (p.getRttUs() != 0) e.rttUs = p.getRttUs();
    if (e.stale) {
      e.stale = false;
      spdlog::info("agent {} is alive again", agent_);
    }
    return kj::READY_NOW;
  }

 private:
  std::shared_ptr<Directory> keep_;
  Directory& dir_;
  std::string agent_;
};

class LivenessImpl final : public ipc::Liveness::Server {
 public:
  explicit LivenessImpl(std::shared_ptr<Directory> d) : keep_(d), dir_(*d) {}

  kj::Promise<void> opened(OpenedContext context) override {
    auto p = context.getParams();
    std::string agent = p.getAgent();
    Entry& e = dir_.agents[agent];
    auto now = Clock::now();
    if (e.streams > 0) dir_.reconnects++;
    e.streams++;
    e.listener = p.getListener();
    e.connectedSince = e.lastHeard = now;
    e.stale = false;
    e.closeRequested = false;
    e.control = p.getControl();
    auto stream = kj::heap<LiveStreamImpl>(keep_, agent);
    e.active = stream.get();
    context.getResults().setStream(kj::mv(stream));
    return kj::READY_NOW;
  }

 private:
  std::shared_ptr<Directory> keep_;
  Directory& dir_;
};

class HeartbeatRole final : public Role, public AgentDirectory {
 public:
  explicit HeartbeatRole(WorkerEnv& env) : env_(env), tasks_(ignore_) {}

  kj::Promise<void> start() override {
    if (env_.args.side == Side::kPrincipal) {
      serving_ = serveServiceSocket(env_.io, kj::heap<LivenessImpl>(dirOwner_))
                     .eagerlyEvaluate([](kj::Exception&& e) {
                       spdlog::error("liveness service: {}", e.getDescription().cStr());
                     });
      ticking_ = tick().eagerlyEvaluate(nullptr);
    }
    return kj::READY_NOW;
  }

  std::string describe() override {
    if (env_.args.side != Side::kPrincipal) return "liveness tracking of the principal only";
    size_t connected = 0, stale = 0;
    for (auto& [n, e] : dir_.agents) {
      if (e.active != nullptr) connected++;
      if (e.active != nullptr && e.stale) stale++;
    }
    return "agents: " + std::to_string(dir_.agents.size()) +
           ", connected: " + std::to_string(connected) + ", stale: " + std::to_string(stale) +
           ", reconnects: " + std::to_string(dir_.reconnects);
  }

  // Upstream's principal_agent_avg_connection_time: the connected agents' mean time connected,
  // in whole minutes, each rounded to the minute first (as upstream computes it; upstream
  // recomputes it every 3 minutes, this is computed at each scrape).
  std::vector<MetricSample> samples() override {
    if (env_.args.side != Side::kPrincipal) return {};
    auto now = Clock::now();
    int64_t minutes = 0, connected = 0;
    for (auto& [n, e] : dir_.agents) {
      if (e.active == nullptr) continue;
      auto s = std::chrono::duration_cast<std::chrono::seconds>(now - e.connectedSince).count();
      minutes += (s + 30) / 60;
      connected++;
    }
    return {{"principal_agent_avg_connection_time",
             "The average time all agents are connected for (in minutes)",
             false,
             {},
             connected == 0 ? 0.0 : static_cast<double>(minutes / connected)}};
  }

  std::vector<AgentView> agents() override {
    auto now = Clock::now();
    auto ms = [](auto d) {
      return static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
    };
    std::vector<AgentView> out;
    for (auto& [name, e] : dir_.agents) {
      AgentView v;
      v.name = name;
      v.state = e.active == nullptr ? "disconnected" : e.stale ? "stale" : "connected";
      v.listener = e.listener;
      v.connectedSinceMs = e.active == nullptr ? 0 : ms(now - e.connectedSince);
      v.lastHeardMs = ms(now - e.lastHeard);
      v.streams = e.streams;
      v.heartbeats = e.heartbeats;
      v.heartbeatRttUs = e.rttUs;
      out.push_back(std::move(v));
    }
    return out;
  }

 private:
  // Marks silent agents stale and, past the disconnect threshold, asks their listener to close
  // the stream. Once a second.
  kj::Promise<void> tick() {
    return env_.timer.afterDelay(1 * kj::SECONDS).then([this]() {
      check();
      return tick();
    });
  }

  void check() {
    const auto& p = env_.config.principal;
    if (p.agentStaleAfter.count() == 0 && p.agentDisconnectAfter.count() == 0) return;
    auto now = Clock::now();
    for (auto& [name, e] : dir_.agents) {
      if (e.active == nullptr) continue;
      auto silent = now - e.lastHeard;
      auto secs = std::chrono::duration_cast<std::chrono::milliseconds>(silent).count() / 1000.0;
      if (p.agentDisconnectAfter.count() > 0 && silent >= p.agentDisconnectAfter) {
        if (e.closeRequested) continue;
        e.closeRequested = true;
        spdlog::warn("agent {} silent for {:.1f}s: closing its stream (--agent-disconnect-after)",
                     name, secs);
        KJ_IF_MAYBE (c, e.control) {
          auto req = c->closeRequest();
          req.setReason("silent for longer than --agent-disconnect-after");
          tasks_.add(req.send().ignoreResult());
        }
      } else if (p.agentStaleAfter.count() > 0 && silent >= p.agentStaleAfter && !e.stale) {
        e.stale = true;
        spdlog::warn("agent {} is stale: nothing heard for {:.1f}s", name, secs);
      }
    }
  }

  struct Ignore : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&&) override {}
  } ignore_;
  WorkerEnv& env_;
  std::shared_ptr<Directory> dirOwner_ = std::make_shared<Directory>();
  Directory& dir_ = *dirOwner_;
  kj::TaskSet tasks_;
  kj::Promise<void> serving_ = nullptr;
  kj::Promise<void> ticking_ = nullptr;
};

}  // namespace
kj::Own<Role> makeHeartbeatRole(WorkerEnv& env) { return kj::heap<HeartbeatRole>(env); }
}  // namespace aa
