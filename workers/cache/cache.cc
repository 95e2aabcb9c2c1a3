// The cache worker (principal and agent). Today a supervised process skeleton only: it links to
// the supervisor, answers the watchdog and reports ready. The Redis cache and Redis compression
// (--redis-compression-type) are a later issue and are NOT implemented yet; see README.md.
#include "workers/common/role.h"

namespace aa {
namespace {
class CacheRole final : public Role {
 public:
  kj::Promise<void> start() override { return kj::READY_NOW; }
  std::string describe() override { return "redis cache not implemented yet"; }
};
}  // namespace
kj::Own<Role> makeCacheRole(WorkerEnv&) { return kj::heap<CacheRole>(); }
}  // namespace aa
