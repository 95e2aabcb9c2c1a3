// The principal's per-agent delivery state as the cache worker keeps it in Redis (one hash per
// agent), so that a restarted principal or cache worker resumes where it stopped. Pure: key and
// field names, value encoding and the parse of a stored hash (agent_journal_test.cc).
//
//   key   argocd-agent|state|<agent>
//   field source          the synthetic source's next position (decimal)
//   field streams         streams the agent opened (decimal)
//   field out|<resource>  the events not yet acknowledged for that resource, in order (in flight
//                         first): what the EventWriter tracks
//   field in|<resource>   the event IDs recently applied from the agent (the receive ledger)
//
// Values of out|/in| fields: one format byte, then the payload: 'p' (plain) or 'z' (gzip of the
// payload, used with --redis-compression-type gzip once the payload reaches 512 bytes); the
// payload is a sequence of items, each a 4-byte big-endian length and that many bytes (a
// serialised CloudEvent, or an event ID).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "workers/common/event_writer.h"

namespace aa::journal {

inline constexpr const char* kKeyPrefix = "argocd-agent|state|";
inline constexpr size_t kCompressFrom = 512;

std::string key(const std::string& agent);
std::string outField(const std::string& resourceId);
std::string inField(const std::string& resourceId);

std::string encodeEvents(const std::vector<const delivery::Event*>& events, bool gzip);
std::string encodeIds(const std::deque<std::string>& ids, bool gzip);

// What a stored hash holds. Fields that do not parse are left out and named in `problems`
// ("field <name>: <why>"), so one corrupted value costs only itself.
struct Agent {
  std::string name;
  uint64_t source = 0;
  uint32_t streams = 0;
  std::vector<std::pair<std::string, std::vector<delivery::Event>>> outbox;  // resource, events
  std::vector<std::pair<std::string, std::vector<std::string>>> ledger;      // resource, IDs
};
Agent parse(const std::string& agentName,
            const std::vector<std::pair<std::string, std::string>>& fields,
            std::vector<std::string>& problems);

}  // namespace aa::journal
