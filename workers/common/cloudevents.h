// CloudEvents as upstream argocd-agent puts them on the wire (wire spec §1.4, §1.5): type names,
// targets (the `dataschema` attribute, always ce_uri), extensions (always ce_string), JSON data in
// binary_data, spec_version "1.0". Used by the listener (principal) and transport (agent).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "cloudevent.pb.h"

namespace aa::ce {

inline constexpr std::string_view kTypePrefix = "io.argoproj.argocd-agent.event.";
inline constexpr std::string_view kProcessed = "io.argoproj.argocd-agent.event.processed";
inline constexpr std::string_view kPing = "io.argoproj.argocd-agent.event.ping";
inline constexpr std::string_view kTargetEventProcessed = "eventProcessed";
inline constexpr std::string_view kTargetHeartbeat = "heartbeat";
inline constexpr std::string_view kSpecVersion = "1.0";
// Our extension on heartbeats: the agent's previous heartbeat round trip in microseconds
// (ce_string). Upstream principals copy it into the ACK and otherwise ignore it.
inline constexpr std::string_view kHeartbeatRttExtension = "heartbeatrttus";

// What a received event's `type` is to this implementation (wire spec §1.5, upstream's catalogue).
enum class Kind {
  kAck,          // processed: acknowledges a tracked event
  kHeartbeat,    // ping: ACKed, nothing else
  kObject,       // create, spec-update, status-update, delete: a Kubernetes object (JSON), applied
  kUnsupported,  // in upstream's catalogue, but this project keeps no state it could act on
                 // (resync requests, cluster-cache info, resource/log/terminal/redis requests and
                 // responses, operations, errors): ACKed and logged once per stream at debug
  kUnknown,      // not in upstream's catalogue: rejected with an error line (and still ACKed)
};
Kind classify(std::string_view type);

// Attributes that are CloudEvents context attributes, not extensions (never copied into ACKs).
bool isContextAttribute(std::string_view name);

// The string value of an extension/ce_string attribute, or "" when absent or another kind.
std::string stringAttr(const io::cloudevents::v1::CloudEvent& e, const std::string& name);
// The dataschema (target) when it is a ce_uri, "" otherwise.
std::string target(const io::cloudevents::v1::CloudEvent& e);

// Go's time.RFC3339Nano as upstream stamps `sentat` ("2026-11-26T10:00:00.000000001Z", or an
// offset instead of Z), as nanoseconds since the Unix epoch; nullopt if it is not that form.
std::optional<int64_t> parseRfc3339Nanos(std::string_view text);
// The other way, in UTC, as Go formats it: trailing zeros of the fraction dropped, and the
// fraction with them when it is zero.
std::string formatRfc3339Nanos(int64_t nanosSinceEpoch);
// Stamps `sentat` (the time of this send) on an ACK-tracked event, as upstream's EventWriter
// does on every send of one; the receiver's agent_event_propagation_latency_seconds reads it.
void stampSentAt(io::cloudevents::v1::CloudEvent& e, int64_t nanosSinceEpoch);

// The `processed` ACK for `acked`: all of its extensions copied (resourceid+eventid identify it).
io::cloudevents::v1::CloudEvent makeAck(const io::cloudevents::v1::CloudEvent& acked,
                                        std::string_view source);
// A Kubernetes-object event (create, spec-update, status-update, delete, ...): `suffix` after the
// type prefix, `targetName` as dataschema (ce_uri), subject "<ns>/<name>", resourceid/eventid as
// ce_string extensions, datacontenttype application/json, the JSON in binary_data.
io::cloudevents::v1::CloudEvent makeResourceEvent(std::string_view suffix,
                                                  std::string_view targetName,
                                                  std::string_view subject,
                                                  const std::string& resourceId,
                                                  const std::string& eventId, std::string json,
                                                  std::string_view source);
// The agent's heartbeat: type ping, target heartbeat, eventid = resourceid = fresh UUIDv4.
io::cloudevents::v1::CloudEvent makeHeartbeat(std::string_view source, const std::string& uuid);

}  // namespace aa::ce
