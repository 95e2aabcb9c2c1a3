// CloudEvent encoding helpers (cloudevents.h). Used in the listener and transport workers.
#include "workers/common/cloudevents.h"

namespace aa::ce {

using io::cloudevents::v1::CloudEvent;

Kind classify(std::string_view type) {
  // Resource-proxy and container-log requests carry the bare HTTP method as their type.
  static constexpr std::string_view kMethods[] = {"GET",    "HEAD",    "POST",    "PUT",  "PATCH",
                                                  "DELETE", "OPTIONS", "CONNECT", "TRACE"};
  if (type.rfind(kTypePrefix, 0) != 0) {
    for (auto m : kMethods) {
      if (type == m) return Kind::kUnsupported;
    }
    return Kind::kUnknown;
  }
  std::string_view suffix = type.substr(kTypePrefix.size());
  if (suffix == "processed") return Kind::kAck;
  if (suffix == "ping") return Kind::kHeartbeat;
  static constexpr std::string_view kObjects[] = {"create", "spec-update", "status-update",
                                                  "delete"};
  for (auto t : kObjects) {
    if (suffix == t) return Kind::kObject;
  }
  static constexpr std::string_view kOthers[] = {"set-operation",
                                                 "terminate-operation",
                                                 "response",
                                                 "redis-request",
                                                 "redis-response",
                                                 "terminal-request",
                                                 "request-synced-resource-list",
                                                 "response-synced-resource",
                                                 "request-update",
                                                 "request-resource-resync",
                                                 "cluster-cache-info-update",
                                                 "error",
                                                 "pong",
                                                 "get"};
  for (auto t : kOthers) {
    if (suffix == t) return Kind::kUnsupported;
  }
  return Kind::kUnknown;
}

bool isContextAttribute(std::string_view name) {
  return name == "datacontenttype" || name == "dataschema" || name == "subject" || name == "time";
}

std::string stringAttr(const CloudEvent& e, const std::string& name) {
  auto it = e.attributes().find(name);
  if (it == e.attributes().end() || !it->second.has_ce_string()) return "";
  return it->second.ce_string();
}

std::string target(const CloudEvent& e) {
  auto it = e.attributes().find("dataschema");
  if (it == e.attributes().end() || !it->second.has_ce_uri()) return "";
  return it->second.ce_uri();
}

namespace {
CloudEvent base(std::string_view type, std::string_view targetName, std::string_view source) {
  CloudEvent e;
  e.set_spec_version(std::string(kSpecVersion));
  e.set_type(std::string(type));
  e.set_source(std::string(source));
  (*e.mutable_attributes())["dataschema"].set_ce_uri(std::string(targetName));
  e.set_binary_data("");
  return e;
}
}  // namespace

CloudEvent makeAck(const CloudEvent& acked, std::string_view source) {
  CloudEvent ack = base(kProcessed, kTargetEventProcessed, source);
  for (const auto& [name, value] : acked.attributes()) {
    if (!isContextAttribute(name)) (*ack.mutable_attributes())[name] = value;
  }
  return ack;
}

CloudEvent makeResourceEvent(std::string_view suffix, std::string_view targetName,
                             std::string_view subject, const std::string& resourceId,
                             const std::string& eventId, std::string json,
                             std::string_view source) {
  CloudEvent e = base(std::string(kTypePrefix) + std::string(suffix), targetName, source);
  auto& attrs = *e.mutable_attributes();
  attrs["datacontenttype"].set_ce_string("application/json");
  attrs["subject"].set_ce_string(std::string(subject));
  attrs["resourceid"].set_ce_string(resourceId);
  attrs["eventid"].set_ce_string(eventId);
  e.set_binary_data(std::move(json));
  return e;
}

CloudEvent makeHeartbeat(std::string_view source, const std::string& uuid) {
  CloudEvent e = base(kPing, kTargetHeartbeat, source);
  (*e.mutable_attributes())["resourceid"].set_ce_string(uuid);
  (*e.mutable_attributes())["eventid"].set_ce_string(uuid);
  return e;
}

std::optional<int64_t> parseRfc3339Nanos(std::string_view t) {
  // YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)
  auto digits = [&](size_t at, size_t n) -> std::optional<int> {
    if (at + n > t.size()) return std::nullopt;
    int v = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (t[i] < '0' || t[i] > '9') return std::nullopt;
      v = v * 10 + (t[i] - '0');
    }
    return v;
  };
  auto year = digits(0, 4), month = digits(5, 2), day = digits(8, 2), hour = digits(11, 2),
       minute = digits(14, 2), second = digits(17, 2);
  if (!year || !month || !day || !hour || !minute || !second || t[4] != '-' || t[7] != '-' ||
      (t[10] != 'T' && t[10] != 't') || t[13] != ':' || t[16] != ':' || *month < 1 || *month > 12 ||
      *day < 1 || *day > 31 || *hour > 23 || *minute > 59 || *second > 60) {
    return std::nullopt;
  }
  size_t i = 19;
  int64_t nanos = 0;
  if (i < t.size() && t[i] == '.') {
    size_t start = ++i;
    int64_t scale = 100000000;
    while (i < t.size() && t[i] >= '0' && t[i] <= '9') {
      nanos += (t[i] - '0') * scale;
      scale /= 10;
      ++i;
    }
    if (i == start || i - start > 9) return std::nullopt;
  }
  int64_t offset = 0;
  if (i < t.size() && (t[i] == 'Z' || t[i] == 'z') && i + 1 == t.size()) {
  } else if (i + 6 == t.size() && (t[i] == '+' || t[i] == '-') && t[i + 3] == ':') {
    auto oh = digits(i + 1, 2), om = digits(i + 4, 2);
    if (!oh || !om || *oh > 23 || *om > 59) return std::nullopt;
    offset = (t[i] == '+' ? 1 : -1) * (*oh * 3600 + *om * 60);
  } else {
    return std::nullopt;
  }
  // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
  int y = *year - (*month <= 2 ? 1 : 0);
  int era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = static_cast<unsigned>(y - era * 400);
  unsigned mp = static_cast<unsigned>((*month + 9) % 12);
  unsigned doy = (153 * mp + 2) / 5 + static_cast<unsigned>(*day) - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  int64_t days = static_cast<int64_t>(era) * 146097 + static_cast<int64_t>(doe) - 719468;
  int64_t secs = days * 86400 + *hour * 3600 + *minute * 60 + *second - offset;
  return secs * 1000000000 + nanos;
}

std::string formatRfc3339Nanos(int64_t nanos) {
  int64_t secs = nanos / 1000000000, frac = nanos % 1000000000;
  if (frac < 0) {
    frac += 1000000000;
    secs -= 1;
  }
  time_t t = static_cast<time_t>(secs);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[64];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string out(buf, n);
  if (frac != 0) {
    char f[16];
    snprintf(f, sizeof f, ".%09lld", static_cast<long long>(frac));
    std::string fs(f);
    fs.erase(fs.find_last_not_of('0') + 1);
    out += fs;
  }
  out += 'Z';
  return out;
}

void stampSentAt(io::cloudevents::v1::CloudEvent& e, int64_t nanos) {
  (*e.mutable_attributes())["sentat"].set_ce_string(formatRfc3339Nanos(nanos));
}

}  // namespace aa::ce
