// Unix-domain socket helpers shared by the supervisor (control socket, service sockets) and the
// tools. Every descriptor is created O_CLOEXEC and returned as a kj::AutoCloseFd.
#pragma once

#include <sys/types.h>

#include <string>

#include <kj/io.h>

namespace aa::unix_socket {

// Binds and listens on `path` with the socket file created mode 0600 (umask held at 077 around
// bind, so there is no window with a wider mode). An existing socket file at `path` is replaced
// only if nobody answers on it; a live one is an error (two supervisors must not share a path).
// Throws kj::Exception naming the path.
kj::AutoCloseFd listenPrivate(const std::string& path, int backlog = 64);

// Connects (blocking) to `path`. Throws kj::Exception naming the path.
kj::AutoCloseFd connectTo(const std::string& path);

struct PeerCred {
  pid_t pid;
  uid_t uid;
  gid_t gid;
};
// SO_PEERCRED of a connected Unix socket. Throws.
PeerCred peerCred(int fd);

}  // namespace aa::unix_socket
