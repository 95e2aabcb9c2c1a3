// The heartbeat worker (principal and agent). Today a supervised process skeleton only: it links
// to the supervisor, answers the watchdog and reports ready. Liveness bookkeeping of agents
// (stale/disconnected marking, heartbeat RTT) is a later issue and is NOT implemented yet.
#include "workers/common/role.h"

namespace aa {
namespace {
class HeartbeatRole final : public Role {
 public:
  kj::Promise<void> start() override { return kj::READY_NOW; }
  std::string describe() override { return "liveness tracking not implemented yet"; }
};
}  // namespace
kj::Own<Role> makeHeartbeatRole(WorkerEnv&) { return kj::heap<HeartbeatRole>(); }
}  // namespace aa
