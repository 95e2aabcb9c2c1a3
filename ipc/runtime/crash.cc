// Crash handler (crash.h). Async-signal-safe: only write(2), backtrace_symbols_fd and raise.
#include "ipc/runtime/crash.h"

#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <initializer_list>

namespace aa::crash {
namespace {

void onFatalSignal(int sig) {
  const char* name = sigabbrev_np(sig);
  const char head[] = "*** fatal signal SIG";
  (void)!write(STDERR_FILENO, head, sizeof(head) - 1);
  if (name != nullptr) (void)!write(STDERR_FILENO, name, strlen(name));
  (void)!write(STDERR_FILENO, ", backtrace:\n", 13);
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  // SA_RESETHAND restored the default action: re-raise so the exit status carries the signal.
  raise(sig);
}

}  // namespace

void installHandlers() {
  // Pre-load libgcc's unwinder so backtrace() does not allocate inside the handler.
  void* warm[1];
  backtrace(warm, 1);
  struct sigaction sa {};
  sa.sa_handler = onFatalSignal;
  sa.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE}) sigaction(sig, &sa, nullptr);
}

}  // namespace aa::crash
