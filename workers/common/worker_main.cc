// The shared worker skeleton (its entry is declared in ipc/runtime/worker_entry.h): re-parses the
// validated configuration, sets up logging, title and crash handling, links to the supervisor over
// fd 3, runs the role, and turns SIGTERM into an orderly drain. Runs in every worker process.
#include "ipc/runtime/worker_entry.h"

#include <malloc.h>
#include <signal.h>

#include <unistd.h>
#include <fstream>
#include <sstream>

#include <capnp/rpc-twoparty.h>
#include <grpc/support/log.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include "ipc/runtime/crash.h"
#include "ipc/runtime/exit_codes.h"
#include "ipc/runtime/fd_contract.h"
#include "ipc/runtime/log.h"
#include "ipc/runtime/proc_title.h"
#include "ipc/supervisor.capnp.h"
#include "workers/common/role.h"

namespace aa {
namespace {

// Every worker's bootstrap (ipc::Worker); `Base` is the role's own interface when it extends it.
template <class Base>
class WorkerImpl : public Base {
 public:
  explicit WorkerImpl(kj::Maybe<Role&>& role) : role_(role) {}

  kj::Promise<void> ping(typename Base::PingContext) override { return kj::READY_NOW; }

  kj::Promise<void> setLogLevel(typename Base::SetLogLevelContext context) override {
    std::string level = context.getParams().getLevel();
    bool ok = log::setLevel(level);
    context.getResults().setOk(ok);
    if (ok) {
      spdlog::info("log level set to {}", level);
    } else {
      context.getResults().setMessage("invalid level \"" + level + "\"");
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> describe(typename Base::DescribeContext context) override {
    KJ_IF_MAYBE (r, role_) {
      context.getResults().setDetail(r->describe());
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> samples(typename Base::SamplesContext context) override {
    KJ_IF_MAYBE (r, role_) {
      auto samples = r->samples();
      auto list = context.getResults().initSamples(samples.size());
      for (size_t i = 0; i < samples.size(); ++i) {
        auto out = list[i];
        out.setName(samples[i].name);
        out.setHelp(samples[i].help);
        const auto& sample = samples[i];
        out.setKind(!sample.bounds.empty() ? ipc::Sample::Kind::HISTOGRAM
                    : sample.counter       ? ipc::Sample::Kind::COUNTER
                                           : ipc::Sample::Kind::GAUGE);
        out.setValue(sample.value);
        if (!sample.bounds.empty()) {
          auto bounds = out.initBounds(sample.bounds.size());
          auto cumulative = out.initCumulative(sample.cumulative.size());
          for (size_t j = 0; j < sample.bounds.size(); ++j) bounds.set(j, sample.bounds[j]);
          for (size_t j = 0; j < sample.cumulative.size(); ++j) {
            cumulative.set(j, sample.cumulative[j]);
          }
          out.setSum(sample.sum);
        }
        auto labels = out.initLabels(samples[i].labels.size());
        for (size_t j = 0; j < samples[i].labels.size(); ++j) {
          labels[j].setName(samples[i].labels[j].first);
          labels[j].setValue(samples[i].labels[j].second);
        }
      }
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> serving(typename Base::ServingContext context) override {
    auto state = std::pair<bool, std::string>{false, "starting"};
    KJ_IF_MAYBE (r, role_) {
      state = r->serving();
    }
    context.getResults().setServing(state.first);
    context.getResults().setReason(state.second);
    return kj::READY_NOW;
  }

 protected:
  kj::Maybe<Role&>& role_;
};

// The bootstrap of a worker with per-agent state: Worker plus its per-agent view.
class AgentsWorkerImpl final : public WorkerImpl<ipc::AgentsWorker::Server> {
 public:
  using WorkerImpl::WorkerImpl;

  kj::Promise<void> agents(AgentsContext context) override {
    KJ_IF_MAYBE (r, role_) {
      auto* directory = dynamic_cast<AgentDirectory*>(r);
      auto views = directory ? directory->agents() : std::vector<AgentDirectory::AgentView>{};
      auto list = context.getResults().initAgents(views.size());
      for (size_t i = 0; i < views.size(); ++i) {
        auto a = list[i];
        a.setName(views[i].name);
        a.setState(views[i].state);
        a.setConnectedSinceMs(views[i].connectedSinceMs);
        a.setLastHeardMs(views[i].lastHeardMs);
        a.setStreams(views[i].streams);
        a.setHeartbeats(views[i].heartbeats);
        a.setUnacknowledged(views[i].unacknowledged);
        a.setHeartbeatRttUs(views[i].heartbeatRttUs);
        a.setListener(views[i].listener);
      }
    }
    return kj::READY_NOW;
  }
};

capnp::Capability::Client makeBootstrap(const WorkerArgs& args, kj::Maybe<Role&>& role) {
  if (args.side == Side::kPrincipal && (args.role == "cache" || args.role == "heartbeat")) {
    return kj::heap<AgentsWorkerImpl>(role);
  }
  return kj::heap<WorkerImpl<ipc::Worker::Server>>(role);
}

bool parseArgs(int argc, char** argv, WorkerArgs& out, std::vector<std::string>& rest) {
  if (argc < 2) return false;
  std::string side = argv[0];
  if (side == "principal") {
    out.side = Side::kPrincipal;
  } else if (side == "agent") {
    out.side = Side::kAgent;
  } else {
    return false;
  }
  out.role = argv[1];
  int i = 2;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    auto value = [&](const char* prefix) { return a.substr(strlen(prefix)); };
    if (a.rfind("--generation=", 0) == 0) {
      out.generation = static_cast<unsigned>(std::stoul(value("--generation=")));
    } else if (a.rfind("--runtime-dir=", 0) == 0) {
      out.runtimeDir = value("--runtime-dir=");
    } else if (a.rfind("--listen-port=", 0) == 0) {
      out.listenPort = std::stoi(value("--listen-port="));
    } else {
      return false;
    }
  }
  for (; i < argc; ++i) rest.emplace_back(argv[i]);
  return true;
}

kj::Own<Role> makeRole(WorkerEnv& env) {
  const std::string r = roleOf(env.args.role);
  if (env.args.side == Side::kPrincipal) {
    if (r == "listener") return makeListenerRole(env);
    if (r == "auth") return makeAuthRole(env);
  } else if (r == "transport") {
    return makeTransportRole(env);
  }
  if (r == "cache") return makeCacheRole(env);
  if (r == "heartbeat") return makeHeartbeatRole(env);
  if (r == "ops") return makeOpsRole(env);
  KJ_FAIL_REQUIRE("unknown worker role", r);
}

}  // namespace

std::string roleOf(const std::string& workerName) {
  auto dash = workerName.rfind('-');
  if (dash == std::string::npos || dash + 1 == workerName.size()) return workerName;
  for (size_t i = dash + 1; i < workerName.size(); ++i) {
    if (workerName[i] < '0' || workerName[i] > '9') return workerName;
  }
  return workerName.substr(0, dash);
}

int workerMain(int argc, char** argv) {
  // Signals first, before any thread exists. Ctrl-C reaches the whole process group: workers
  // leave SIGINT/SIGHUP to the supervisor, which stops them in order with SIGTERM.
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  kj::UnixEventPort::captureSignal(SIGTERM);
  // Test fault switches (README, Testing): only with AA_TEST_FAULTS=1, SIGUSR2 triggers one.
  if (const char* f = getenv("AA_TEST_FAULTS"); f != nullptr && std::string(f) == "1") {
    kj::UnixEventPort::captureSignal(SIGUSR2);
  }
  crash::installHandlers();
  // glibc's default trimming hands freed heap back to the OS and faults it in again for every
  // large message, which collapses throughput for 16 KiB events and gzip
  // (measured on this stack). Keep up to 128 MiB and mmap only above 4 MiB.
  mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
  mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);

  WorkerArgs args;
  std::vector<std::string> rest;
  if (!parseArgs(argc, argv, args, rest)) {
    fprintf(stderr, "argocd-agent worker: internal invocation only (started by the supervisor)\n");
    return exit_code::kConfig;
  }
  log::init(toString(args.side), args.role, args.generation);
  setProcessTitle("aa-" + args.role);
  auto parsed = parseConfig(args.side, rest, processEnv(), getppid());
  if (!parsed.config) {
    spdlog::critical("configuration: {}", parsed.message);
    return exit_code::kConfig;
  }
  const Config& config = *parsed.config;
  log::setLevel(logLevelFor(config, args.role));
  log::setFormat(config.common.logFormat);
  // grpc's own messages (gpr_log) and KJ's go through spdlog too: one format per process.
  gpr_set_log_function([](gpr_log_func_args* a) {
    auto level = a->severity == GPR_LOG_SEVERITY_ERROR  ? spdlog::level::err
                 : a->severity == GPR_LOG_SEVERITY_INFO ? spdlog::level::info
                                                        : spdlog::level::debug;
    spdlog::log(level, "grpc: {}:{}: {}", a->file, a->line, a->message);
  });
  return log::withKjLogBridge([&]() -> int {
    try {
      auto io = kj::setupAsyncIo();
      auto stream = io.lowLevelProvider->wrapSocketFd(fds::kSupervisorLink,
                                                      kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
      kj::Maybe<Role&> roleRef;
      capnp::TwoPartyClient link(*stream, makeBootstrap(args, roleRef),
                                 capnp::rpc::twoparty::Side::CLIENT);
      auto supervisor = link.bootstrap().castAs<ipc::Supervisor>();

      WorkerEnv env{config, args, io, io.provider->getTimer(), supervisor};
      kj::Own<Role> role = makeRole(env);
      roleRef = *role;

      bool supervisorGone = false;
      auto running = role->start()
                         .then([&]() { return supervisor.readyRequest().send().ignoreResult(); })
                         .then([]() -> kj::Promise<void> { return kj::NEVER_DONE; })
                         .exclusiveJoin(io.unixEventPort.onSignal(SIGTERM).then([&](siginfo_t) {
                           spdlog::info("SIGTERM: draining");
                           return role->drain();
                         }))
                         .exclusiveJoin(link.onDisconnect().then([&]() { supervisorGone = true; }));
      running.wait(io.waitScope);
      if (supervisorGone) {
        spdlog::error("supervisor link closed; exiting");
        return exit_code::kError;
      }
      spdlog::info("stopped");
      roleRef = nullptr;
      role = nullptr;
      return exit_code::kClean;
    } catch (const ConfigError& e) {
      spdlog::critical("configuration: {}", e.what());
      return exit_code::kConfig;
    } catch (const kj::Exception& e) {
      spdlog::error("worker failed: {}", e.getDescription().cStr());
      return exit_code::kError;
    } catch (const std::exception& e) {
      spdlog::error("worker failed: {}", e.what());
      return exit_code::kError;
    }
  });
}

}  // namespace aa
