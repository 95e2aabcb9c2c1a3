// The one place that says which file descriptors a worker inherits from the supervisor.
// Everything else is opened O_CLOEXEC, so nothing else crosses exec.
#pragma once

namespace aa::fds {

// Socketpair end carrying two-party Cap'n Proto RPC with the supervisor (ipc/supervisor.capnp).
inline constexpr int kSupervisorLink = 3;
// A listening Unix socket the supervisor bound once for a service worker (auth: ipc/auth.capnp).
// Every generation of that worker inherits the same socket, so clients never see the path vanish
// and connections made during a restart wait in the backlog instead of failing.
inline constexpr int kServiceSocket = 4;

}  // namespace aa::fds
