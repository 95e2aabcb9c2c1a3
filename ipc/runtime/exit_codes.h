// The exit-code contract between a worker and the supervisor, and the supervisor's own exit status.
// One header, linked by every process; ARCHITECTURE.md repeats the table. Every code here is one
// that some process really produces:
//   worker:     0 after SIGTERM (drained), 1 uncaught error, 78 configuration error; any other
//               exit or a death by signal is restarted with backoff like 1.
//   supervisor: 0 after an orderly stop (SIGTERM/SIGINT, even as PID 1: the stop was asked for
//               and done), 78 for a configuration error found at start-up or a critical worker
//               that failed with 78, 1 when start-up failed otherwise.
#pragma once

#include <string>

namespace aa::exit_code {

inline constexpr int kClean = 0;    // asked to stop and stopped: not restarted unless running
inline constexpr int kError = 1;    // uncaught error: restart with backoff
inline constexpr int kConfig = 78;  // EX_CONFIG: never restarted; the supervisor exits with it

}  // namespace aa::exit_code

namespace aa {

// How a child ended, decoded once from a waitpid() status.
struct ExitInfo {
  enum class Kind { kExited, kSignaled } kind = Kind::kExited;
  int code = 0;        // exit status, or the signal number
  bool crash = false;  // SEGV, ABRT, BUS, ILL, FPE, SYS, TRAP
  bool hang = false;   // killed by the watchdog (set by the supervisor, not by waitpid)

  static ExitInfo fromWaitStatus(int status);
  // "exit 1", "exit 78 (configuration error)", "signal SEGV (crash)", "signal KILL",
  // "hang (watchdog)".
  std::string describe() const;
};

// "SEGV" for SIGSEGV; "SIG<n>" when unknown.
std::string signalName(int sig);

}  // namespace aa
