// Worker lifecycle state machine (worker_state.h). Pure; runs inside the supervisor.
#include "supervisor/worker_state.h"

#include <algorithm>
#include <cmath>

namespace aa {

const char* toString(WorkerState s) {
  switch (s) {
    case WorkerState::kStopped:
      return "STOPPED";
    case WorkerState::kStarting:
      return "STARTING";
    case WorkerState::kReady:
      return "READY";
    case WorkerState::kStopping:
      return "STOPPING";
    case WorkerState::kBackoff:
      return "BACKOFF";
    case WorkerState::kFailed:
      return "FAILED";
  }
  return "?";
}

const char* toString(WorkerEvent e) {
  switch (e) {
    case WorkerEvent::kStart:
      return "start";
    case WorkerEvent::kReady:
      return "ready";
    case WorkerEvent::kExited:
      return "exited";
    case WorkerEvent::kStop:
      return "stop";
    case WorkerEvent::kRestart:
      return "restart";
    case WorkerEvent::kBackoffElapsed:
      return "backoff-elapsed";
    case WorkerEvent::kStopDeadline:
      return "stop-deadline";
    case WorkerEvent::kUnresponsive:
      return "unresponsive";
  }
  return "?";
}

Transition WorkerStateMachine::spawn(Clock::time_point now) {
  state_ = WorkerState::kStarting;
  ++generation_;
  spawnedAt_ = now;
  hang_ = false;
  restartAfterStop_ = false;
  return {state_, {Action::kSpawn}};
}

std::chrono::milliseconds WorkerStateMachine::nextBackoff(Clock::time_point now) {
  if (now - spawnedAt_ >= policy_.stableUptime) consecutiveFailures_ = 0;
  ++consecutiveFailures_;
  double ms = static_cast<double>(policy_.initial.count()) *
              std::pow(policy_.factor, static_cast<double>(consecutiveFailures_ - 1));
  ms = std::min(ms, static_cast<double>(policy_.cap.count()));
  return std::max(policy_.initial, std::chrono::milliseconds(static_cast<int64_t>(ms)));
}

Transition WorkerStateMachine::handle(WorkerEvent event, Clock::time_point now,
                                      const ExitInfo& exit) {
  const Transition ignore{state_, {}};
  switch (event) {
    case WorkerEvent::kStart:
      if (state_ == WorkerState::kStopped) return spawn(now);
      return ignore;

    case WorkerEvent::kReady:
      if (state_ != WorkerState::kStarting) return ignore;
      state_ = WorkerState::kReady;
      return {state_, {}};

    case WorkerEvent::kExited: {
      if (!running()) return ignore;
      ExitInfo info = exit;
      info.hang = hang_;
      lastExit_ = info.describe();
      if (state_ == WorkerState::kStopping) {
        if (restartAfterStop_) return spawn(now);
        state_ = WorkerState::kStopped;
        return {state_, {}};
      }
      if (!info.hang && info.kind == ExitInfo::Kind::kExited && info.code == exit_code::kConfig) {
        state_ = WorkerState::kFailed;
        return {state_, {Action::kReportFailed}};
      }
      // The policy spaces spawns, not deaths: a generation that lived longer than the current
      // backoff is replaced at once (a listener's port stays closed as briefly as possible).
      auto spacing = nextBackoff(now);
      auto delay =
          std::chrono::duration_cast<std::chrono::milliseconds>(spawnedAt_ + spacing - now);
      if (delay.count() <= 0) return spawn(now);
      state_ = WorkerState::kBackoff;
      return {state_, {Action::kArmBackoff}, delay};
    }

    case WorkerEvent::kStop:
      switch (state_) {
        case WorkerState::kStarting:
        case WorkerState::kReady:
          state_ = WorkerState::kStopping;
          restartAfterStop_ = false;
          return {state_, {Action::kTerminate}};
        case WorkerState::kStopping:
          restartAfterStop_ = false;  // a shutdown overrides an operator restart in progress
          return ignore;
        case WorkerState::kBackoff:
          state_ = WorkerState::kStopped;
          return {state_, {Action::kCancelBackoff}};
        default:
          return ignore;
      }

    case WorkerEvent::kRestart:
      switch (state_) {
        case WorkerState::kStarting:
        case WorkerState::kReady:
          state_ = WorkerState::kStopping;
          restartAfterStop_ = true;
          return {state_, {Action::kTerminate}};
        case WorkerState::kBackoff: {
          auto t = spawn(now);
          t.actions.insert(t.actions.begin(), Action::kCancelBackoff);
          return t;
        }
        case WorkerState::kStopped:
        case WorkerState::kFailed:
          consecutiveFailures_ = 0;
          return spawn(now);
        case WorkerState::kStopping:
          return ignore;
      }
      return ignore;

    case WorkerEvent::kBackoffElapsed:
      if (state_ == WorkerState::kBackoff) return spawn(now);
      return ignore;

    case WorkerEvent::kStopDeadline:
      if (state_ == WorkerState::kStopping) return {state_, {Action::kKill}};
      return ignore;

    case WorkerEvent::kUnresponsive:
      if (state_ == WorkerState::kStarting || state_ == WorkerState::kReady) {
        hang_ = true;
        return {state_, {Action::kKill}};
      }
      return ignore;
  }
  return ignore;
}

}  // namespace aa
