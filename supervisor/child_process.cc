// Worker spawning (child_process.h). Runs in the supervisor.
#include "supervisor/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <kj/debug.h>

#include "ipc/runtime/fd_contract.h"

namespace aa {
namespace {

// Moves `fd` to `target` without CLOEXEC. Only async-signal-safe calls: runs after fork.
bool placeFd(int fd, int target) {
  if (fd == target) return fcntl(fd, F_SETFD, 0) == 0;
  return dup2(fd, target) == target;
}

}  // namespace

pid_t spawnWorker(const SpawnRequest& request) {
  // Build argv before fork: the child may not allocate.
  std::vector<char*> argv;
  for (const auto& a : request.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t parent = getpid();
  fflush(nullptr);  // buffered output must not be duplicated in the child

  pid_t pid = fork();
  KJ_SYSCALL(pid, "fork");
  if (pid != 0) return pid;

  // --- child ---
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);  // the supervisor died before PDEATHSIG was armed
  // fds 3 and 4 may currently hold other descriptors; move sources out of the way first.
  int link = fcntl(request.supervisorLinkFd, F_DUPFD_CLOEXEC, 10);
  int service =
      request.serviceSocketFd >= 0 ? fcntl(request.serviceSocketFd, F_DUPFD_CLOEXEC, 10) : -1;
  if (link < 0 || !placeFd(link, fds::kSupervisorLink)) _exit(1);
  if (service >= 0 && !placeFd(service, fds::kServiceSocket)) _exit(1);
  execv(request.executable.c_str(), argv.data());
  _exit(127);
}

}  // namespace aa
