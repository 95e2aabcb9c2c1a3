// Any thread -> a worker's KJ thread: jobs posted from threads without an event loop (grpc's
// serving threads in the listener, the transport's stream thread) run on the KJ thread, in
// order, woken through an eventfd that the KJ event port watches.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <functional>
#include <mutex>
#include <vector>

#include <kj/async-unix.h>
#include <kj/io.h>

namespace aa {

class Mailbox {
 public:
  explicit Mailbox(kj::UnixEventPort& port)
      : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        observer_(port, fd_, kj::UnixEventPort::FdObserver::OBSERVE_READ) {}

  // Any thread. Wakes the KJ thread only when the mailbox was empty.
  void post(std::function<void()> job) {
    bool wasEmpty;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wasEmpty = jobs_.empty();
      jobs_.push_back(std::move(job));
    }
    if (wasEmpty) {
      uint64_t one = 1;
      ssize_t n = ::write(fd_, &one, sizeof one);
      (void)n;  // EAGAIN only when the counter is huge: the KJ thread is awake anyway
    }
  }

  // KJ thread: runs jobs as they arrive, then `after` once per batch.
  kj::Promise<void> run(std::function<void()> after) {
    return observer_.whenBecomesReadable().then([this, after]() {
      uint64_t v;
      ssize_t n = ::read(fd_, &v, sizeof v);  // before taking the jobs: see post()
      (void)n;
      std::vector<std::function<void()>> jobs;
      {
        std::lock_guard<std::mutex> lock(mu_);
        jobs.swap(jobs_);
      }
      for (auto& j : jobs) j();
      after();
      return run(after);
    });
  }

 private:
  kj::AutoCloseFd fd_;  // before observer_: closed after it left the epoll set
  kj::UnixEventPort::FdObserver observer_;
  std::mutex mu_;
  std::vector<std::function<void()>> jobs_;
};

}  // namespace aa
