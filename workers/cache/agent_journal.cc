// The agents' delivery state in Redis (agent_journal.h).
#include "workers/cache/agent_journal.h"

#include <charconv>

#include "workers/common/cloudevents.h"
#include "workers/common/gzip.h"

namespace aa::journal {

namespace {

constexpr size_t kMaxValue = 64 * 1024 * 1024;  // what a value may decompress to

void putItem(std::string& out, std::string_view item) {
  uint32_t n = static_cast<uint32_t>(item.size());
  char len[4] = {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                 static_cast<char>(n)};
  out.append(len, 4);
  out.append(item);
}

std::string wrap(std::string payload, bool gzip) {
  if (gzip && payload.size() >= kCompressFrom) return "z" + gzip::compress(payload);
  return "p" + payload;
}

// The items of a value, or nullopt with `why`.
std::optional<std::vector<std::string>> items(std::string_view value, std::string& why) {
  if (value.empty()) {
    why = "empty value";
    return std::nullopt;
  }
  std::string inflated;
  std::string_view payload = value.substr(1);
  if (value[0] == 'z') {
    auto out = gzip::decompress(payload, kMaxValue, why);
    if (!out) return std::nullopt;  // `why` says what is wrong with the gzip
    inflated = std::move(*out);
    payload = inflated;
  } else if (value[0] != 'p') {
    why = "unknown format byte";
    return std::nullopt;
  }
  std::vector<std::string> out;
  while (!payload.empty()) {
    if (payload.size() < 4) {
      why = "truncated item length";
      return std::nullopt;
    }
    auto b = [&](int i) { return static_cast<uint32_t>(static_cast<unsigned char>(payload[i])); };
    uint32_t n = b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
    if (payload.size() - 4 < n) {
      why = "item longer than the value";
      return std::nullopt;
    }
    out.emplace_back(payload.substr(4, n));
    payload.remove_prefix(4 + n);
  }
  return out;
}

template <class T>
bool number(const std::string& s, T& out) {
  T v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return false;
  out = v;
  return true;
}

}  // namespace

std::string key(const std::string& agent) { return kKeyPrefix + agent; }
std::string outField(const std::string& resourceId) { return "out|" + resourceId; }
std::string inField(const std::string& resourceId) { return "in|" + resourceId; }

std::string encodeEvents(const std::vector<const delivery::Event*>& events, bool gzip) {
  std::string payload, bytes;
  for (const auto* e : events) {
    bytes.clear();
    e->SerializeToString(&bytes);
    putItem(payload, bytes);
  }
  return wrap(std::move(payload), gzip);
}

std::string encodeIds(const std::deque<std::string>& ids, bool gzip) {
  std::string payload;
  for (const auto& id : ids) putItem(payload, id);
  return wrap(std::move(payload), gzip);
}

Agent parse(const std::string& agentName,
            const std::vector<std::pair<std::string, std::string>>& fields,
            std::vector<std::string>& problems) {
  Agent a;
  a.name = agentName;
  for (const auto& [field, value] : fields) {
    std::string why;
    if (field == "source") {
      if (!number(value, a.source)) problems.push_back("field source: not a number");
    } else if (field == "streams") {
      if (!number(value, a.streams)) problems.push_back("field streams: not a number");
    } else if (field.rfind("out|", 0) == 0 && field.size() > 4) {
      auto list = items(value, why);
      std::vector<delivery::Event> events;
      for (size_t i = 0; list && i < list->size(); ++i) {
        delivery::Event e;
        if (!e.ParseFromString((*list)[i]) || ce::stringAttr(e, "resourceid") != field.substr(4)) {
          why = "item " + std::to_string(i) + " is not an event of this resource";
          list.reset();
          break;
        }
        events.push_back(std::move(e));
      }
      if (!list) {
        problems.push_back("field " + field + ": " + why);
        continue;
      }
      a.outbox.emplace_back(field.substr(4), std::move(events));
    } else if (field.rfind("in|", 0) == 0 && field.size() > 3) {
      auto list = items(value, why);
      if (!list) {
        problems.push_back("field " + field + ": " + why);
        continue;
      }
      a.ledger.emplace_back(field.substr(3), std::move(*list));
    } else {
      problems.push_back("field " + field + ": unknown field");
    }
  }
  return a;
}

}  // namespace aa::journal
