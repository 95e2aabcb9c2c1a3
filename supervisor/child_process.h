// fork+exec of one worker generation into a fresh address space, with the fd contract of
// ipc/runtime/fd_contract.h. Runs in the supervisor; the child side only resets its signal state,
// arranges its fds and execs.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace aa {

struct SpawnRequest {
  std::string executable;         // absolute path of this binary, resolved once at start
  std::vector<std::string> argv;  // argv[0] included
  int supervisorLinkFd = -1;      // becomes fd 3
  int serviceSocketFd = -1;       // becomes fd 4 when >= 0
};

// Returns the child's pid. Throws kj::Exception if fork fails. The child gets PDEATHSIG=SIGKILL
// (it dies with the supervisor) and an empty signal mask with default dispositions.
pid_t spawnWorker(const SpawnRequest& request);

}  // namespace aa
