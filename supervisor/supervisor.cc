// The supervisor (supervisor.h): executes the state machine's actions on real processes, runs the
// watchdog, sequences shutdown and reaps every child, orphans included. KJ event loop, one thread.
#include "supervisor/supervisor.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include "ipc/runtime/log.h"
#include "supervisor/child_process.h"

namespace aa {
namespace {

constexpr auto kWatchdogPeriod = 5 * kj::SECONDS;
constexpr auto kWatchdogDeadline = 10 * kj::SECONDS;
constexpr auto kStartDeadline = 30 * kj::SECONDS;
constexpr auto kDescribeDeadline = 1 * kj::SECONDS;

kj::Duration toKj(std::chrono::milliseconds ms) { return ms.count() * kj::MILLISECONDS; }

}  // namespace

const std::vector<WorkerSpec>& workerSpecs(Side side) {
  // Start order; shutdown runs in reverse so the listener stops accepting before auth goes away.
  // The listener waits for auth's first READY: it verifies tokens with the jwt.pub that auth
  // writes (only auth holds the private key).
  static const std::vector<WorkerSpec> principal = {{"auth", true, true},
                                                    {"cache", false, true},
                                                    {"heartbeat", false, true},
                                                    {"listener", true, false, "auth"},
                                                    {"ops", false, false}};
  static const std::vector<WorkerSpec> agent = {{"cache", false, true},
                                                {"heartbeat", false, false},
                                                {"transport", true, false},
                                                {"ops", false, false}};
  return side == Side::kPrincipal ? principal : agent;
}

std::vector<WorkerSpec> workerSlots(const Config& config) {
  std::vector<WorkerSpec> out;
  for (const auto& spec : workerSpecs(config.side)) {
    if (spec.role != "listener") {
      out.push_back(spec);
      continue;
    }
    int n = listenerWorkers(config.principal);
    for (int i = 1; i <= n; ++i) {
      WorkerSpec s = spec;
      s.role = "listener-" + std::to_string(i);
      out.push_back(s);
    }
  }
  return out;
}

namespace {
// One agent's row of `argocd-agentctl agents`, merged from the heartbeat and cache workers.
struct AgentRow {
  std::string state, listener;
  uint64_t connectedSinceMs = 0, lastHeardMs = 0, heartbeats = 0, heartbeatRttUs = 0;
  uint64_t unacknowledged = 0;
  uint32_t streams = 0;
};
bool isListener(const std::string& role) { return role.rfind("listener-", 0) == 0; }
}  // namespace

struct Supervisor::Slot {
  WorkerSpec spec;
  WorkerStateMachine machine;
  pid_t pid = 0;
  struct Link {
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> rpc;
    ipc::Worker::Client worker = nullptr;
  };
  kj::Maybe<kj::Own<Link>> link;
  kj::Maybe<kj::Promise<void>> backoffTimer;
  kj::Maybe<kj::Promise<void>> stopTimer;
  kj::Maybe<kj::Promise<void>> startTimer;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> onStopped;
  bool pingInFlight = false;
  bool everReady = false;  // some generation reported ready (dependents may start)
  std::map<std::string, uint64_t> restartsByCause;  // crash, hang, signal, exit, requested

  // The counters (and histograms) this slot's workers reported, so that the side's sums never go
  // down when a worker dies or restarts (Prometheus reads any decrease as a reset and counts the
  // whole value again): `retired` is what earlier generations counted, `last` the current one's
  // latest values. A dead or silent worker's counters stay in the sum at their last value.
  // Values: {value} for a counter; {count, sum, cumulative bucket counts...} for a histogram.
  struct Counted {
    std::string name, help;
    ipc::Sample::Kind kind;
    std::vector<std::pair<std::string, std::string>> labels;
    std::vector<double> bounds, retired, last;
  };
  std::map<std::string, Counted> counted;  // key: name + labels
  unsigned countedGeneration = 0;
  void countedFrom(unsigned generation) {
    if (generation == countedGeneration) return;
    for (auto& [key, c] : counted) {
      addInto(c.retired, c.last);
      c.last.assign(c.last.size(), 0);
    }
    countedGeneration = generation;
  }
  static void addInto(std::vector<double>& to, const std::vector<double>& from) {
    if (to.size() < from.size()) to.resize(from.size(), 0);
    for (size_t i = 0; i < from.size(); ++i) to[i] += from[i];
  }
};

// Read access to the side (ipc/observe.capnp), shared by the control socket and the ops worker.
class Supervisor::ObserveImpl final : public ipc::Observe::Server {
 public:
  explicit ObserveImpl(Supervisor& s) : sup_(s) {}

