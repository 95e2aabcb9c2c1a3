// Unix-domain socket helpers (unix_socket.h).
#include "ipc/runtime/unix_socket.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <kj/debug.h>

namespace aa::unix_socket {
namespace {

sockaddr_un makeAddr(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  KJ_REQUIRE(path.size() < sizeof(addr.sun_path), "Unix socket path too long (max 107 bytes)",
             path);
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

kj::AutoCloseFd listenPrivate(const std::string& path, int backlog) {
  sockaddr_un addr = makeAddr(path);
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    KJ_REQUIRE(S_ISSOCK(st.st_mode), "refusing to replace a non-socket file", path);
    bool live = false;
    try {
      connectTo(path);
      live = true;
    } catch (const kj::Exception&) {
    }
    KJ_REQUIRE(!live, "another process is already serving this socket path", path);
    unlink(path.c_str());
  }
  int raw;
  KJ_SYSCALL(raw = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd fd(raw);
  mode_t old = umask(077);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  umask(old);
  if (rc < 0) KJ_FAIL_SYSCALL("bind", err, path);
  KJ_SYSCALL(chmod(path.c_str(), 0600), path);
  KJ_SYSCALL(listen(fd, backlog), path);
  return fd;
}

kj::AutoCloseFd connectTo(const std::string& path) {
  sockaddr_un addr = makeAddr(path);
  int raw;
  KJ_SYSCALL(raw = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd fd(raw);
  KJ_SYSCALL(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), path);
  return fd;
}

PeerCred peerCred(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  KJ_SYSCALL(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len));
  return PeerCred{cred.pid, cred.uid, cred.gid};
}

}  // namespace aa::unix_socket
