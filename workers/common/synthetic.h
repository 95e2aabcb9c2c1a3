// The in-memory resource sink and the synthetic event source: the test and benchmark plumbing
// behind the Sink interface (stream_pump.h) until a later issue plugs in real stores.
//  * MemorySink applies events to an in-memory map and, with --event-log, appends one line per
//    applied event ("<resourceid> <eventid> <type>") so a test can check exactly-once, in order.
//  * --synthetic-events=COUNT:RESOURCES:BYTES[:AGENT-PREFIX] (principal) queues COUNT `create`
//    events spread round-robin over RESOURCES resources, each carrying BYTES of Argo CD
//    Application-like JSON, for every agent (or every agent whose name starts with AGENT-PREFIX).
#pragma once

#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "ipc/config/config.h"
#include "workers/common/stream_pump.h"

namespace aa::delivery {

class MemorySink final : public Sink {
 public:
  explicit MemorySink(const std::string& logPath);  // "" = no log
  ~MemorySink() override;
  Result apply(const Event& event, std::string& problem) override;
  size_t resources();
  uint64_t applied();

 private:
  std::mutex mu_;
  std::map<std::string, std::string> state_;  // resourceid -> last payload
  uint64_t applied_ = 0;
  FILE* log_ = nullptr;
};

using aa::parseSyntheticSpec;
using aa::SyntheticSpec;

// A JSON Application of about `bytes` bytes for resource `name`, generation `seq`.
std::string applicationJson(const std::string& name, uint64_t seq, size_t bytes);
// The create event for the `seq`-th synthetic event (resource seq % resources).
Event syntheticEvent(const SyntheticSpec& spec, uint64_t seq);

}  // namespace aa::delivery
