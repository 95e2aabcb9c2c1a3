// Table test of every (state, event) pair of the worker state machine, plus the restart policy:
// configuration errors are never restarted, crash loops back off exponentially, stable uptime
// resets the backoff. Time is injected; nothing sleeps.
#include "supervisor/worker_state.h"

#include <signal.h>
#include <sys/wait.h>

#include <map>

#include <gtest/gtest.h>

namespace aa {
namespace {

using namespace std::chrono_literals;
using S = WorkerState;
using E = WorkerEvent;
using A = Action;

const Clock::time_point t0{};

ExitInfo exited(int code) { return ExitInfo::fromWaitStatus(code << 8); }
ExitInfo signaled(int sig) { return ExitInfo::fromWaitStatus(sig); }

WorkerStateMachine machineIn(S s) {
  WorkerStateMachine m;
  switch (s) {
    case S::kStopped:
      break;
    case S::kStarting:
      m.handle(E::kStart, t0);
      break;
    case S::kReady:
      m.handle(E::kStart, t0);
      m.handle(E::kReady, t0);
      break;
    case S::kStopping:
      m.handle(E::kStart, t0);
      m.handle(E::kReady, t0);
      m.handle(E::kStop, t0);
      break;
    case S::kBackoff:
      m.handle(E::kStart, t0);
      m.handle(E::kExited, t0, exited(1));
      break;
    case S::kFailed:
      m.handle(E::kStart, t0);
      m.handle(E::kExited, t0, exited(78));
      break;
  }
  EXPECT_EQ(m.state(), s);
  return m;
}

struct Row {
  S from;
  E event;
  S to;
  std::vector<A> actions;
};

// kExited is applied with "exit 1" here; other exit kinds have their own tests below.
const std::vector<Row> kTable = {
    {S::kStopped, E::kStart, S::kStarting, {A::kSpawn}},
    {S::kStopped, E::kReady, S::kStopped, {}},
    {S::kStopped, E::kExited, S::kStopped, {}},
    {S::kStopped, E::kStop, S::kStopped, {}},
    {S::kStopped, E::kRestart, S::kStarting, {A::kSpawn}},
    {S::kStopped, E::kBackoffElapsed, S::kStopped, {}},
    {S::kStopped, E::kStopDeadline, S::kStopped, {}},
    {S::kStopped, E::kUnresponsive, S::kStopped, {}},

    {S::kStarting, E::kStart, S::kStarting, {}},
    {S::kStarting, E::kReady, S::kReady, {}},
    {S::kStarting, E::kExited, S::kBackoff, {A::kArmBackoff}},
    {S::kStarting, E::kStop, S::kStopping, {A::kTerminate}},
    {S::kStarting, E::kRestart, S::kStopping, {A::kTerminate}},
    {S::kStarting, E::kBackoffElapsed, S::kStarting, {}},
    {S::kStarting, E::kStopDeadline, S::kStarting, {}},
    {S::kStarting, E::kUnresponsive, S::kStarting, {A::kKill}},

    {S::kReady, E::kStart, S::kReady, {}},
    {S::kReady, E::kReady, S::kReady, {}},
    {S::kReady, E::kExited, S::kBackoff, {A::kArmBackoff}},
    {S::kReady, E::kStop, S::kStopping, {A::kTerminate}},
    {S::kReady, E::kRestart, S::kStopping, {A::kTerminate}},
    {S::kReady, E::kBackoffElapsed, S::kReady, {}},
    {S::kReady, E::kStopDeadline, S::kReady, {}},
    {S::kReady, E::kUnresponsive, S::kReady, {A::kKill}},

    {S::kStopping, E::kStart, S::kStopping, {}},
    {S::kStopping, E::kReady, S::kStopping, {}},
    {S::kStopping, E::kExited, S::kStopped, {}},
    {S::kStopping, E::kStop, S::kStopping, {}},
    {S::kStopping, E::kRestart, S::kStopping, {}},
    {S::kStopping, E::kBackoffElapsed, S::kStopping, {}},
    {S::kStopping, E::kStopDeadline, S::kStopping, {A::kKill}},
    {S::kStopping, E::kUnresponsive, S::kStopping, {}},

    {S::kBackoff, E::kStart, S::kBackoff, {}},
    {S::kBackoff, E::kReady, S::kBackoff, {}},
    {S::kBackoff, E::kExited, S::kBackoff, {}},
    {S::kBackoff, E::kStop, S::kStopped, {A::kCancelBackoff}},
    {S::kBackoff, E::kRestart, S::kStarting, {A::kCancelBackoff, A::kSpawn}},
    {S::kBackoff, E::kBackoffElapsed, S::kStarting, {A::kSpawn}},
    {S::kBackoff, E::kStopDeadline, S::kBackoff, {}},
    {S::kBackoff, E::kUnresponsive, S::kBackoff, {}},

    {S::kFailed, E::kStart, S::kFailed, {}},
    {S::kFailed, E::kReady, S::kFailed, {}},
    {S::kFailed, E::kExited, S::kFailed, {}},
    {S::kFailed, E::kStop, S::kFailed, {}},
    {S::kFailed, E::kRestart, S::kStarting, {A::kSpawn}},
    {S::kFailed, E::kBackoffElapsed, S::kFailed, {}},
    {S::kFailed, E::kStopDeadline, S::kFailed, {}},
    {S::kFailed, E::kUnresponsive, S::kFailed, {}},
};

TEST(WorkerStateMachine, TableCoversEveryPair) {
  std::map<std::pair<S, E>, int> seen;
  for (const auto& r : kTable) seen[{r.from, r.event}]++;
  for (S s : kAllStates) {
    for (E e : kAllEvents) {
      EXPECT_EQ(seen[std::make_pair(s, e)], 1) << toString(s) << " x " << toString(e);
    }
  }
}

TEST(WorkerStateMachine, EveryPairBehavesAsTheTableSays) {
  for (const auto& r : kTable) {
    WorkerStateMachine m = machineIn(r.from);
    Transition t = m.handle(r.event, t0 + 100ms, exited(1));
    EXPECT_EQ(t.state, r.to) << toString(r.from) << " x " << toString(r.event);
    EXPECT_EQ(m.state(), r.to);
    EXPECT_EQ(t.actions, r.actions) << toString(r.from) << " x " << toString(r.event);
    if (std::find(t.actions.begin(), t.actions.end(), A::kArmBackoff) != t.actions.end()) {
      EXPECT_EQ(t.backoff, 900ms);  // the next spawn comes 1 s after the previous one
    }
  }
}

TEST(WorkerStateMachine, ConfigurationErrorIsNeverRestarted) {
  WorkerStateMachine m;
  m.handle(E::kStart, t0);
  auto t = m.handle(E::kExited, t0 + 1h, exited(78));
  EXPECT_EQ(t.state, S::kFailed);
  EXPECT_EQ(t.actions, std::vector<A>{A::kReportFailed});
  EXPECT_EQ(m.lastExit(), "exit 78 (configuration error)");
  // Time passing or timers firing never bring it back; only an operator restart does.
  for (E e : {E::kBackoffElapsed, E::kStart, E::kExited, E::kUnresponsive}) {
    EXPECT_TRUE(m.handle(e, t0 + 1h).actions.empty());
    EXPECT_EQ(m.state(), S::kFailed);
  }
  EXPECT_EQ(m.generation(), 1u);
}

TEST(WorkerStateMachine, CrashLoopBacksOffExponentiallyToTheCap) {
  RestartPolicy policy;  // 1 s, x2, cap 30 s, stable after 10 s
  WorkerStateMachine m(policy);
  auto now = t0;
  m.handle(E::kStart, now);
  std::vector<std::chrono::milliseconds> spacing;
  for (int i = 0; i < 8; ++i) {
    auto spawned = now;
    now += 100ms;  // dies young
    auto t = m.handle(E::kExited, now, signaled(SIGSEGV));
    ASSERT_EQ(t.state, S::kBackoff);
    now += t.backoff;
    ASSERT_EQ(m.handle(E::kBackoffElapsed, now).actions, std::vector<A>{A::kSpawn});
    spacing.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(now - spawned));
  }
  std::vector<std::chrono::milliseconds> want = {1s, 2s, 4s, 8s, 16s, 30s, 30s, 30s};
  EXPECT_EQ(spacing, want);
  EXPECT_EQ(m.lastExit(), "signal SEGV (crash)");
  EXPECT_EQ(m.restarts(), 8u);
}

TEST(WorkerStateMachine, StableUptimeResetsBackoff) {
  WorkerStateMachine m;
  auto now = t0;
  m.handle(E::kStart, now);
  for (int i = 0; i < 3; ++i) {
    auto t = m.handle(E::kExited, now += 100ms, exited(1));
    m.handle(E::kBackoffElapsed, now += t.backoff);
  }
  m.handle(E::kReady, now);
  EXPECT_EQ(m.consecutiveFailures(), 3u);
  // Lived an hour: replaced at once, and the failure count starts again.
  auto t = m.handle(E::kExited, now += 1h, exited(1));
  EXPECT_EQ(t.state, S::kStarting);
  EXPECT_EQ(t.actions, std::vector<A>{A::kSpawn});
  EXPECT_EQ(m.consecutiveFailures(), 1u);
  // Dying young right after that waits out the 1 s spacing.
  t = m.handle(E::kExited, now += 200ms, exited(1));
  EXPECT_EQ(t.state, S::kBackoff);
  EXPECT_EQ(t.backoff, 1800ms);
}

TEST(WorkerStateMachine, SpawnsAreNeverCloserThanOneSecond) {
  WorkerStateMachine m;
  auto now = t0;
  m.handle(E::kStart, now);
  for (int i = 0; i < 20; ++i) {
    auto spawned = m.spawnedAt();
    auto t = m.handle(E::kExited, now += 10ms, exited(1));
    if (t.state == S::kBackoff) m.handle(E::kBackoffElapsed, now += t.backoff);
    EXPECT_GE(m.spawnedAt() - spawned, 1s);
  }
}

TEST(WorkerStateMachine, WatchdogKillIsReportedAsHang) {
  WorkerStateMachine m = machineIn(S::kReady);
  EXPECT_EQ(m.handle(E::kUnresponsive, t0 + 100ms).actions, std::vector<A>{A::kKill});
  auto t = m.handle(E::kExited, t0 + 200ms, signaled(SIGKILL));
  EXPECT_EQ(t.state, S::kBackoff);
  EXPECT_EQ(m.lastExit(), "hang (watchdog)");
  // The next generation is not a hang until the watchdog says so again.
  m.handle(E::kBackoffElapsed, t0 + 10s);
  m.handle(E::kExited, t0 + 11s, signaled(SIGKILL));
  EXPECT_EQ(m.lastExit(), "signal KILL");
}

TEST(WorkerStateMachine, OperatorRestartRespawnsAfterExitWithoutBackoff) {
  WorkerStateMachine m = machineIn(S::kReady);
  EXPECT_EQ(m.handle(E::kRestart, t0 + 1s).actions, std::vector<A>{A::kTerminate});
  auto t = m.handle(E::kExited, t0 + 2s, exited(0));
  EXPECT_EQ(t.state, S::kStarting);
  EXPECT_EQ(t.actions, std::vector<A>{A::kSpawn});
  EXPECT_EQ(m.generation(), 2u);
}

TEST(WorkerStateMachine, ShutdownDuringOperatorRestartStops) {
  WorkerStateMachine m = machineIn(S::kReady);
  m.handle(E::kRestart, t0 + 1s);
  m.handle(E::kStop, t0 + 1s);
  EXPECT_EQ(m.handle(E::kExited, t0 + 2s, exited(0)).state, S::kStopped);
}

TEST(ExitInfo, ClassifiesSignalsAndCodes) {
  EXPECT_TRUE(signaled(SIGSEGV).crash);
  EXPECT_TRUE(signaled(SIGABRT).crash);
  EXPECT_FALSE(signaled(SIGKILL).crash);
  EXPECT_EQ(signaled(SIGBUS).describe(), "signal BUS (crash)");
  EXPECT_EQ(exited(75).describe(), "exit 75");
  EXPECT_EQ(exited(0).describe(), "exit 0");
}

}  // namespace
}  // namespace aa
