// Decoding of child wait statuses into the exit-code contract (exit_codes.h). Linked by every
// process; used by the supervisor.
#include "ipc/runtime/exit_codes.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>

namespace aa {

ExitInfo ExitInfo::fromWaitStatus(int status) {
  ExitInfo info;
  if (WIFSIGNALED(status)) {
    info.kind = Kind::kSignaled;
    info.code = WTERMSIG(status);
    switch (info.code) {
      case SIGSEGV:
      case SIGABRT:
      case SIGBUS:
      case SIGILL:
      case SIGFPE:
      case SIGSYS:
      case SIGTRAP:
        info.crash = true;
        break;
      default:
        break;
    }
  } else {
    info.kind = Kind::kExited;
    info.code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  }
  return info;
}

std::string ExitInfo::describe() const {
  if (hang) return "hang (watchdog)";
  if (kind == Kind::kSignaled) {
    return "signal " + signalName(code) + (crash ? " (crash)" : "");
  }
  std::string s = "exit " + std::to_string(code);
  if (code == exit_code::kConfig) s += " (configuration error)";
  return s;
}

std::string signalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  if (abbrev != nullptr) return abbrev;
  return "SIG" + std::to_string(sig);
}

}  // namespace aa
