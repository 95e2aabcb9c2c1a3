// The supervisor: owns every worker process of one side, restarts them by the state machine in
// worker_state.h, answers the control socket, and performs PID-1 duties (reaping, signal-driven
// orderly shutdown). Single-threaded on the KJ event loop; never parses network input.
#pragma once

#include <sys/types.h>

#include <map>

#include <string>
#include <vector>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>

#include "ipc/config/config.h"
#include "ipc/control.capnp.h"
#include "ipc/observe.capnp.h"
#include "ipc/supervisor.capnp.h"
#include "supervisor/ticket_keys.h"
#include "supervisor/worker_state.h"

namespace aa {

// The per-role table: which workers a side runs, in start order (stopped in reverse).
struct WorkerSpec {
  std::string role;
  bool critical;       // a FAILED critical worker stops the whole side (exit 78)
  bool serviceSocket;  // inherits its pre-bound Unix service socket <role>.sock at fd 4
  // Started only once this role has been READY ("" = at start-up): the listener needs jwt.pub,
  // which the auth worker writes before it reports ready.
  std::string startAfter = "";
};
const std::vector<WorkerSpec>& workerSpecs(Side side);
// The workers a side runs: workerSpecs with the listener expanded into --listener-workers
// workers named listener-1 ... listener-N.
std::vector<WorkerSpec> workerSlots(const Config& config);

// What the supervisor prepared before forking, passed to every worker on its command line.
struct RuntimeInfo {
  std::string dir;         // private 0700 directory: service sockets, generated keys
  int listenPort = 0;      // principal: the resolved port (--listen-port may be 0)
  std::string executable;  // this binary, resolved once
};

class Supervisor final : private kj::TaskSet::ErrorHandler {
 public:
  // `args` are the user's arguments after the sub-command, handed to workers verbatim.
  // `serviceSockets`: the pre-bound Unix socket of each service worker, by role.
  Supervisor(const Config& config, RuntimeInfo runtime, std::vector<std::string> args,
             kj::AsyncIoContext& io, std::map<std::string, int> serviceSockets);
  ~Supervisor();

  // Starts all workers and runs until SIGTERM/SIGINT (resolves 0 after an orderly stop) or a
  // critical worker failed (resolves 78).
  kj::Promise<int> run();

  // For the control server.
  kj::Promise<void> fillStatus(ipc::Observe::StatusResults::Builder results);
  // `role` names a worker, or "listener" for all listener workers. "" on success, else why not.
  std::string restart(const std::string& role);
  kj::Promise<std::string> setLogLevel(const std::string& role, const std::string& level);
  kj::Promise<void> fillAgents(ipc::Observe::AgentsResults::Builder results);
  kj::Promise<void> fillSamples(ipc::Observe::SamplesResults::Builder results);
  kj::Promise<void> fillHealth(ipc::Observe::HealthResults::Builder results);
  // Read access to the side, for the control socket and the ops worker.
  ipc::Observe::Client observer();

 private:
  struct Slot;
  class LinkImpl;
  class ObserveImpl;

  void apply(Slot& slot, WorkerEvent event, const ExitInfo& exit = {});
  void spawn(Slot& slot);
  kj::Promise<void> onTimer(kj::Duration delay, Slot& slot, unsigned generation,
                            kj::Function<void()> fn);
  void startDependents(Slot& ready);
  void onChildSignal();
  void watchdogTick();
  void beginShutdown(int exitCode, const char* why);
  kj::Promise<void> stopInReverse(size_t remaining);
  Slot* find(const std::string& role);
  std::vector<Slot*> matching(const std::string& role);  // a worker, or "listener": all of them
  void taskFailed(kj::Exception&& e) override;

  const Config& config_;
  RuntimeInfo runtime_;
  std::vector<std::string> args_;
  kj::AsyncIoContext& io_;
  kj::Timer& timer_;
  std::map<std::string, int> serviceSockets_;
  std::vector<kj::Own<Slot>> slots_;
  kj::TaskSet tasks_;
  bool shuttingDown_ = false;
  int exitCode_ = 0;
  kj::TimePoint shutdownDeadline_ = kj::origin<kj::TimePoint>();
  kj::Own<kj::PromiseFulfiller<int>> exitFulfiller_;
  kj::Maybe<ipc::Observe::Client> observerCap_;  // created on first use
  TicketKeys ticketKeys_;  // the principal's TLS session-ticket keys (listener workers ask)
};

}  // namespace aa
