// In-memory sink and synthetic source (synthetic.h). Listener and transport workers.
#include "workers/common/synthetic.h"

#include <charconv>

#include "ipc/runtime/log.h"
#include "workers/common/cloudevents.h"

namespace aa::delivery {

MemorySink::MemorySink(const std::string& logPath) {
  if (!logPath.empty()) {
    log_ = fopen(logPath.c_str(), "ae");
    if (log_ == nullptr) spdlog::error("cannot open event log {}", logPath);
  }
}

MemorySink::~MemorySink() {
  if (log_ != nullptr) fclose(log_);
}

Sink::Result MemorySink::apply(const Event& e, std::string&) {
  std::string resource = ce::stringAttr(e, "resourceid");
  std::lock_guard<std::mutex> lock(mu_);
  if (e.type() == std::string(ce::kTypePrefix) + "delete") {
    state_.erase(resource);
  } else {
    state_[resource] = e.binary_data();
  }
  ++applied_;
  if (log_ != nullptr) {
    fprintf(log_, "%s %s %s\n", resource.c_str(), ce::stringAttr(e, "eventid").c_str(),
            e.type().substr(ce::kTypePrefix.size()).c_str());
    fflush(log_);
  }
  return Result::kApplied;
}

size_t MemorySink::resources() {
  std::lock_guard<std::mutex> lock(mu_);
  return state_.size();
}

uint64_t MemorySink::applied() {
  std::lock_guard<std::mutex> lock(mu_);
  return applied_;
}

std::string applicationJson(const std::string& name, uint64_t seq, size_t bytes) {
  std::string head =
      R"({"apiVersion":"argoproj.io/v1alpha1","kind":"Application","metadata":{"name":")" + name +
      R"(","namespace":"argocd","resourceVersion":")" + std::to_string(seq) +
      R"("},"spec":{"project":"default","destination":{"server":"https://kubernetes.default.svc","namespace":"guestbook"},"source":{"repoURL":"https://github.com/argoproj/argocd-example-apps","path":"guestbook","targetRevision":"HEAD"}},"status":{"history":")";
  std::string tail = R"("}})";
  std::string out = head;
  static const char kFill[] = "sync-ok;rev-4f2a9c;";
  while (out.size() + tail.size() < bytes) out += kFill[out.size() % (sizeof(kFill) - 1)];
  return out + tail;
}

Event syntheticEvent(const SyntheticSpec& spec, uint64_t seq) {
  uint64_t r = seq % spec.resources;
  std::string name = "app-" + std::to_string(r);
  std::string uid = "00000000-0000-4000-8000-" + std::to_string(100000000000 + r);
  return ce::makeResourceEvent("create", "application", "argocd/" + name, name + "_" + uid,
                               name + "_" + uid + "_" + std::to_string(seq),
                               applicationJson(name, seq, spec.bytes), "");
}

}  // namespace aa::delivery