  kj::Promise<void> status(StatusContext context) override {
    return sup_.fillStatus(context.getResults());
  }
  kj::Promise<void> agents(AgentsContext context) override {
    return sup_.fillAgents(context.getResults());
  }
  kj::Promise<void> samples(SamplesContext context) override {
    return sup_.fillSamples(context.getResults());
  }
  kj::Promise<void> health(HealthContext context) override {
    return sup_.fillHealth(context.getResults());
  }

 private:
  Supervisor& sup_;
};

// The Supervisor capability handed to one worker generation over its link.
class Supervisor::LinkImpl final : public ipc::Supervisor::Server {
 public:
  LinkImpl(Supervisor& sup, Slot& slot, unsigned generation)
      : sup_(sup), slot_(slot), generation_(generation) {}

  kj::Promise<void> ready(ReadyContext) override {
    if (slot_.machine.generation() == generation_) {
      spdlog::info("worker {} (pid {}, generation {}) is ready", slot_.spec.role, slot_.pid,
                   generation_);
      sup_.apply(slot_, WorkerEvent::kReady);
      sup_.startDependents(slot_);
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> observe(ObserveContext context) override {
    // Least privilege: only the worker that serves /healthz and /metrics reads the side.
    if (slot_.spec.role != "ops") {
      return KJ_EXCEPTION(FAILED, "only the ops worker may observe the side", slot_.spec.role);
    }
    context.getResults().setObserve(sup_.observer());
    return kj::READY_NOW;
  }

  kj::Promise<void> ticketKeys(TicketKeysContext context) override {
    // Least privilege: the keys decrypt every ticket; only the workers issuing them get them.
    if (!isListener(slot_.spec.role)) {
      return KJ_EXCEPTION(FAILED, "only listener workers may read the ticket keys",
                          slot_.spec.role);
    }
    auto answer = sup_.ticketKeys_.current(TicketKeys::Clock::now());
    auto results = context.getResults();
    auto keys = results.initKeys(static_cast<unsigned>(answer.keys.size()));
    for (unsigned i = 0; i < answer.keys.size(); ++i) {
      keys.set(i, kj::arrayPtr(answer.keys[i].data(), answer.keys[i].size()));
    }
    results.setRefreshInMs(static_cast<uint64_t>(answer.refreshIn.count()));
    return kj::READY_NOW;
  }

 private:
  Supervisor& sup_;
  Slot& slot_;
  unsigned generation_;
};

Supervisor::Supervisor(const Config& config, RuntimeInfo runtime, std::vector<std::string> args,
                       kj::AsyncIoContext& io, std::map<std::string, int> serviceSockets)
    : config_(config),
      runtime_(std::move(runtime)),
      args_(std::move(args)),
      io_(io),
      timer_(io.provider->getTimer()),
      serviceSockets_(std::move(serviceSockets)),
      tasks_(*this),
      ticketKeys_(config.principal.tlsTicketRotation) {}

Supervisor::~Supervisor() = default;

kj::Promise<int> Supervisor::run() {
  for (const auto& spec : workerSlots(config_)) {
    auto slot = kj::heap<Slot>();
    slot->spec = spec;
    slots_.push_back(kj::mv(slot));
  }
  auto paf = kj::newPromiseAndFulfiller<int>();
  exitFulfiller_ = kj::mv(paf.fulfiller);

  // Child exits (workers and re-parented orphans alike).
  tasks_.add([this]() -> kj::Promise<void> {
    struct Loop {
      static kj::Promise<void> go(Supervisor& s) {
        return s.io_.unixEventPort.onSignal(SIGCHLD).then([&s](siginfo_t) {
          s.onChildSignal();
          return go(s);
        });
      }
    };
    return Loop::go(*this);
  }());
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
    struct Loop {
      static kj::Promise<void> go(Supervisor& s, int sig) {
        return s.io_.unixEventPort.onSignal(sig).then([&s, sig](siginfo_t) {
          if (sig == SIGHUP) {
            spdlog::info("SIGHUP received: configuration reload is not supported; ignoring");
          } else {
            s.beginShutdown(0, sig == SIGTERM ? "SIGTERM" : "SIGINT");
          }
          return go(s, sig);
        });
      }
    };
    tasks_.add(Loop::go(*this, sig));
  }
  struct Watchdog {
    static kj::Promise<void> go(Supervisor& s) {
      return s.timer_.afterDelay(kWatchdogPeriod).then([&s]() {
        s.watchdogTick();
        return go(s);
      });
    }
  };
  tasks_.add(Watchdog::go(*this));

  for (auto& slot : slots_) {
    if (slot->spec.startAfter.empty()) apply(*slot, WorkerEvent::kStart);
  }
  // Reap anything that exited before the SIGCHLD handler was waited on.
  onChildSignal();
  return kj::mv(paf.promise);
}

void Supervisor::taskFailed(kj::Exception&& e) {
  spdlog::error("supervisor task failed: {}", e.getDescription().cStr());
}

Supervisor::Slot* Supervisor::find(const std::string& role) {
  for (auto& s : slots_) {
    if (s->spec.role == role) return s.get();
  }
  return nullptr;
}

std::vector<Supervisor::Slot*> Supervisor::matching(const std::string& role) {
  std::vector<Slot*> out;
  for (auto& s : slots_) {
    if (s->spec.role == role || (role == "listener" && isListener(s->spec.role))) {
      out.push_back(s.get());
    }
  }
  return out;
}

kj::Promise<void> Supervisor::onTimer(kj::Duration delay, Slot& slot, unsigned generation,
                                      kj::Function<void()> fn) {
  // The slot owns the returned promise and apply() may drop it; a continuation must not destroy
  // the promise it runs in, so the work is handed to the task set instead of run inline.
  return timer_.afterDelay(delay)
      .then([this, &slot, generation, fn = kj::mv(fn)]() mutable {
        tasks_.add(kj::evalLater([&slot, generation, fn = kj::mv(fn)]() mutable {
          if (slot.machine.generation() == generation) fn();
        }));
      })
      .eagerlyEvaluate(nullptr);
}

void Supervisor::spawn(Slot& slot) {
  int sv[2];
  KJ_SYSCALL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  kj::AutoCloseFd parentEnd(sv[0]);
  kj::AutoCloseFd childEnd(sv[1]);

  unsigned gen = slot.machine.generation();
  SpawnRequest req;
  req.executable = runtime_.executable;
  req.argv = {"argocd-agent",
              "worker",
              toString(config_.side),
              slot.spec.role,
              "--generation=" + std::to_string(gen),
              "--runtime-dir=" + runtime_.dir,
              "--listen-port=" + std::to_string(runtime_.listenPort),
              "--"};
  req.argv.insert(req.argv.end(), args_.begin(), args_.end());
  req.supervisorLinkFd = childEnd.get();
  auto socket = serviceSockets_.find(slot.spec.role);
  req.serviceSocketFd =
      slot.spec.serviceSocket && socket != serviceSockets_.end() ? socket->second : -1;
  slot.pid = spawnWorker(req);
  childEnd = nullptr;

  auto link = kj::heap<Slot::Link>();
  link->stream = io_.lowLevelProvider->wrapSocketFd(parentEnd.release(),
                                                    kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
  link->rpc = kj::heap<capnp::TwoPartyClient>(*link->stream, kj::heap<LinkImpl>(*this, slot, gen),
                                              capnp::rpc::twoparty::Side::SERVER);
  link->worker = link->rpc->bootstrap().castAs<ipc::Worker>();
  slot.link = kj::mv(link);
  slot.pingInFlight = false;
  spdlog::info("started worker {} (pid {}, generation {})", slot.spec.role, slot.pid, gen);

  slot.startTimer = onTimer(kStartDeadline, slot, gen, [this, &slot]() {
    if (slot.machine.state() != WorkerState::kStarting) return;
    spdlog::error("worker {} (pid {}) did not become ready within {}s", slot.spec.role, slot.pid,
                  kStartDeadline / kj::SECONDS);
    apply(slot, WorkerEvent::kUnresponsive);
  });
}

void Supervisor::apply(Slot& slot, WorkerEvent event, const ExitInfo& exit) {
  auto now = Clock::now();
  WorkerState before = slot.machine.state();
  Transition t = slot.machine.handle(event, now, exit);
  if (before != t.state) {
    spdlog::debug("worker {}: {} --{}--> {}", slot.spec.role, toString(before), toString(event),
                  toString(t.state));
  }
  for (Action a : t.actions) {
    switch (a) {
      case Action::kSpawn:
        try {
          spawn(slot);
        } catch (const kj::Exception& e) {
          spdlog::error("cannot spawn worker {}: {}", slot.spec.role, e.getDescription().cStr());
          // Treat like a generation that died at once: the backoff paces the retries.
          apply(slot, WorkerEvent::kExited, ExitInfo{ExitInfo::Kind::kExited, 1});
        }
        break;
      case Action::kTerminate: {
        if (slot.pid > 0) kill(slot.pid, SIGTERM);
        kj::Duration grace =
            shuttingDown_ ? shutdownDeadline_ - timer_.now() : toKj(config_.common.shutdownTimeout);
        if (grace < 0 * kj::SECONDS) grace = 0 * kj::SECONDS;
        unsigned gen = slot.machine.generation();
        slot.stopTimer = onTimer(grace, slot, gen, [this, &slot]() {
          spdlog::warn("worker {} (pid {}) did not stop in time; killing", slot.spec.role,
                       slot.pid);
          apply(slot, WorkerEvent::kStopDeadline);
        });
        break;
      }
      case Action::kKill:
        if (slot.pid > 0) kill(slot.pid, SIGKILL);
        break;
      case Action::kArmBackoff:
        spdlog::warn("restarting worker {} in {}ms", slot.spec.role, t.backoff.count());
        slot.backoffTimer = onTimer(toKj(t.backoff), slot, slot.machine.generation(),
                                    [this, &slot]() { apply(slot, WorkerEvent::kBackoffElapsed); });
        break;
      case Action::kCancelBackoff:
        slot.backoffTimer = nullptr;
        break;
      case Action::kReportFailed:
        spdlog::error("worker {} failed with a configuration error and will not be restarted",
                      slot.spec.role);
        if (slot.spec.critical) beginShutdown(exit_code::kConfig, "a critical worker failed");
        break;
    }
  }
  if (!slot.machine.running()) {
    slot.startTimer = nullptr;
    slot.stopTimer = nullptr;
  }
  if (t.state == WorkerState::kStopped || t.state == WorkerState::kFailed) {
    KJ_IF_MAYBE (f, slot.onStopped) {
      (*f)->fulfill();
      slot.onStopped = nullptr;
    }
  }
}

void Supervisor::startDependents(Slot& ready) {
  if (ready.machine.state() != WorkerState::kReady || ready.everReady) return;
  ready.everReady = true;
  if (shuttingDown_) return;
  for (auto& s : slots_) {
    if (s->spec.startAfter == ready.spec.role && s->machine.generation() == 0) {
      apply(*s, WorkerEvent::kStart);
    }
  }
}

void Supervisor::onChildSignal() {
  while (true) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    Slot* owner = nullptr;
    for (auto& s : slots_) {
      if (s->pid == pid) owner = s.get();
    }
    ExitInfo info = ExitInfo::fromWaitStatus(status);
    if (owner == nullptr) {
      spdlog::debug("reaped orphan pid {} ({})", pid, info.describe());
      continue;
    }
    Slot& slot = *owner;
    // During shutdown a worker may stop before it is asked (a signal to the process group).
    bool expected = slot.machine.state() == WorkerState::kStopping || shuttingDown_;
    if (info.crash) {
      spdlog::error("worker {} (pid {}, generation {}) crashed: {}", slot.spec.role, pid,
                    slot.machine.generation(), info.describe());
    } else if (!expected) {
      spdlog::error("worker {} (pid {}, generation {}) exited unexpectedly: {}", slot.spec.role,
                    pid, slot.machine.generation(), info.describe());
    } else {
      spdlog::info("worker {} (pid {}) stopped: {}", slot.spec.role, pid, info.describe());
    }
    slot.pid = 0;
    slot.link = nullptr;
    if (shuttingDown_ && slot.machine.state() != WorkerState::kStopping) {
      // Died on its own during shutdown: do not restart it.
      apply(slot, WorkerEvent::kStop);
    }
    apply(slot, WorkerEvent::kExited, info);
    if (!expected) {
      const char* cause = slot.machine.lastExit().rfind("hang", 0) == 0 ? "hang"
                          : info.crash                                  ? "crash"
                          : info.kind == ExitInfo::Kind::kSignaled      ? "signal"
                                                                        : "exit";
      slot.restartsByCause[cause]++;
    }
  }
}

void Supervisor::watchdogTick() {
  for (auto& s : slots_) {
    Slot& slot = *s;
    if (slot.machine.state() != WorkerState::kReady || slot.pingInFlight) continue;
    KJ_IF_MAYBE (link, slot.link) {
      slot.pingInFlight = true;
      unsigned gen = slot.machine.generation();
      tasks_.add(
          timer_
              .timeoutAfter(kWatchdogDeadline, (*link)->worker.pingRequest().send().ignoreResult())
              .then([&slot]() { slot.pingInFlight = false; },
                    [this, &slot, gen](kj::Exception&& e) {
                      slot.pingInFlight = false;
                      if (slot.machine.generation() != gen) return;
                      if (e.getType() == kj::Exception::Type::DISCONNECTED) return;  // exiting
                      spdlog::error("watchdog: worker {} (pid {}) did not answer: {}",
                                    slot.spec.role, slot.pid, e.getDescription().cStr());
                      apply(slot, WorkerEvent::kUnresponsive);
                    }));
    }
  }
}

void Supervisor::beginShutdown(int exitCode, const char* why) {
  if (shuttingDown_) return;
  shuttingDown_ = true;
  exitCode_ = exitCode;
  shutdownDeadline_ = timer_.now() + toKj(config_.common.shutdownTimeout);
  spdlog::info("{}: stopping workers (deadline {}ms)", why, config_.common.shutdownTimeout.count());
  tasks_.add(stopInReverse(slots_.size()).then([this]() {
    spdlog::info("all workers stopped; exiting {}", exitCode_);
    exitFulfiller_->fulfill(kj::cp(exitCode_));
  }));
}

kj::Promise<void> Supervisor::stopInReverse(size_t remaining) {
  if (remaining == 0) return kj::READY_NOW;
  Slot& slot = *slots_[remaining - 1];
  kj::Promise<void> done = kj::READY_NOW;
  if (slot.machine.state() != WorkerState::kStopped &&
      slot.machine.state() != WorkerState::kFailed) {
    auto paf = kj::newPromiseAndFulfiller<void>();
    slot.onStopped = kj::mv(paf.fulfiller);
    done = kj::mv(paf.promise);
    apply(slot, WorkerEvent::kStop);
  }
  return done.then([this, remaining]() { return stopInReverse(remaining - 1); });
}

kj::Promise<void> Supervisor::fillStatus(ipc::Observe::StatusResults::Builder results) {
  results.setSide(toString(config_.side));
  results.setSupervisorPid(getpid());
  results.setVersion(ARGOCD_AGENT_VERSION);
  auto list = results.initWorkers(slots_.size());
  auto now = Clock::now();
  kj::Vector<kj::Promise<void>> describes;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = *slots_[i];
    auto w = list[i];
    w.setRole(slot.spec.role);
    w.setPid(slot.pid);
    w.setState(toString(slot.machine.state()));
    w.setGeneration(slot.machine.generation());
    w.setRestarts(slot.machine.restarts());
    w.setUptimeMs(slot.pid > 0 ? std::chrono::duration_cast<std::chrono::milliseconds>(
                                     now - slot.machine.spawnedAt())
                                     .count()
                               : 0);
    w.setLastExit(slot.machine.lastExit());
    w.setCritical(slot.spec.critical);
    if (slot.machine.state() != WorkerState::kReady) continue;
    KJ_IF_MAYBE (link, slot.link) {
      describes.add(
          timer_.timeoutAfter(kDescribeDeadline, (*link)->worker.describeRequest().send())
              .then([w](auto r) mutable { w.setDetail(r.getDetail()); }, [](kj::Exception&&) {}));
    }
  }
  return kj::joinPromises(describes.releaseAsArray());
}

kj::Promise<void> Supervisor::fillAgents(ipc::Observe::AgentsResults::Builder results) {
  // Liveness is the heartbeat worker's, unacknowledged events the cache worker's: merged by name.
  if (config_.side != Side::kPrincipal) return kj::READY_NOW;  // no per-agent view there
  struct Merged {
    std::map<std::string, AgentRow> rows;
    bool heard = false;
  };
  auto merged = kj::heap<Merged>();
  kj::Vector<kj::Promise<void>> asks;
  for (const char* role : {"heartbeat", "cache"}) {
    Slot* slot = find(role);
    if (slot == nullptr) continue;
    KJ_IF_MAYBE (link, slot->link) {
      auto worker = (*link)->worker.castAs<ipc::AgentsWorker>();
      bool liveness = std::string(role) == "heartbeat";
      asks.add(timer_.timeoutAfter(kDescribeDeadline, worker.agentsRequest().send())
                   .then(
                       [&m = *merged, liveness](auto r) {
                         if (liveness) m.heard = true;
                         for (auto a : r.getAgents()) {
                           AgentRow& row = m.rows[a.getName()];
                           if (liveness) {
                             row.state = a.getState();
                             row.listener = a.getListener();
                             row.connectedSinceMs = a.getConnectedSinceMs();
                             row.lastHeardMs = a.getLastHeardMs();
                             row.heartbeats = a.getHeartbeats();
                             row.heartbeatRttUs = a.getHeartbeatRttUs();
                           } else {
                             // The cache worker's counts outlive listener and heartbeat restarts.
                             row.unacknowledged = a.getUnacknowledged();
                             row.streams = a.getStreams();
                           }
                         }
                       },
                       [](kj::Exception&&) {}));
    }
  }
  return kj::joinPromises(asks.releaseAsArray())
      .then([results, merged = kj::mv(merged)]() mutable -> kj::Promise<void> {
        if (!merged->heard) {
          return KJ_EXCEPTION(DISCONNECTED, "the heartbeat worker is not running");
        }
        auto list = results.initAgents(merged->rows.size());
        size_t i = 0;
        for (const auto& [name, row] : merged->rows) {
          auto a = list[i++];
          a.setName(name);
          a.setState(row.state.empty() ? "disconnected" : row.state);
          a.setListener(row.listener);
          a.setConnectedSinceMs(row.connectedSinceMs);
          a.setLastHeardMs(row.lastHeardMs);
          a.setStreams(row.streams);
          a.setHeartbeats(row.heartbeats);
          a.setHeartbeatRttUs(row.heartbeatRttUs);
          a.setUnacknowledged(row.unacknowledged);
        }
        return kj::READY_NOW;
      });
}

ipc::Observe::Client Supervisor::observer() {
  KJ_IF_MAYBE (c, observerCap_) {
    return *c;
  }
  ipc::Observe::Client c = kj::heap<ObserveImpl>(*this);  // the capability owns the server
  observerCap_ = c;
  return c;
}

kj::Promise<void> Supervisor::fillSamples(ipc::Observe::SamplesResults::Builder results) {
  // Samples with the same name and labels from several workers are added up (listener workers
  // sharing the port count their own agents). Key: name + labels, in the order the role gave.
  // Counters and histograms are remembered per slot (Slot::counted) so the sums stay monotonic.
  using Labels = std::vector<std::pair<std::string, std::string>>;
  struct Merged {
    std::string help;
    ipc::Sample::Kind kind;
    Labels labels;
    std::vector<double> bounds, values;  // values as in Slot::Counted
  };
  using MergedMap = std::map<std::string, Merged>;
  auto merged = kj::heap<MergedMap>();
  auto keyOf = [](const std::string& name, const Labels& labels) {
    std::string key = name;
    for (const auto& [k, v] : labels) key += '\0' + k + '=' + v;
    return key;
  };
  auto add = [keyOf](MergedMap& m, const std::string& name, const std::string& help,
                     ipc::Sample::Kind kind, Labels labels, const std::vector<double>& bounds,
                     const std::vector<double>& values) {
    auto& e = m[keyOf(name, labels)];
    if (e.help.empty()) {
      e.help = help;
      e.kind = kind;
      e.labels = std::move(labels);
      e.bounds = bounds;
    }
    if (e.bounds == bounds) Slot::addInto(e.values, values);
  };
  auto addCounted = [add](MergedMap& m, const Slot& slot) {
    for (const auto& [key, c] : slot.counted) {
      std::vector<double> v = c.retired;
      Slot::addInto(v, c.last);
      add(m, c.name, c.help, c.kind, c.labels, c.bounds, v);
    }
  };
  for (auto& s : slots_) {
    for (const auto& [cause, n] : s->restartsByCause) {
      add(*merged, "aa_worker_restarts_total",
          "Worker restarts by role and cause (crash, hang, signal, exit, requested)",
          ipc::Sample::Kind::COUNTER, {{"role", s->spec.role}, {"cause", cause}}, {},
          {static_cast<double>(n)});
    }
    add(*merged, "aa_worker_up", "1 while the worker is READY", ipc::Sample::Kind::GAUGE,
        {{"role", s->spec.role}}, {}, {s->machine.state() == WorkerState::kReady ? 1.0 : 0.0});
  }
  kj::Vector<kj::Promise<void>> asks;
  for (auto& s : slots_) {
    Slot& slot = *s;
    kj::Maybe<ipc::Worker::Client> worker;
    if (slot.machine.state() == WorkerState::kReady) {
      KJ_IF_MAYBE (link, slot.link) {
        worker = (*link)->worker;
      }
    }
    KJ_IF_MAYBE (w, worker) {
      unsigned generation = slot.machine.generation();
      asks.add(timer_.timeoutAfter(kDescribeDeadline, w->samplesRequest().send())
                   .then(
                       [&m = *merged, add, addCounted, keyOf, &slot, generation](auto r) {
                         slot.countedFrom(generation);
                         for (auto sample : r.getSamples()) {
                           Labels labels;
                           for (auto l : sample.getLabels()) {
                             labels.emplace_back(l.getName(), l.getValue());
                           }
                           std::vector<double> values = {sample.getValue()}, bounds;
                           if (sample.getKind() == ipc::Sample::Kind::GAUGE) {
                             add(m, sample.getName(), sample.getHelp(), sample.getKind(),
                                 std::move(labels), bounds, values);
                             continue;
                           }
                           if (sample.getKind() == ipc::Sample::Kind::HISTOGRAM) {
                             values.push_back(sample.getSum());
                             for (double b : sample.getBounds()) bounds.push_back(b);
                             for (double c : sample.getCumulative()) values.push_back(c);
                           }
                           auto& c = slot.counted[keyOf(sample.getName(), labels)];
                           if (c.name.empty()) {
                             c.name = sample.getName();
                             c.help = sample.getHelp();
                             c.kind = sample.getKind();
                             c.labels = std::move(labels);
                             c.bounds = bounds;
                           }
                           if (c.bounds == bounds) c.last = std::move(values);
                         }
                         addCounted(m, slot);
                       },
                       [&m = *merged, addCounted, &slot](kj::Exception&&) {
                         addCounted(m, slot);  // no answer: its last values
                       }));
    } else {
      addCounted(*merged, slot);  // down or restarting: its last values
    }
  }
  return kj::joinPromises(asks.releaseAsArray()).then([results, merged = kj::mv(merged)]() mutable {
    auto list = results.initSamples(merged->size());
    size_t i = 0;
    for (const auto& [key, e] : *merged) {
      auto out = list[i++];
      out.setName(key.substr(0, key.find('\0')));
      out.setHelp(e.help);
      out.setKind(e.kind);
      out.setValue(e.values.empty() ? 0 : e.values[0]);
      if (e.kind == ipc::Sample::Kind::HISTOGRAM) {
        out.setSum(e.values.size() > 1 ? e.values[1] : 0);
        auto bounds = out.initBounds(e.bounds.size());
        auto cumulative = out.initCumulative(e.bounds.size());
        for (size_t j = 0; j < e.bounds.size(); ++j) {
          bounds.set(j, e.bounds[j]);
          cumulative.set(j, j + 2 < e.values.size() ? e.values[j + 2] : 0);
        }
      }
      auto labels = out.initLabels(e.labels.size());
      for (size_t j = 0; j < e.labels.size(); ++j) {
        labels[j].setName(e.labels[j].first);
        labels[j].setValue(e.labels[j].second);
      }
    }
  });
}

kj::Promise<void> Supervisor::fillHealth(ipc::Observe::HealthResults::Builder results) {
  // Principal: at least one listener serving; agent: the transport connected to the principal.
  const std::string role = config_.side == Side::kPrincipal ? "listener" : "transport";
  results.setReady(false);
  results.setReason("no " + role + " worker is running");
  kj::Vector<kj::Promise<void>> asks;
  for (auto& s : slots_) {
    if (s->spec.role != role && !(role == "listener" && isListener(s->spec.role))) continue;
    if (s->machine.state() != WorkerState::kReady) {
      results.setReason("worker " + role + " is " + std::string(toString(s->machine.state())));
      continue;
    }
    KJ_IF_MAYBE (link, s->link) {
      asks.add(timer_.timeoutAfter(kDescribeDeadline, (*link)->worker.servingRequest().send())
                   .then(
                       [results](auto r) mutable {
                         if (results.getReady()) return;
                         results.setReady(r.getServing());
                         results.setReason(r.getReason());
                       },
                       [results, role](kj::Exception&&) mutable {
                         if (!results.getReady()) {
                           results.setReason("worker " + role + " did not answer");
                         }
                       }));
    }
  }
  return kj::joinPromises(asks.releaseAsArray());
}

std::string Supervisor::restart(const std::string& role) {
  auto slots = matching(role);
  if (slots.empty()) return "no worker named \"" + role + "\"";
  if (shuttingDown_) return "the supervisor is shutting down";
  for (Slot* slot : slots) {
    if (slot->machine.generation() == 0 && !slot->spec.startAfter.empty()) {
      return "worker " + slot->spec.role + " starts once worker " + slot->spec.startAfter +
             " is ready";
    }
  }
  for (Slot* slot : slots) {
    spdlog::info("control: restart of worker {} requested", slot->spec.role);
    slot->restartsByCause["requested"]++;
    apply(*slot, WorkerEvent::kRestart);
  }
  return "";
}

kj::Promise<std::string> Supervisor::setLogLevel(const std::string& role,
                                                 const std::string& level) {
  if (!log::parseLevel(level)) {
    return std::string("invalid level \"" + level +
                       "\": must be trace, debug, info, warn or error");
  }
  if (role == "supervisor") {
    log::setLevel(level);
    return std::string();
  }
  auto slots = matching(role);
  if (slots.empty()) return "no worker named \"" + role + "\"";
  auto problems = kj::heap<std::string>();
  kj::Vector<kj::Promise<void>> asks;
  for (Slot* slot : slots) {
    std::string name = slot->spec.role;
    KJ_IF_MAYBE (link, slot->link) {
      auto req = (*link)->worker.setLogLevelRequest();
      req.setLevel(level);
      asks.add(timer_.timeoutAfter(kDescribeDeadline, req.send())
                   .then(
                       [&p = *problems](auto r) {
                         if (!r.getOk())
                           p += (p.empty() ? "" : "; ") + std::string(r.getMessage().cStr());
                       },
                       [&p = *problems, name](kj::Exception&& e) {
                         p += (p.empty() ? "" : "; ") +
                              ("worker " + name + " did not answer: " + e.getDescription().cStr());
                       }));
    } else {
      *problems += (problems->empty() ? "" : "; ") + ("worker " + name + " is not running");
    }
  }
  return kj::joinPromises(asks.releaseAsArray()).then([problems = kj::mv(problems)]() {
    return std::string(*problems);
  });
}

}  // namespace aa
