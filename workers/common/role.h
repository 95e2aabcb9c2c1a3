// The contract between the shared worker skeleton (worker_main.cc) and one role's library
// (workers/<role>/). A role is constructed on the worker's KJ thread after the supervisor link is
// up; it may run threads of its own (grpc++) but talks to KJ objects only on that thread.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include <kj/async-io.h>

#include "ipc/config/config.h"
#include "ipc/supervisor.capnp.h"

namespace aa {

// What the supervisor told this worker on its command line (see Supervisor::spawn).
struct WorkerArgs {
  Side side = Side::kPrincipal;
  std::string role;  // the worker's name: its role, with "-N" for listener workers ("listener-2")
  unsigned generation = 0;
  std::string runtimeDir;
  int listenPort = 0;
};

struct WorkerEnv {
  const Config& config;
  const WorkerArgs& args;
  kj::AsyncIoContext& io;
  kj::Timer& timer;
  ipc::Supervisor::Client& supervisor;  // this worker's link (the ops role asks it for Observe)
};

// One metric value a role keeps (ipc/observe.capnp Sample); called from the KJ thread, so a role
// reads counters its other threads update atomically.
struct MetricSample {
  std::string name, help;
  bool counter = true;  // false: gauge (or a histogram, when `bounds` is not empty)
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;  // histogram: the number of observations
  // Histogram only: upper bounds (ascending, +Inf implied), cumulative counts, sum.
  std::vector<double> bounds = {}, cumulative = {};
  double sum = 0;
};

class Role {
 public:
  virtual ~Role() noexcept(false) = default;
  // Begin serving; resolve once the role can do its job (then the supervisor marks it READY).
  virtual kj::Promise<void> start() = 0;
  // SIGTERM: finish or hand back in-flight work, then resolve; the process exits 0 afterwards.
  virtual kj::Promise<void> drain() { return kj::READY_NOW; }
  // One line for `argocd-agentctl status`.
  virtual std::string describe() { return ""; }
  // The role's metrics (Worker.samples); none by default.
  virtual std::vector<MetricSample> samples() { return {}; }
  // Whether the role does its job now (Worker.serving, /healthz), and why not.
  virtual std::pair<bool, std::string> serving() { return {true, ""}; }
};

// What a role answers beyond the Worker interface, when it keeps per-agent state: the principal's
// heartbeat worker (liveness) and cache worker (unacknowledged events); their worker's bootstrap
// is then ipc::AgentsWorker, and the supervisor merges the two views.
class AgentDirectory {
 public:
  virtual ~AgentDirectory() noexcept(false) = default;
  struct AgentView {
    std::string name, state, listener;
    uint64_t connectedSinceMs = 0, lastHeardMs = 0, heartbeats = 0, unacknowledged = 0;
    uint64_t heartbeatRttUs = 0;
    uint32_t streams = 0;
  };
  virtual std::vector<AgentView> agents() = 0;
};

// "listener-2" -> "listener": the role a worker name runs.
std::string roleOf(const std::string& workerName);

kj::Own<Role> makeListenerRole(WorkerEnv& env);
kj::Own<Role> makeAuthRole(WorkerEnv& env);
kj::Own<Role> makeCacheRole(WorkerEnv& env);
kj::Own<Role> makeHeartbeatRole(WorkerEnv& env);
kj::Own<Role> makeTransportRole(WorkerEnv& env);
kj::Own<Role> makeOpsRole(WorkerEnv& env);

}  // namespace aa
