// The worker lifecycle as a pure state machine: (state, event, now) -> (state, actions). No
// clocks, processes or I/O in here, so every (state, event) pair is table-tested with an injected
// time (worker_state_test.cc). The supervisor (supervisor.cc) executes the actions.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "ipc/runtime/exit_codes.h"

namespace aa {

using Clock = std::chrono::steady_clock;

enum class WorkerState { kStopped, kStarting, kReady, kStopping, kBackoff, kFailed };
const char* toString(WorkerState s);

enum class WorkerEvent {
  kStart,           // the supervisor wants the worker running (start-up)
  kReady,           // the worker reported ready on its link
  kExited,          // the process is gone (carries ExitInfo)
  kStop,            // orderly stop (shutdown): TERM, then KILL at the deadline
  kRestart,         // operator restart (control socket)
  kBackoffElapsed,  // the restart timer fired
  kStopDeadline,    // the TERM deadline passed
  kUnresponsive,    // the watchdog (or the start deadline) saw no answer: kill, count as hang
};
const char* toString(WorkerEvent e);
inline constexpr WorkerEvent kAllEvents[] = {
    WorkerEvent::kStart,        WorkerEvent::kReady,       WorkerEvent::kExited,
    WorkerEvent::kStop,         WorkerEvent::kRestart,     WorkerEvent::kBackoffElapsed,
    WorkerEvent::kStopDeadline, WorkerEvent::kUnresponsive};
inline constexpr WorkerState kAllStates[] = {WorkerState::kStopped, WorkerState::kStarting,
                                             WorkerState::kReady,   WorkerState::kStopping,
                                             WorkerState::kBackoff, WorkerState::kFailed};

enum class Action {
  kSpawn,          // fork+exec a new generation
  kTerminate,      // SIGTERM and arm the stop deadline
  kKill,           // SIGKILL
  kArmBackoff,     // start the restart timer for `backoff`
  kCancelBackoff,  // drop a pending restart timer
  kReportFailed,   // the worker will not be restarted (configuration error)
};

struct RestartPolicy {
  std::chrono::milliseconds initial{1000};  // spawns are never closer than 1 s
  double factor = 2.0;
  std::chrono::milliseconds cap{30'000};
  std::chrono::milliseconds stableUptime{10'000};  // a generation living this long resets backoff
};

struct Transition {
  WorkerState state;
  std::vector<Action> actions;
  std::chrono::milliseconds backoff{0};  // with kArmBackoff: time until the next spawn
};

class WorkerStateMachine {
 public:
  explicit WorkerStateMachine(RestartPolicy policy = {}) : policy_(policy) {}

  // Applies `event` at `now`. `exit` is read only for kExited. Events that make no sense in the
  // current state are ignored (no actions, same state): e.g. a late kReady after kStop.
  Transition handle(WorkerEvent event, Clock::time_point now, const ExitInfo& exit = {});

  WorkerState state() const { return state_; }
  unsigned generation() const { return generation_; }  // spawns so far
  unsigned restarts() const { return generation_ > 0 ? generation_ - 1 : 0; }
  unsigned consecutiveFailures() const { return consecutiveFailures_; }
  Clock::time_point spawnedAt() const { return spawnedAt_; }
  const std::string& lastExit() const { return lastExit_; }
  bool running() const {
    return state_ == WorkerState::kStarting || state_ == WorkerState::kReady ||
           state_ == WorkerState::kStopping;
  }

 private:
  Transition spawn(Clock::time_point now);
  std::chrono::milliseconds nextBackoff(Clock::time_point now);

  RestartPolicy policy_;
  WorkerState state_ = WorkerState::kStopped;
  unsigned generation_ = 0;
  unsigned consecutiveFailures_ = 0;
  bool restartAfterStop_ = false;  // kRestart while running: spawn again once it exits
  bool hang_ = false;              // the running generation was killed by the watchdog
  Clock::time_point spawnedAt_{};
  std::string lastExit_;
};

}  // namespace aa
