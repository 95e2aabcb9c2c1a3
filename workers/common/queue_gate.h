// Every grpc operation on a completion queue starts through a gate: none may start once the queue
// is shut down (grpc aborts), while the queue's thread still handles its last tags (a failed read
// finishes its call, and so on) during the shutdown. After close(), an operation is not started
// and its call is simply left (the queue's owner is going away).
#pragma once

#include <mutex>
#include <shared_mutex>

namespace aa {

class QueueGate {
 public:
  template <class F>
  bool run(F&& f) {
    std::shared_lock<std::shared_mutex> lock(mu_);
    if (shut_) return false;
    f();
    return true;
  }
  void close() {
    std::unique_lock<std::shared_mutex> lock(mu_);
    shut_ = true;
  }

 private:
  std::shared_mutex mu_;
  bool shut_ = false;
};

}  // namespace aa
