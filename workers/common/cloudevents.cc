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

}  // namespace aa::ce
