// CloudEvent encoding helpers (cloudevents.h). Used in the listener and transport workers.
#include "workers/common/cloudevents.h"

namespace aa::ce {

using io::cloudevents::v1::CloudEvent;

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
